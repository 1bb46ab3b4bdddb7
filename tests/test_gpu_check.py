"""The one-call GPU check stays working where no GPU is: its dry run (tiny config, a few steps,
on the CPU) runs every section and writes the JSON and Markdown reports."""

import json

import jax
import pytest

from benchmarks import gpu_check
from tests.helpers import assert_one_error_line, run_command


def test_dry_run_runs_every_section_and_writes_the_reports(tmp_path):
    proc = run_command("benchmarks.gpu_check", "--dry-run", "--out", str(tmp_path), timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    sections = {s["name"]: s for s in report["sections"]}
    skipped = {n for n, s in sections.items() if s["status"] == "skipped"}
    assert skipped == {"train: ours float32", "train P32: ours bfloat16",
                       "train P32: twin AMP bf16, channels_last",
                       "numerics: bfloat16"}  # the same code as sections that ran
    assert {s["status"] for n, s in sections.items() if n not in skipped} == {"ok"}, sections
    assert len(sections) == 10 and report["dry_run"] is True
    assert report["environment"]["jax"] == jax.__version__
    train = report["train"]
    assert [r["name"] for r in train][:2] == ["train: ours bfloat16",
                                             "train: twin AMP bf16, channels_last"]
    assert all(r["images_per_s"] > 0 and r["market_epoch_s"] > 0 for r in train)
    assert report["flops_per_image"] > 0  # XLA's count of our step, the MFU numerator
    numerics = sections["numerics: float32, TF32 off"]["result"]
    assert numerics["flagged"] == [] and len(numerics["rows"]) == 11
    assert numerics["rows"][0]["ours_torch"] < 1e-5  # test features, ours against the twin
    assert sections["tests marked gpu"]["result"]["collected"] >= 50
    evaluation = sections["evaluation and re-ranking"]["result"]
    assert evaluation["size"] == "small" and 0 < evaluation["mAP"] <= 1
    markdown = (tmp_path / "gpu_check.md").read_text()
    assert ("| train step | framework | precision | batch | images/s | compiled bound | peak MiB "
            "| compiled peak MiB | MFU" in markdown)
    assert "Evaluation at small size" in markdown
    log = (tmp_path / "gpu_check.log").read_text()
    assert log.count("\n=== ") == 6


def test_without_a_gpu_it_says_to_use_the_dry_run(tmp_path):
    if jax.default_backend() == "gpu":
        pytest.skip("a GPU is here")
    assert_one_error_line(run_command("benchmarks.gpu_check", "--out", str(tmp_path)),
                          "use --dry-run")


def test_the_compiled_prediction_stands_beside_what_is_measured(tmp_path, monkeypatch):
    plan = {"target": "h100", "devices": 1, "dtype": "bfloat16", "batch": 32,
            "train_step": {"peak_bytes": 3 * 2**30}, "images_per_s_bound": 21798.0}
    path = tmp_path / "compiled.json"
    path.write_text(json.dumps({"plans": [plan, {**plan, "devices": 8}]}))
    monkeypatch.setattr(gpu_check, "COMPILED", path)
    measured = {"framework": "JAX 0.10.2", "device": "NVIDIA H100 80GB HBM3",
                "precision": "bf16 compute", "batch": 32, "steps": 10, "seconds": 1.0,
                "peak_bytes": 4 * 2**30, "flops_per_step": 32 * 45e9}
    twin = {**measured, "framework": "PyTorch 2.13.0", "precision": "AMP bf16"}
    rows, _ = gpu_check.train_rows([{"name": "ours", "kind": "train", "result": measured},
                                    {"name": "twin", "kind": "train", "result": twin}])
    assert rows[0]["compiled_peak_mib"] == 3072 and rows[0]["bound_images_per_s"] == 21798.0
    assert rows[1]["compiled_peak_mib"] is None  # only our step was compiled
