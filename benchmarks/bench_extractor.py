"""Crops per second for serving at full size: FeatureExtractor beside the PyTorch twin doing
the same work, and the exported ONNX (onnxruntime) and StableHLO files.

    python -m benchmarks.bench_extractor [--config configs/market.py] [--batches 1 8 64]

One network (the config's, with its initialisation: speed does not depend on the weights) is
written as a run, then each path turns the same uint8 crops of ``--crop`` size (resized to
the input size inside each path, as a tracker's detections would be) into L2-normalised test
features, for each batch size. Time per batch is the best of ``--repeats`` after one warm-up
call (which compiles). The paths must agree on the features (max difference printed).

* ``FeatureExtractor``: ``dualattn.FeatureExtractor(workdir)(crops)``.
* ``torch twin``: the same resize, then ``ServedNet`` (normalise, twin forward, L2) under
  ``torch.inference_mode``, float32, ``torch.get_num_threads()`` threads.
* ``onnxruntime``: the file ``dualattn.export --format onnx`` writes, after the same resize.
* ``stablehlo``: the file ``dualattn.export --format stablehlo`` writes, run by
  ``jax.export.deserialize(...).call``, after the same resize.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from dualattn.run import xla_flags

xla_flags.prefer_cpu_flags()

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.bench_evaluate import best_of  # noqa: E402
from benchmarks.bench_train_step import load_config  # noqa: E402
from configs import saved  # noqa: E402
from dualattn import export  # noqa: E402
from dualattn.interop.onnx import served_twin  # noqa: E402
from dualattn.run.model import create_model, import_weights  # noqa: E402
from dualattn.run.workdir import RunDir, atomic_write  # noqa: E402
from dualattn.serving.extractor import FeatureExtractor  # noqa: E402
from dualattn.weights.files import write_safetensors  # noqa: E402
from dualattn.weights.state_dict import flax_to_torch  # noqa: E402


def make_run(config, workdir: Path, num_classes: int) -> dict:
    """A run at step 0 holding the config's initial network; returns its twin state dict."""
    state_dict = flax_to_torch(create_model(config, num_classes))
    weights = workdir / "weights.safetensors"
    write_safetensors(weights, state_dict)
    import_weights(config, weights, workdir / "run")
    atomic_write(RunDir(workdir / "run").config, saved.to_json(config))
    return state_dict


def best_time(fn, repeats: int) -> tuple[float, np.ndarray]:
    """``bench_evaluate.best_of`` after one warm-up call (which compiles)."""
    fn()
    return best_of(fn, repeats)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/market.py")
    parser.add_argument("--classes", type=int, default=751)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--crop", type=int, nargs=2, default=[256, 96], metavar=("H", "W"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import onnxruntime as ort

    config = load_config(args.config, [])
    h, w = config.input.height, config.input.width
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), onnxruntime {ort.__version__}")
    print(f"network: {args.config} at {h}x{w}, {args.classes} classes; crops "
          f"{args.crop[0]}x{args.crop[1]} uint8, resized inside each path\n")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        state_dict = make_run(config, tmp, args.classes)
        run = tmp / "run"
        start = time.perf_counter()
        export.export_file(config, run, "onnx", tmp / "model.onnx")
        onnx_s = time.perf_counter() - start
        start = time.perf_counter()
        export.export_file(config, run, "stablehlo", tmp / "model.stablehlo")
        hlo_s = time.perf_counter() - start
        sizes = {f: (tmp / f"model.{f}").stat().st_size / 2**20 for f in ("onnx", "stablehlo")}
        print(f"export: onnx {onnx_s:.0f} s ({sizes['onnx']:.0f} MiB), stablehlo {hlo_s:.0f} s "
              f"({sizes['stablehlo']:.0f} MiB)\n")

        extract = FeatureExtractor(run, max_batch=max(args.batches))
        twin = served_twin(state_dict, config)
        session = ort.InferenceSession(str(tmp / "model.onnx"),
                                       providers=["CPUExecutionProvider"])
        hlo = jax.export.deserialize(bytearray((tmp / "model.stablehlo").read_bytes()))

        def torch_twin(crops):
            with torch.inference_mode():
                return twin(torch.from_numpy(extract.preprocess(crops))).numpy()

        paths = {
            "FeatureExtractor": extract,
            "torch twin": torch_twin,
            "onnxruntime": lambda crops: session.run(
                None, {"images": extract.preprocess(crops)})[0],
            "stablehlo": lambda crops: np.asarray(hlo.call(extract.preprocess(crops))),
        }
        rng = np.random.default_rng(0)
        rows = []
        for batch in args.batches:
            crops = list(rng.integers(0, 256, (batch, *args.crop, 3), dtype=np.uint8))
            results = {name: best_time(lambda f=fn, c=crops: f(c), args.repeats)
                       for name, fn in paths.items()}
            reference = results["FeatureExtractor"][1]
            rows.append((batch, {name: (batch / t, float(np.abs(out - reference).max()))
                                 for name, (t, out) in results.items()}))

    names = list(paths)
    print(f"{'batch':>5}  " + "  ".join(f"{n + ' crops/s':>26}" for n in names))
    for batch, row in rows:
        print(f"{batch:>5}  " + "  ".join(f"{row[n][0]:>26.1f}" for n in names))
    print("\nmax |feature - FeatureExtractor's| per path (features have unit length):")
    for batch, row in rows:
        print(f"{batch:>5}  " + "  ".join(f"{row[n][1]:>26.1e}" for n in names))
    twin_vs = [row["FeatureExtractor"][0] / row["torch twin"][0] for _, row in rows]
    print("\nFeatureExtractor / torch twin: "
          + ", ".join(f"{r:.2f}x at batch {b}" for r, (b, _) in zip(twin_vs, rows, strict=True)))


if __name__ == "__main__":
    main()
