"""The one-call GPU check stays working where no GPU is: its dry run (tiny config, a few steps,
on the CPU) runs every section and writes the JSON and Markdown reports."""

import json

import jax
import pytest

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
    assert "| train step | framework | precision | batch | images/s | peak MiB | MFU" in markdown
    assert "Evaluation at small size" in markdown
    log = (tmp_path / "gpu_check.log").read_text()
    assert log.count("\n=== ") == 6


def test_without_a_gpu_it_says_to_use_the_dry_run(tmp_path):
    if jax.default_backend() == "gpu":
        pytest.skip("a GPU is here")
    assert_one_error_line(run_command("benchmarks.gpu_check", "--out", str(tmp_path)),
                          "use --dry-run")
