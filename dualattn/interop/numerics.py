"""Numerics of our JAX network against its PyTorch twin, each against a float64 ground truth.

Four runs on the same weights and input batch record the quantities of
``dualattn.interop.traces`` (test feature, train features, logits, each loss term, gradients,
BN running statistics after one step, parameters after a few Adam steps): ours and the twin
in the compared precision (float32 with TF32 off and XLA at HIGHEST, or bfloat16: ours with
``model.dtype=bfloat16`` against the twin under autocast), and both again in float64 on the
CPU. Each row gives three relative differences, ``max|a - b| / max|b|`` per tensor (the
largest over a group): ours against float64, torch against float64, ours against torch; and a
verdict, "rounding" where ours is at most ``ROUNDING_FACTOR`` times as far from float64 as
torch is, "CHECK" otherwise.

Two differences are not rounding and are listed apart, with their reason: torch blends the
*unbiased* batch variance into BN running variances (the row applies torch's rule to ours),
and behind a BNNeck the attention's key and value BN biases have an exactly zero true
gradient, on which Adam steps by rounding noise. BENCHMARKS.md ("Numerics") has the measured
tables and why float32 gradients of the full network sit 1e-2 from float64 in both
frameworks. ``python -m dualattn.compare`` is the command.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

from dualattn.errors import ConfigError
from dualattn.interop.torch_model import twin_from_state_dict
from dualattn.interop.traces import OUTPUTS, TORCH_TERMS, jax_trace, reference_traces, torch_trace
from dualattn.models import ReIDNet
from dualattn.run.model import create_model, load_model
from dualattn.weights.files import read_state_dict
from dualattn.weights.imagenet import load_backbone_weights
from dualattn.weights.state_dict import flax_to_torch, torch_to_flax

ZERO_GRADIENT = ("attention.key_bn.bias", "attention.value_bn.bias")
# How the forward quantities are printed.
LABELS = {"test feature": "test feature (eval mode)",
          "train features": "train features (before BNNeck)"}


# ---------------------------------------------------------------------------------------------
# Building both networks


def exercise_all_paths(model: ReIDNet, seed: int = 0, only_zero_alpha: bool = False) -> None:
    """Give an initialised model non-trivial BN statistics and affine terms, an open attention
    gate and a larger classifier, in place; with ``only_zero_alpha`` just open the gate."""
    state = nnx.state(model)
    keys = iter(jax.random.split(jax.random.key(seed + 1), 100_000))
    for path, var in nnx.to_flat_state(state):
        v = var[...]
        if path[-1] == "alpha":
            if not only_zero_alpha or float(v) == 0.0:
                var[...] = jnp.asarray(0.5, v.dtype)
        elif only_zero_alpha:
            continue
        elif path[-1] in ("mean", "bias"):
            var[...] = 0.1 * jax.random.normal(next(keys), v.shape, v.dtype)
        elif path[-1] in ("var", "scale"):
            var[...] = jax.random.uniform(next(keys), v.shape, v.dtype, 0.5, 1.5)
        elif path[-1] == "kernel" and path[0] == "classifier":
            var[...] = 0.1 * jax.random.normal(next(keys), v.shape, v.dtype)
    nnx.update(model, state)


def twin_of(model: ReIDNet, model_config: dict, device: str = "cpu"):
    """The PyTorch twin carrying exactly ``model``'s weights."""
    return twin_from_state_dict(flax_to_torch(model), model_config, device)


def pk_batch(p: int, k: int, height: int, width: int, seed: int = 0):
    """``(images NHWC f32 ~ N(0, 1), labels 0..p-1 each k times)``: a normalised input batch."""
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((p * k, height, width, 3), dtype=np.float32)
    return images, np.repeat(np.arange(p), k)


# ---------------------------------------------------------------------------------------------
# Differences and verdicts

