"""Features of a folder of crops, and nearest-neighbour search over them, from a trained run."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_pipeline.datasets import read_columns
from dualattn import embed
from dualattn.evaluation.evaluator import ReIDEvaluator
from dualattn.run.data import load_data
from dualattn.run.model import load_model
from dualattn.serving.extractor import FeatureExtractor
from tests.helpers import assert_one_error_line, run_command

pytestmark = pytest.mark.filterwarnings("ignore:Market-1501 counts")


def test_embed_a_folder_matches_evaluation_features(trained_run, data_paths, tmp_path):
    c, run = trained_run
    folder = data_paths[0] / "query"
    paths = embed.list_images(folder)
    feats = FeatureExtractor(run, checkpoint="best")(paths)
    assert feats.shape == (len(paths), 256) and feats.dtype == np.float32
    # The same images through the evaluation path (the prepared query split), matched by name.
    data = load_data(c)
    reference = ReIDEvaluator(c, data).split_features(load_model(c, run, "best"), "query")
    (names,) = read_columns(data.sources["query"], "path")
    by_name = {Path(str(n.decode() if isinstance(n, bytes) else n)).name: f
               for n, f in zip(names, reference, strict=True)}
    np.testing.assert_allclose(feats, np.stack([by_name[p.name] for p in paths]), atol=1e-5)

    # The command line: an .npz of features and paths, and a top-K search.
    out = tmp_path / "feats.npz"
    base = ["--config", "configs/tiny.py", "--workdir", str(run)]
    proc = run_command("dualattn.embed", *base, "--images", str(folder), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["feats.npz"]  # no temporary left
    saved = np.load(out)
    assert list(saved["paths"]) == [str(p.relative_to(folder)) for p in paths]
    np.testing.assert_allclose(saved["features"], feats, atol=1e-5)
    proc = run_command("dualattn.embed", *base, "--query", str(paths[0]), "--gallery",
                       str(folder), "--top", "3")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()[-3:]
    assert lines[0].split()[0] == "1" and lines[0].endswith(str(paths[0]))  # itself first
    assert float(lines[0].split()[1]) == pytest.approx(0, abs=1e-3)
    # The gallery embedded once: the same neighbours from its features file, either backend.
    for backend in ("exact", "faiss"):
        proc = run_command("dualattn.embed", *base, "--query", str(paths[0]), "--gallery",
                           str(out), "--top", "3", "--search", backend)
        assert proc.returncode == 0, proc.stderr[-2000:]
        found = proc.stdout.strip().splitlines()[-3:]
        assert [line.split()[-1] for line in found] == [
            str(Path(line.split()[-1]).relative_to(folder)) for line in lines]
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    assert_one_error_line(run_command("dualattn.embed", *base, "--query", str(paths[0]),
                                      "--gallery", str(tmp_path / "bad.npz")),
                          "is not a features file written by")


def test_embed_refuses_undecodable_images_naming_them(tmp_path):
    Image.new("RGB", (32, 64)).save(tmp_path / "good.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(embed.EmbedError, match=r"(?s)1 image\(s\) cannot be decoded.*bad\.jpg"):
        embed.list_images(tmp_path)
    (tmp_path / "bad.jpg").unlink()
    Image.fromarray(np.full((64, 32), 40000, np.uint16)).save(tmp_path / "depth.png")
    with pytest.raises(embed.EmbedError, match=r"(?s)1 image\(s\) cannot be decoded.*depth\.png: "
                                               r"unsupported colour mode I;16"):
        embed.list_images(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(embed.EmbedError, match="no .jpg"):
        embed.list_images(tmp_path / "empty")


@pytest.mark.parametrize("args,message", [
    (["--images", "."], "give either --images DIR --out FILE"),
    (["--images", "no_such_folder", "--out", "f.npz"], "is not a folder of images"),
    (["--images", ".", "--out", "."], "--out . is a folder; name a file to write"),
])
def test_embed_refuses_incomplete_or_wrong_inputs(args, message, tmp_path):
    proc = run_command("dualattn.embed", "--config", "configs/tiny.py", "--workdir",
                       str(tmp_path), *args)
    assert_one_error_line(proc, message)
