"""What each part of the recipe is worth on the synthetic set: one row per switch, 3 seeds each.

    python -m benchmarks.ablations [--config configs/synthetic_small.py] [--seeds 3]
        [--rows NAME ...] [--out runs/ablations]

Every row is the config with one setting changed, trained and evaluated ``--seeds`` times
(config.seed 0, 1, ...: the initialisation, the data order and the augmentation draws all
follow it). The table gives each row's mean and sample standard deviation of the final mAP
and R1, its mAP against the unchanged recipe's, and the attention gate alpha at the end. It is
the synthetic counterpart of the paper's Tables I and II: what each switch is worth, measured
against seed noise, before a user spends GPU days on it.

A second table looks at the gate in every row with self-attention, from the runs' logged
steps: the objective's gradient on it (``alpha_grad``, logged every ``log_every_steps``: the
size of its mean, its standard deviation and the ratio of the two, the gradient's
signal-to-noise, each per seed and then averaged) and the pull of the L2 weight decay on it
(``weight_decay * |alpha|``) beside the gradient's typical size. Adam's step is about
``lr * mean / sqrt(mean square)`` of the recent gradients, so a gradient with no steady sign
moves the gate by a random walk whatever its size.

Two rows stand for two recipes each: our translation is pad-and-crop exactly (integer shifts,
zero fill; ``dualattn.training.augment``), so BoT's augmentation (flip, pad and random crop,
erasing with the ImageNet mean) is the recipe with rotation off, and the paper's as written
(rotation, translation, erasing; no flip named) is the recipe with flip off.

Runs are kept under ``--out`` (ROW/seedN, each with its log) and their results in
``results.json``, so a run that is stopped resumes where it was; ``--fresh`` starts over.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

# name -> KEY=VALUE overrides of the config (JSON values): the recipe with one part changed.
ROWS = {
    "recipe (SE + SA, flip, translate, rotate, erase, identity sampler)": [],
    "without SE": ["model.use_se=false"],
    "without SA": ["model.use_sa=false"],
    "without flip (the paper's augmentation as written)": ["augment.flip=false"],
    "without translate": ["augment.translate=0"],
    "without rotate (BoT's augmentation)": ["augment.rotate_degrees=0"],
    "without erasing": ["augment.erase_prob=0"],
    "uniform sampler": ["input.sampler=uniform"],
    "PyTorch's default conv init": ["model.conv_init=torch_default"],
    "gate alpha without weight decay": ["optim.alpha_weight_decay=false"],
    "gate alpha at 10x the learning rate": ["optim.alpha_lr_factor=10"],
}
BASELINE = next(iter(ROWS))


def slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name.split(" (")[0]).strip("_")


def configured(config_path: str, overrides: list[str], seed: int):
    from benchmarks.bench_train_step import load_config

    c = load_config(config_path, overrides)
    c.seed = seed
    return c


def run_one(config, workdir: Path) -> dict:
    """Train and evaluate one run (its printout in workdir/log.txt); its final figures."""
    from dualattn.run.workdir import RunDir
    from dualattn.training.loop import train_and_evaluate

    workdir.mkdir(parents=True, exist_ok=True)
    tic = time.perf_counter()
    with open(workdir / "log.txt", "w") as log, contextlib.redirect_stdout(log):
        scores = train_and_evaluate(config, workdir)
    rows = [r for r in RunDir(workdir).rows() if "loss" in r]
    gate = [r["alpha"] for r in rows if "alpha" in r]
    return {"mAP": float(scores.mAP), "rank1": float(scores.rates()["rank1"]),
            "alpha": gate[-1] if gate else None, "seconds": time.perf_counter() - tic}


def spread(values: list[float]) -> tuple[float, float]:
    """(mean, sample standard deviation)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def table(results: dict, seeds: int) -> str:
    base = [r["mAP"] for r in results.get(BASELINE, {}).values()]
    lines = ["| row | mAP % (mean ± sd) | R1 % (mean ± sd) | mAP vs recipe | abs(alpha) at the end "
             "| seeds |", "| --- | --- | --- | --- | --- | --- |"]
    for name in ROWS:
        runs = list(results.get(name, {}).values())
        if not runs:
            continue
        m, m_sd = spread([100 * r["mAP"] for r in runs])
        r1, r1_sd = spread([100 * r["rank1"] for r in runs])
        delta = f"{m - 100 * statistics.fmean(base):+.1f}" if base and name != BASELINE else ""
        gates = [r["alpha"] for r in runs if r["alpha"] is not None]
        gate = f"{statistics.fmean(abs(g) for g in gates):.4f}" if gates else "(no SA)"
        lines.append(f"| {name} | {m:.1f} ± {m_sd:.1f} | {r1:.1f} ± {r1_sd:.1f} | {delta} | "
                     f"{gate} | {len(runs)} of {seeds} |")
    return "\n".join(lines)


