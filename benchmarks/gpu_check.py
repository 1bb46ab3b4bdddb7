"""One call that proves the CUDA path and records every GPU figure, within a short window.

    python -m benchmarks.gpu_check --out DIR [--wheels DIR] [--budget 470]
    python -m benchmarks.gpu_check --out DIR --dry-run        # the same on the CPU, tiny

Writes ``DIR/gpu_check.json`` (every figure, the software and the GPU) and
``DIR/gpu_check.md`` (tables ready for BENCHMARKS.md), both rewritten after each section so
that a run cut short keeps what it measured, and ``DIR/gpu_check.log`` (each section's
command and output). Sections, most important first; each runs in its own process with a
time limit, and one that no longer fits the ``--budget`` (seconds, compilation included) is
recorded as skipped:

1. train step at the market settings (384x128, P8 x K4, 751 classes): ours in float32 and
   bfloat16, the PyTorch twin in AMP bf16 with channels_last (``benchmarks.bench_train_step``
   workers): images/s, peak device memory, and MFU: FLOPs per image, as XLA's cost analysis
   counts our step (forward, backward, Adam), times images/s, over the GPU's dense bf16 peak;
2. the same at P32 x K4 (ours bf16, twin AMP): scaling with batch;
3. Market-size evaluation (distances on the device, CMC/mAP) and k-reciprocal re-ranking, on
   synthetic 2048-D features shaped like Market's test set;
4. ``dualattn.compare``'s comparison with both frameworks on the GPU, float32 with
   TF32 off and bfloat16, against the float64 reference (CPU), at the market network and
   size, 2 ids x 2 images, 2 steps;
5. the tests marked ``gpu`` (``pytest -m gpu``: the device-dependent ones);
6. the twin with ``torch.compile`` added, last, since its compilation may not fit.

``--dry-run`` runs the sections on whatever JAX and torch find (in CI: the CPU) with the
tiny config, a few steps, the small evaluation size and ``pytest --collect-only``, so the
command stays working where no GPU is; it skips the four that run another section's code
with other values (ours in float32, P32, bfloat16 numerics). ``--wheels DIR`` first installs
the wheels in DIR (``benchmarks.gpu_wheels`` builds them) into a private folder, without
network, for machines that lack grain, tensorflow-datasets or ml_collections.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MARKET_TRAIN_IMAGES = 12936
# What the XLA:GPU compiler predicts for our train step at the market settings on one H100
# (``python -m dualattn.plan``, no device: BENCHMARKS.md, "What the GPU and TPU compilers
# say"), printed beside what the GPU measures. An H200 is the same chip with more memory.
COMPILED = Path(__file__).with_name("compiled_market.json")

# Dense bf16 tensor-core peaks (FLOP/s), by device name; the first match counts.
BF16_PEAK = (("H200", 989.4e12), ("H100 PCIe", 756.0e12), ("H100 NVL", 835.0e12),
             ("H100", 989.4e12), ("A100", 312.0e12), ("L40S", 362.0e12), ("L4", 121.0e12))


@dataclasses.dataclass
class Section:
    name: str
    command: list[str]
    timeout: float  # seconds it may take
    needs: float  # seconds it needs at least; skipped when less is left
    kind: str  # how its output is read: train, eval, compare, tests
    dry: bool = True  # run in the dry run (else its code is another section's, other values)


def train_sections(dry: bool) -> list[Section]:
    base = [sys.executable, "-m", "benchmarks.bench_train_step", "--config",
            "configs/tiny.py" if dry else "configs/market.py",
            "--steps", "2" if dry else "20", "--warmup", "1" if dry else "3"]
    big = ["--set=input.p=32"]
    jax_, torch_ = base + ["--worker", "jax"], base + ["--worker", "torch", "--no-compile"]
    t, n = (120, 20) if dry else (150, 60)
    return [
        Section("train: ours float32", jax_ + ["--dtype", "float32"], t, n, "train",
                dry=False),
        Section("train: ours bfloat16", jax_ + ["--dtype", "bfloat16", "--count-flops"], t, n,
                "train"),
        Section("train: twin AMP bf16, channels_last", torch_, t, n / 2, "train"),
        Section("train P32: ours bfloat16", jax_ + ["--dtype", "bfloat16"] + big, t, n,
                "train", dry=False),
        Section("train P32: twin AMP bf16, channels_last", torch_ + big, t, n / 2, "train",
                dry=False),
    ]


def sections(dry: bool) -> list[Section]:
    py = sys.executable
    dry_flag = ["--dry-run"] if dry else []
    compare = [py, "-m", "benchmarks.gpu_check", "--worker", "compare", *dry_flag]
    # One process: the tests share the one GPU (pytest-xdist's workers would each claim it).
    tests = [py, "-m", "pytest", "-m", "gpu", "-p", "no:cacheprovider", "-n", "0"]
    compiled = [py, "-m", "benchmarks.bench_train_step", "--worker", "torch", "--config",
                "configs/tiny.py" if dry else "configs/market.py",
                "--steps", "2" if dry else "20", "--warmup", "1" if dry else "3"]
    return [
        *train_sections(dry),
        Section("evaluation and re-ranking", [py, "-m", "benchmarks.gpu_check", "--worker",
                                              "eval", *dry_flag], 120, 20 if dry else 40, "eval"),
        Section("numerics: float32, TF32 off", compare + ["--dtype", "float32"], 200,
                30 if dry else 90, "compare"),
        Section("numerics: bfloat16", compare + ["--dtype", "bfloat16"], 200,
                30 if dry else 90, "compare", dry=False),
        Section("tests marked gpu", tests + (["--collect-only"] if dry else []),
                300, 10 if dry else 90, "tests"),
        Section("train: twin AMP bf16, channels_last, torch.compile", compiled,
                60 if dry else 240, 10 if dry else 120, "train"),
    ]


# ---------------------------------------------------------------------------------------------
# Reading each section's output


def parse(kind: str, output: str) -> dict:
    if kind in ("train", "eval", "compare"):
        lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
        if not lines:
            raise ValueError("no RESULT line")
        return json.loads(lines[-1][len("RESULT "):])
    if kind == "tests":
        counts = {k: int(v) for v, k in re.findall(
            r"(\d+) (passed|failed|errors?|skipped|deselected)\b", output)}
        collected = re.search(r"(\d+)(?:/\d+)? tests? collected", output)
        if collected:
            counts["collected"] = int(collected.group(1))
        if not counts:
            raise ValueError("no pytest summary")
        return counts
    raise ValueError(kind)


def ok(kind: str, result: dict) -> bool:
    if kind == "compare":
        return not result["flagged"]
    if kind == "tests":
        return not result.get("failed") and not result.get("errors") and not result.get("error")
    return True


# ---------------------------------------------------------------------------------------------
# The evaluation worker


def eval_worker(dry: bool) -> dict:
    import jax
    import numpy as np

    from benchmarks.bench_rerank import SIZES, labelled_features
    from dualattn.evaluation.metrics import compute_distance_matrix, evaluate_rank
    from dualattn.evaluation.rerank import re_ranking_features

    size = "small" if dry else "market"
    q, g, ids = SIZES[size]
    qf, gf, q_ids, g_ids = labelled_features(q, g, ids, 2048)
    rng = np.random.default_rng(1)
    q_cams, g_cams = rng.integers(0, 6, q), rng.integers(0, 6, g)
    np.asarray(compute_distance_matrix(qf[:8], gf, "euclidean"))  # compiles
    start = time.perf_counter()
    dist = np.asarray(compute_distance_matrix(qf, gf, "euclidean"))
    distance_s = time.perf_counter() - start
    start = time.perf_counter()
    scores = evaluate_rank(dist, q_ids, g_ids, q_cams, g_cams)
    evaluate_s = time.perf_counter() - start
    start = time.perf_counter()
    re_ranking_features(qf, gf)
    rerank_s = time.perf_counter() - start
    return {"size": size, "queries": q, "gallery": g, "device": jax.devices()[0].device_kind,
            "distance_s": distance_s, "evaluate_s": evaluate_s, "rerank_s": rerank_s,
            "mAP": scores.mAP}


def compare_worker(dry: bool, dtype: str) -> dict:
    """``dualattn.compare``'s comparison at 2 ids x 2 images, 2 steps, both frameworks on the GPU
    (when there is one), against the float64 reference on the CPU. The dry run takes one step
    without the reference (``tests/test_interop.py`` runs it on the CPU)."""
    import jax
    import torch

    from configs import market, tiny
    from dualattn.interop.numerics import build_pair, compare_networks, pk_batch, set_true_f32

    set_true_f32()
    config = (tiny if dry else market).get_config()
    config.model.dtype = dtype
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, twin, how = build_pair(config, 751, device=device)
    images, labels = pk_batch(2, 2, config.input.height, config.input.width, config.seed)
    report = compare_networks(model, twin, config, images, labels, steps=1 if dry else 2,
                              reference=not dry)
    print(f"weights: {how}; JAX on {jax.devices()[0].platform}, torch on {device}, {dtype}")
    print(report.format())
    return {"precision": dtype, "jax_device": jax.devices()[0].device_kind,
            "torch_device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
            "rows": [{"name": r.name, "ours_f64": r.ours_ref, "torch_f64": r.torch_ref,
                      "ours_torch": r.ours_torch, "verdict": r.verdict(report.roundoff)}
                     for r in report.rows],
            "flagged": [r.name for r in report.flagged()],
            "reference_agreement": report.reference_agreement}


# ---------------------------------------------------------------------------------------------
# Set-up, running, writing


def install_wheels(folder: Path) -> str:
    """Install every wheel in ``folder`` into a private folder (no network, no dependency
    resolution: the folder holds what is missing); returns that folder for PYTHONPATH."""
    wheels = sorted(folder.glob("*.whl"))
    if not wheels:
        sys.exit(f"error: no .whl files in {folder}; build them with python -m "
                 "benchmarks.gpu_wheels --dest DIR")
    target = Path(tempfile.gettempdir()) / "dualattn-gpu-check-site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                    "--no-compile", "--no-cache-dir", "--upgrade", "--target", str(target),
                    *map(str, wheels)], check=True)
    return str(target)


def environment() -> dict:
    import jax

    env = {"python": platform.python_version(), "jax": jax.__version__,
           "backend": jax.default_backend(),
           "devices": [d.device_kind for d in jax.devices()], "host": platform.node(),
           "cpu_count": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}
    try:
        import torch
        env["torch"] = torch.__version__
        env["cuda"] = torch.version.cuda
    except ImportError:
        env["torch"] = None
    try:
        env["driver"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        env["driver"] = None
    return env


def bf16_peak(device: str) -> float | None:
    return next((peak for name, peak in BF16_PEAK if name in device), None)


def compiled_predictions(path: Path | None = None) -> dict:
    """``(dtype, global batch) -> plan`` of the one-GPU H100 plans in ``path``
    (``COMPILED``)."""
    path = path or COMPILED
    if not path.exists():
        return {}
    plans = json.loads(path.read_text())["plans"]
    return {(p["dtype"], p["batch"]): p for p in plans
            if p["target"] == "h100" and p["devices"] == 1}


def train_rows(results: list[dict]) -> tuple[list[dict], float | None]:
    """Train-step rows with images/s, peak MiB and MFU; FLOPs per image from our bf16 count."""
    counted = [r["result"] for r in results if r["kind"] == "train" and r.get("result", {})
               .get("flops_per_step")]
    per_image = (counted[0]["flops_per_step"] / counted[0]["batch"]) if counted else None
    compiled = compiled_predictions()
    rows = []
    for r in results:
        if r["kind"] != "train" or "result" not in r:
            continue
        x = r["result"]
        ips = x["batch"] * x["steps"] / x["seconds"]
        peak = bf16_peak(x["device"])
        dtype = "bfloat16" if x["precision"] == "bf16 compute" else "float32"
        plan = compiled.get((dtype, x["batch"])) if x["framework"].startswith("JAX") else None
        rows.append({"name": r["name"], "framework": x["framework"], "device": x["device"],
                     "precision": x["precision"], "batch": x["batch"], "images_per_s": ips,
                     "peak_mib": x["peak_bytes"] / 2**20 if x["peak_bytes"] else None,
                     "compiled_peak_mib": plan and plan["train_step"]["peak_bytes"] / 2**20,
                     "bound_images_per_s": plan and plan["images_per_s_bound"],
                     "mfu": per_image * ips / peak if (per_image and peak) else None,
                     "market_epoch_s": MARKET_TRAIN_IMAGES / ips})
    return rows, per_image


def markdown(report: dict) -> str:
    env = report["environment"]
    out = [f"# GPU check, {env['date']}{' (dry run)' if report['dry_run'] else ''}", "",
           f"{', '.join(env['devices'])}; driver {env.get('driver') or '-'}; Python "
           f"{env['python']}, JAX {env['jax']}, torch {env.get('torch')} (CUDA "
           f"{env.get('cuda')}); {env['cpu_count']} CPU cores. Command: `python -m "
           f"benchmarks.gpu_check --out DIR{' --dry-run' if report['dry_run'] else ''}`, "
           f"{report['seconds']:.0f} s in all.", ""]
    rows, per_image = report["train"], report["flops_per_image"]
    if rows:
        out += ["| train step | framework | precision | batch | images/s | compiled bound "
                "| peak MiB | compiled peak MiB | MFU | Market epoch |",
                "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]

        def number(value, digits=0):
            return "-" if value is None else f"{value:,.{digits}f}"

        for r in rows:
            mfu = f"{100 * r['mfu']:.1f} %" if r["mfu"] is not None else "-"
            out.append(f"| {r['name']} | {r['framework']} | {r['precision']} | {r['batch']} | "
                       f"{r['images_per_s']:.0f} | {number(r.get('bound_images_per_s'))} | "
                       f"{number(r['peak_mib'])} | {number(r.get('compiled_peak_mib'))} | "
                       f"{mfu} | {r['market_epoch_s']:.0f} s |")
        out += ["", "MFU: " + (f"{per_image / 1e9:.1f} GFLOP per image (XLA's cost analysis "
                               "of our bf16 step: forward, backward, Adam) x images/s / the "
                               "GPU's dense bf16 peak" if per_image else "no FLOP count")
                + f"; Market epoch: {MARKET_TRAIN_IMAGES} images / images/s, data loading not "
                "included. Compiled: the XLA:GPU compiler's figures for one H100 without a "
                f"device ({COMPILED.name}, `python -m dualattn.plan`): peak memory (not "
                "autotuned, so a lower bound) and images/s at 100 % of the peak FLOP/s (a "
                "bound).", ""]
    for s in report["sections"]:
        if s["kind"] == "eval" and "result" in s:
            x = s["result"]
            out += [f"Evaluation at {x['size']} size ({x['queries']} x {x['gallery']}, "
                    f"2048-D) on {x['device']}: distances {x['distance_s']:.2f} s, CMC/mAP "
                    f"{x['evaluate_s']:.2f} s, k-reciprocal re-ranking {x['rerank_s']:.1f} s.",
                    ""]
    out += ["| section | status | seconds | result |", "| --- | --- | ---: | --- |"]
    for s in report["sections"]:
        result = s.get("result", s.get("error", ""))
        if s["kind"] == "train" and "result" in s:
            result = f"loss {s['result']['loss']:.3f}"
        out.append(f"| {s['name']} | {s['status']} | {s.get('seconds', 0):.0f} | "
                   f"{json.dumps(result) if not isinstance(result, str) else result} |")
    return "\n".join(out) + "\n"


def write(out: Path, report: dict) -> None:
    from dualattn.run.workdir import atomic_write  # standard library only

    report["train"], report["flops_per_image"] = train_rows(report["sections"])
    atomic_write(out / "gpu_check.json", json.dumps(report, indent=2) + "\n")
    atomic_write(out / "gpu_check.md", markdown(report))


def run_section(section: Section, timeout: float, env: dict, log) -> dict:
    record = {"name": section.name, "kind": section.kind, "command": " ".join(section.command)}
    log.write(f"\n=== {section.name}\n$ {record['command']}\n")
    log.flush()
    start = time.perf_counter()
    try:
        proc = subprocess.run(section.command, capture_output=True, text=True,
                              timeout=timeout, env=env)
        output, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        output = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) \
            else (e.stdout or "")
        rc = None
    record["seconds"] = time.perf_counter() - start
    log.write(output[-20000:] + "\n")
    log.flush()
    if rc is None:
        record.update(status="timed out", error=f"over {timeout:.0f} s")
        return record
    try:
        record["result"] = parse(section.kind, output)
    except ValueError as e:
        tail = output.strip().splitlines()[-1:] or [""]
        record.update(status="failed", error=f"{e} (rc {rc}): {tail[0][:300]}")
        return record
    record["status"] = "ok" if rc == 0 and ok(section.kind, record["result"]) else "failed"
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="folder for gpu_check.json, .md and .log")
    parser.add_argument("--wheels", help="folder of wheels to install first (no network)")
    parser.add_argument("--budget", type=float, default=470.0,
                        help="seconds for all sections together")
    parser.add_argument("--dry-run", action="store_true",
                        help="tiny settings on whatever device there is (CI)")
    parser.add_argument("--worker", choices=["eval", "compare"], help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "eval":
        print("RESULT " + json.dumps(eval_worker(args.dry_run)))
        return
    if args.worker == "compare":
        print("RESULT " + json.dumps(compare_worker(args.dry_run, args.dtype)))
        return
    if not args.out:
        parser.error("--out is required")
    started = time.perf_counter()
    # JAX and torch share the GPU in the numerics and the tests: JAX allocates as it goes
    # rather than taking 75 % of the memory at start (peak figures are the allocator's peaks).
    env = dict(os.environ, PYTHONUNBUFFERED="1", XLA_PYTHON_CLIENT_PREALLOCATE="false")
    paths = [str(Path.cwd())]
    if args.wheels:
        paths.insert(0, install_wheels(Path(args.wheels)))
        sys.path[:0] = paths
    env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in [env.get("PYTHONPATH")] if p])
    # Compiled programs are shared between sections (and with a rerun).
    env.setdefault("JAX_COMPILATION_CACHE_DIR",
                   str(Path(tempfile.gettempdir()) / "dualattn-gpu-check-jax-cache"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"dry_run": args.dry_run, "environment": environment(), "sections": [],
              "seconds": 0.0}
    if not args.dry_run and report["environment"]["backend"] != "gpu":
        sys.exit("error: JAX finds no GPU here (backend "
                 f"{report['environment']['backend']}); use --dry-run to try the command")
    with (out / "gpu_check.log").open("w") as log:
        for section in sections(args.dry_run):
            left = args.budget - (time.perf_counter() - started)
            if args.dry_run and not section.dry:
                record = {"name": section.name, "kind": section.kind, "status": "skipped",
                          "error": "dry run: another section runs the same code"}
            elif left < section.needs:
                record = {"name": section.name, "kind": section.kind, "status": "skipped",
                          "error": f"{left:.0f} s of the budget left, needs {section.needs:.0f}"}
            else:
                record = run_section(section, min(section.timeout, left), env, log)
            report["sections"].append(record)
            report["seconds"] = time.perf_counter() - started
            write(out, report)
            print(f"{record['status']:>9}  {record.get('seconds', 0):5.0f} s  {section.name}"
                  + (f"  ({record['error']})" if record.get("error") else ""), flush=True)
    print(markdown(report))
    failed = [s["name"] for s in report["sections"] if s["status"] in ("failed", "timed out")]
    if failed:
        sys.exit(f"error: {len(failed)} section(s) failed: {', '.join(failed)}; see "
                 f"{out / 'gpu_check.log'}")


if __name__ == "__main__":
    main()