# Ours may be this many times further from the float64 truth than torch is and still be called
# rounding: the two frameworks sum in different orders and with different kernels, so their
# errors differ by small factors (the largest ratio measured on rounding alone is in
# BENCHMARKS.md).
ROUNDING_FACTOR = 4.0
# Unit roundoff of the compared precision: the smallest error a verdict compares against.
UNIT_ROUNDOFF = {"float32": 2.0 ** -24, "bfloat16": 2.0 ** -8}


def relative(ours: np.ndarray, reference: np.ndarray) -> float:
    """``max|ours - reference| / max|reference|``: per tensor, so an entry that happens to be
    near zero does not blow it up."""
    a, b = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ, {a.shape} vs {b.shape}")
    err = float(np.abs(a - b).max()) if a.size else 0.0
    scale = float(np.abs(b).max()) if b.size else 0.0
    return err / scale if scale > 0 else (0.0 if err == 0 else float("inf"))


@dataclasses.dataclass
class Row:
    """One quantity (or a group of tensors: the largest of each column over the group).
    Columns are relative differences; ``ours_ref``/``torch_ref`` are None without the
    float64 reference."""
    name: str
    ours_torch: float
    ours_torch_abs: float
    ours_ref: float | None = None
    torch_ref: float | None = None
    note: str = ""
    floor: float = 0.0  # the error this quantity's inputs carry into it (losses)

    def ratio(self, roundoff: float) -> float | None:
        """How many times further from the truth ours is than torch, with torch's error
        floored at the precision's unit roundoff and at ``floor``."""
        if self.ours_ref is None or self.torch_ref is None:
            return None
        return self.ours_ref / max(self.torch_ref, roundoff, self.floor)

    def flagged(self, roundoff: float) -> bool:
        ratio = self.ratio(roundoff)
        return ratio is not None and ratio > ROUNDING_FACTOR

    def verdict(self, roundoff: float) -> str:
        ratio = self.ratio(roundoff)
        if ratio is None:
            return ""
        if self.flagged(roundoff):
            return f"CHECK: {ratio:.0f}x torch's error"
        return f"rounding ({ratio:.2g}x)"


def row(name: str, ours, theirs, ref=None, note: str = "") -> Row:
    """``ours`` against ``theirs`` and, given the float64 reference, each against it."""
    a, b = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    return Row(name, relative(a, b), float(np.abs(a - b).max()) if a.size else 0.0,
               None if ref is None else relative(a, ref),
               None if ref is None else relative(b, ref), note)


def group(name: str, rows: list[Row]) -> Row:
    """One row for a group of tensors: the largest of each column."""
    def worst(column):
        values = [getattr(r, column) for r in rows]
        return None if values[0] is None else max(values)
    return Row(f"{name} ({len(rows)} tensors)", worst("ours_torch"), worst("ours_torch_abs"),
               worst("ours_ref"), worst("torch_ref"))


@dataclasses.dataclass
class Report:
    rows: list[Row]
    worst_gradients: list[Row]
    worst_parameters: list[Row]
    explained: list[Row]
    roundoff: float
    reference_agreement: float | None = None  # JAX f64 vs torch f64, worst over the trace
    reference_worst: str = ""  # the quantity of that worst agreement

    def row(self, prefix: str) -> Row:
        """The first row (compared or explained) whose name starts with ``prefix``."""
        return next(r for r in self.rows + self.explained if r.name.startswith(prefix))

    def flagged(self) -> list[Row]:
        return [r for r in self.rows if r.flagged(self.roundoff)]

    def format(self) -> str:
        def number(v):
            return f"{v:>11.1e}" if v is not None else f"{'-':>11}"

        def table(rows, verdicts=True):
            return "\n".join(
                f"  {r.name:<62}{number(r.ours_ref)}{number(r.torch_ref)}{number(r.ours_torch)}"
                + (f"  {r.verdict(self.roundoff)}" if verdicts else "")
                + (f"  {r.note}" if r.note else "") for r in rows)
        head = (f"  {'quantity (max relative difference)':<62}{'ours-f64':>11}{'torch-f64':>11}"
                f"{'ours-torch':>11}  verdict")
        parts = []
        if self.reference_agreement is not None:
            parts += [f"float64 reference: ours and torch's agree to "
                      f"{self.reference_agreement:.1e} (worst: {self.reference_worst})", ""]
        parts += [head, table(self.rows), "",
                  "worst five gradients (by ours-f64 / torch-f64):",
                  table(self.worst_gradients, verdicts=False), "",
                  "worst five parameters after the last step:",
                  table(self.worst_parameters, verdicts=False)]
        if self.explained:
            parts += ["", "explained, not rounding (see the module docstring):",
                      table(self.explained, verdicts=False)]
        return "\n".join(parts)


