"""Exports that serve: the ONNX file in onnxruntime and the StableHLO file through
``jax.export.deserialize`` give FeatureExtractor's features for any batch size."""

import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from dualattn import export
from dualattn.serving.extractor import FeatureExtractor
from tests.helpers import assert_one_error_line, run_command

# Device-dependent: run on GPUs by benchmarks.gpu_check (pytest -m gpu).
pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def resized(data_paths, trained_run):
    """Five query crops as the exports take them (uint8, resized), and their features."""
    _, run = trained_run
    paths = sorted((data_paths[0] / "query").glob("*.jpg"))[:5]
    extract = FeatureExtractor(run)
    return extract.preprocess([Image.open(p) for p in paths]), extract(paths)


def test_stablehlo_file_runs_with_jax_alone_at_any_batch_size(trained_run, resized, tmp_path):
    c, run = trained_run
    images, expected = resized
    out = tmp_path / "model.stablehlo"
    export.export_file(c, run, "stablehlo", out)
    served = jax.export.deserialize(bytearray(out.read_bytes()))
    assert served.platforms == ("cpu", "cuda")
    assert str(served.in_avals[0].shape[0]) == "batch"
    for n in (1, 5):
        np.testing.assert_allclose(np.asarray(served.call(images[:n])), expected[:n],
                                   atol=1e-5)


def test_onnx_file_runs_in_onnxruntime_at_any_batch_size(trained_run, resized, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    c, run = trained_run
    images, expected = resized
    out = tmp_path / "model.onnx"
    export.export_file(c, run, "onnx", out)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (inp,), (outp,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.type, inp.shape[1:]) == ("images", "tensor(uint8)",
                                                   [c.input.height, c.input.width, 3])
    assert isinstance(inp.shape[0], str) and outp.name == "features"
    for n in (1, 5):
        (feats,) = session.run(None, {"images": images[:n]})
        np.testing.assert_allclose(feats, expected[:n], atol=1e-4)


def test_command_writes_the_file_and_refuses_bad_requests_in_one_line(trained_run, tmp_path):
    _, run = trained_run
    out = tmp_path / "m.stablehlo"
    proc = run_command("dualattn.export", "--workdir", str(run), "--format", "stablehlo",
                       "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert out.is_file() and f"wrote {out} (stablehlo" in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.stablehlo"]  # no temporary
    assert_one_error_line(
        run_command("dualattn.export", "--workdir", str(run), "--format", "onnx",
                    "--out", str(tmp_path / "no" / "m.onnx")),
        f"--out {tmp_path / 'no' / 'm.onnx'}: folder {tmp_path / 'no'} does not exist")
    assert_one_error_line(
        run_command("dualattn.export", "--workdir", str(run), "--format", "stablehlo",
                    "--out", str(tmp_path)), f"--out {tmp_path} is a folder; name a file")
    assert_one_error_line(
        run_command("dualattn.export", "--workdir", str(run), "--out", str(out)),
        "--format is required")
    assert_one_error_line(
        run_command("dualattn.export", "--workdir", str(tmp_path / "missing"), "--format",
                    "onnx", "--out", str(out)), "config.json")


# Run ``dualattn.export`` with every module of a distribution outside the core install made
# unimportable, as if only ``pip install -e .`` had run.
PLAIN_INSTALL = """
import importlib.abc, runpy, sys
ABSENT = set(BLOCKED)
class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ABSENT:
            raise ModuleNotFoundError(f"No module named {name!r}")
sys.meta_path.insert(0, NotInstalled())
sys.argv = ["dualattn.export", *ARGS]
runpy.run_module("dualattn.export", run_name="__main__")
"""


def core_distributions() -> set[str]:
    """Every distribution ``pip install dualattn`` brings, extras left out: the closure of
    the package's own requirements whose markers hold here."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen, todo = set(), ["dualattn"]
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for line in requires:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def test_the_stablehlo_export_needs_only_the_core_dependencies(trained_run, tmp_path):
    """What a plain ``pip install -e .`` gives is enough: the command runs with every module
    of the extras (torch, onnx, onnxruntime...) and of whatever else the core requirements do
    not bring made unimportable (jax.export's serializer needs flatbuffers, which jax does not
    declare and only onnxruntime brought before it was declared)."""
    from importlib import metadata

    from packaging.utils import canonicalize_name

    _, run = trained_run
    core = core_distributions() | {"pip", "setuptools"}
    blocked = sorted(module for module, owners in metadata.packages_distributions().items()
                     if not {canonicalize_name(d) for d in owners} & core)
    assert "torch" in blocked and "onnxruntime" in blocked and "jax" not in blocked
    out = tmp_path / "m.stablehlo"
    code = PLAIN_INSTALL.replace("BLOCKED", repr(blocked)).replace(
        "ARGS", repr(["--workdir", str(run), "--format", "stablehlo", "--out", str(out)]))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out.is_file()