def gate_stats(workdir: Path, weight_decay: float) -> dict | None:
    """The gate's logged trajectory in one run: None without self-attention."""
    from dualattn.run.workdir import RunDir

    rows = [r for r in RunDir(workdir).rows() if "alpha_grad" in r]
    if not rows:
        return None
    grads = [r["alpha_grad"] for r in rows]
    alphas = [abs(r["alpha"]) for r in rows]
    mean, sd = statistics.fmean(grads), statistics.stdev(grads)
    return {"mean": abs(mean), "sd": sd, "snr": abs(mean) / sd,
            "typical": statistics.median(abs(g) for g in grads),
            "pull": weight_decay * statistics.median(alphas)}


def gate_table(out: Path, results: dict, config_path: str) -> str:
    lines = ["| row | abs(gradient mean) | gradient sd | abs(mean) / sd | median abs(gradient) "
             "| weight-decay pull |", "| --- | --- | --- | --- | --- | --- |"]
    for name in ROWS:
        o = configured(config_path, ROWS[name], 0).optim
        weight_decay = o.weight_decay if o.alpha_weight_decay else 0.0
        stats = [gate_stats(out / slug(name) / f"seed{seed}", weight_decay)
                 for seed in results.get(name, {})]
        stats = [x for x in stats if x]
        if not stats:
            continue
        mean = {key: statistics.fmean(x[key] for x in stats) for key in stats[0]}
        lines.append(f"| {name} | {mean['mean']:.3f} | {mean['sd']:.3f} | {mean['snr']:.2f} "
                     f"| {mean['typical']:.3f} | {mean['pull']:.1e} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/synthetic_small.py")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rows", nargs="*", default=None, help="row names (default: all)")
    parser.add_argument("--out", default="runs/ablations")
    parser.add_argument("--fresh", action="store_true", help="forget earlier results")
    args = parser.parse_args(argv)
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path(args.out) / "jax-cache"))
    from dualattn.run import xla_flags

    xla_flags.prefer_cpu_flags()
    out = Path(args.out)
    if args.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    store = out / "results.json"
    results = json.loads(store.read_text()) if store.exists() else {}
    if results.get("config") not in (None, args.config):
        sys.exit(f"error: {out} holds results of {results['config']}; pass --fresh or another "
                 "--out")
    results["config"] = args.config
    rows = args.rows or list(ROWS)
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        sys.exit(f"error: unknown rows {unknown}; the rows are {list(ROWS)}")
    import jax

    print(f"{args.config}, {args.seeds} seeds per row; {platform.processor() or 'cpu'} x "
          f"{os.cpu_count()}, jax {jax.__version__} on {jax.default_backend()}", flush=True)
    for name in rows:
        for seed in range(args.seeds):
            done = results.setdefault(name, {})
            if str(seed) in done:
                continue
            workdir = out / slug(name) / f"seed{seed}"
            shutil.rmtree(workdir, ignore_errors=True)  # a run stopped half-way starts over
            r = run_one(configured(args.config, ROWS[name], seed), workdir)
            done[str(seed)] = r
            store.write_text(json.dumps(results, indent=1))
            print(f"{name}, seed {seed}: mAP {100 * r['mAP']:.1f} %, R1 "
                  f"{100 * r['rank1']:.1f} %, alpha {r['alpha']}, {r['seconds']:.0f} s",
                  flush=True)
    results = {k: v for k, v in results.items() if k in ROWS}
    print(table(results, args.seeds))
    print("\nthe attention gate (logged steps of every seed, averaged over the seeds):")
    print(gate_table(out, results, args.config))


if __name__ == "__main__":
    main()