# ---------------------------------------------------------------------------------------------
# The comparison


def _names(trace: dict, prefix: str) -> list[str]:
    return [k[len(prefix):] for k in trace if k.startswith(prefix)]


def build_report(ours: dict, theirs: dict, ref: dict | None, ref_theirs: dict | None, *,
                 steps: int, roundoff: float, zero_gradient: tuple[str, ...]) -> Report:
    """Every quantity of the traces (``dualattn.interop.traces``) side by side."""
    def r(key, name=None):
        return row(name or key, ours[key], theirs[key], None if ref is None else ref[key])

    compared = {key: r(key, LABELS.get(key)) for key in OUTPUTS if key in theirs}
    explained = [Row(key, float("nan"), float("nan"), note="ours only: the twin has no such term")
                 for key in OUTPUTS if key in ours and key not in theirs]
    if ref is not None:
        # A loss is a scalar computed from the features and logits: judged against the error
        # its inputs carry (torch's), since a scalar can land near the truth by chance.
        carried = max(compared["train features"].torch_ref, compared["logits"].torch_ref)
        for key, loss in compared.items():
            if key.startswith("loss: "):
                loss.floor = carried
    rows = list(compared.values())

    def size(trace, key):
        return f"{float(np.abs(trace[key]).max()):.0e}"

    def tensors(prefix, title):
        """The group's row and its worst five by ratio; the zero-gradient tensors go to
        ``explained``."""
        kept = []
        for name in _names(theirs, prefix):
            x = r(prefix + name, name)
            if name not in zero_gradient:
                kept.append(x)
                continue
            key = prefix + name
            if prefix == "grad/":
                x.note = (f"true gradient 0: |ours| {size(ours, key)}, |torch| "
                          f"{size(theirs, key)}"
                          + (f", f64 {size(ref, key)}" if ref is not None else ""))
            else:
                x.name += f" after {steps} steps"
                x.note = "Adam steps on rounding noise"
            explained.append(x)
        ranked = sorted(kept, key=lambda x: (x.ratio(roundoff) or 0.0, x.ours_torch),
                        reverse=True)
        return group(title, kept), ranked[:5]

    gradients, worst_gradients = tensors("grad/", "gradients")
    rows.append(gradients)
    rows.append(group("BN running means after 1 step",
                      [r(f"bn mean/{bn}", bn) for bn in _names(theirs, "bn mean/")]))
    rows.append(group("BN running variances, torch's n/(n-1) applied",
                      [r(f"bn var/{bn}", bn) for bn in _names(theirs, "bn var/")]))
    raw = group("BN running variances, raw",
                [row(bn, ours[f"bn var raw/{bn}"], theirs[f"bn var/{bn}"])
                 for bn in _names(theirs, "bn var/")])
    raw.note = "torch blends the unbiased batch variance"
    explained.insert(0, raw)
    parameters, worst_parameters = tensors("param/", f"parameters after {steps} Adam steps")
    rows.append(parameters)
    if any(k.startswith("replay/") for k in theirs):
        rows.append(group("optimizer alone: our chain on torch's gradients",
                          [row(n, theirs[f"replay/{n}"], theirs[f"param/{n}"])
                           for n in _names(theirs, "replay/")]))
    report = Report(rows, worst_gradients, worst_parameters, explained, roundoff)
    if ref is not None and ref_theirs is not None:
        report.reference_agreement, report.reference_worst = max(
            (relative(ref[k], ref_theirs[k]), k) for k in ref_theirs
            if k in ref and k.split("/", 1)[-1] not in zero_gradient)
    return report


def compared_precision(config) -> str:
    """``config.model.dtype`` if compare can compare it (float32, bfloat16)."""
    dtype = config.model.dtype
    if dtype not in UNIT_ROUNDOFF:
        raise ConfigError(f"compare runs float32 or bfloat16, not model.dtype={dtype!r}; "
                          "pass --config.model.dtype=float32 or bfloat16")
    return dtype


def check_twin_objective(config) -> None:
    """Refuse a comparison whose objective the twin cannot compute: a weighted term of ours
    that the twin has no counterpart for would make every gradient differ by design."""
    missing = [f"loss.weights.{name}={weight!r}" for name, weight in config.loss.weights.items()
               if weight and name not in TORCH_TERMS]
    if missing:
        raise ConfigError(f"{', '.join(missing)}: the PyTorch twin has no such loss term, so "
                          "the two objectives would differ; set the weight to 0 to compare, "
                          "or add the term to dualattn.interop.traces.TORCH_TERMS")


def compare_networks(model: ReIDNet, twin, config, images: np.ndarray, labels: np.ndarray, *,
                     steps: int = 3, lr: float | None = None, reference: bool = True) -> Report:
    """Both networks (which must carry the same weights) on ``images``, in
    ``config.model.dtype`` (float32, or bfloat16 against the twin under autocast), each
    against the float64 reference unless ``reference`` is False. Neither is modified."""
    lr = config.optim.lr if lr is None else lr
    dtype = compared_precision(config)
    check_twin_objective(config)
    autocast = torch.bfloat16 if dtype == "bfloat16" else None
    theirs, counts = torch_trace(twin, config, images, labels, steps=steps, lr=lr,
                                 autocast=autocast, replay=True)
    ours = jax_trace(model, config, images, labels, steps=steps, lr=lr, counts=counts)
    ref = ref_theirs = None
    if reference:
        ref, ref_theirs = reference_traces(model, twin, config, images, labels, steps=steps,
                                           lr=lr, counts=counts)
    zero = ZERO_GRADIENT if model.bottleneck is not None else ()
    return build_report(ours, theirs, ref, ref_theirs, steps=steps,
                        roundoff=UNIT_ROUNDOFF[dtype], zero_gradient=zero)


def set_true_f32() -> None:
    """TF32 off in torch, HIGHEST precision for XLA's matmuls and convolutions."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    jax.config.update("jax_default_matmul_precision", "highest")


def build_pair(config, num_classes: int, weights: str = "", device: str = "cpu",
               workdir: str | None = None):
    """``(model, twin, description)`` on the same weights: a run's final model (``workdir``),
    a weights file, or the initialisation with every path opened."""
    model_cfg = config.model.to_dict()
    if workdir:
        loaded = load_model(config, workdir, "latest")
        model = nnx.merge(loaded.graphdef, loaded.state)
        how = f"the final model of {workdir} (step {loaded.step})"
        return model, twin_of(model, model_cfg, device), how
    model = create_model(config, num_classes)  # as the trainer builds it
    if not weights:
        exercise_all_paths(model, config.seed)
        how = "initialisation with every path opened (BN statistics, attention gate 0.5)"
    else:
        state_dict = read_state_dict(weights)
        if "classifier.weight" in state_dict:
            torch_to_flax(state_dict, model)
            how = f"all weights from {weights}"
        else:
            counts = load_backbone_weights(model, weights)
            exercise_all_paths(model, config.seed, only_zero_alpha=True)
            how = (f"backbone from {weights} ({counts['loaded']} tensors), head initialised, "
                   "attention gate 0.5")
    return model, twin_of(model, model_cfg, device), how
