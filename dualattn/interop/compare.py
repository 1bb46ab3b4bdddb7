"""Numerics of our JAX network against its PyTorch twin, each against a float64 ground truth.

    python -m dualattn.interop.compare --config configs/market.py [--weights FILE] [--steps 3]
    python -m dualattn.interop.compare --workdir runs/market
    python -m dualattn.interop.compare --config configs/market.py --config.model.dtype=bfloat16

Four runs on the same weights and input batch (P identities x K images, random pixels), each
recording the quantities of ``dualattn.interop.traces`` (test feature, train features, logits,
loss parts, gradients, BN running statistics after one step, parameters after ``--steps``
Adam steps): ours and the twin in the compared precision, and both again in float64 on the
CPU (``--noreference`` skips these two). The compared precision is float32 with TF32 off on
both sides and XLA at HIGHEST precision, or bfloat16: ours with ``model.dtype=bfloat16``
against the twin under ``torch.autocast(dtype=torch.bfloat16)``.

Each row prints three relative differences, ``max|a - b| / max|b|`` per tensor (the largest
over a group of tensors), which does not blow up on entries that happen to be near zero:
ours against float64, torch against float64, ours against torch; and a verdict. "rounding
(r x)" means ours is r times as far from float64 as torch is, with r at most
``ROUNDING_FACTOR``; "CHECK" means it is further. Torch's distance counts as at least the
precision's unit roundoff, and for a loss (a scalar, which can land near the truth by chance)
as at least the distance its inputs carry: torch's for the train features and logits. The
two float64 runs are compared with each other first and agree to 1e-7 or better, so the truth
does not depend on the framework (the largest difference is in parameters after Adam's first
step, which moves an element by +-lr whatever its gradient's size, so an element whose
gradient is float64 noise steps either way).

Why float32 gradients sit 1e-2 to 1e-1 from float64 at full size, in both frameworks
(``python -m benchmarks.gradient_sensitivity`` prints the figures: Market network at 128x64,
P8 x K4, the twin alone, largest gradient difference over tensors). The forward pass is
accurate to ~1e-5 (features, logits, losses); the gradients are not, because the network is
piecewise linear: a ReLU whose input lies within rounding of 0, or a max-pool window whose two
largest values lie within rounding of each other, takes one branch in float32 and the other in
float64, and the gradient through that unit changes by its whole size rather than by a
rounding error. Among millions of units a few always do. Smoothing the kinks removes the
effect: with GELU for ReLU the largest difference drops from 8.0e-2 to 4.0e-5 at the opened
initialisation, and from 9.6e-2 to 1.4e-5 for the synthetic demo's trained model (there
average pooling for the max-pool alone gives 5.9e-6). The other suspects change it by less:
closed paths at plain initialisation 1.5e-1, the classifier at its init scale 7.4e-2, BN with
running instead of batch statistics 7.1e-3 (fewer units near their kink), one bottleneck per
stage 2.4e-2 (fewer units). Trained weights do not help (9.6e-2), so no choice of weights makes
float32 gradients agree to rounding at this size, and the float64 columns are how to read
them: a difference of 5e-2 between ours and torch is no evidence against either when each is
5e-2 from the truth. In the tiny test network there are few units to flip, and both sit ~1e-5
from float64. Which framework lands closer in one batch is chance (ours was 28x closer on the
trained model); the verdict's factor allows for it.

Two differences are not rounding and are listed apart, with their reason:

- torch blends the *unbiased* batch variance (x n/(n-1), n values per channel) into BN running
  variances, Flax the biased one. The running-variance row applies torch's rule to our (and
  the reference's) batch variance; the raw difference is printed beside it.
- With a BNNeck, the biases of the attention's key and value BNs have an exactly zero true
  gradient (a constant on K shifts every softmax row uniformly; a constant on V shifts every
  sample's pooled feature alike, which the BNNeck and the triplet distances cancel); float64
  computes ~1e-17 there. Both float32 frameworks compute rounding noise, and Adam's division
  by sqrt(v) turns noise into full-size steps.

And one that is rounding, amplified: after Adam steps, parameters differ by more than the
gradients do. Adam normalises each element by its own history, and where an element's gradient
nearly cancels the L2 term (``g + wd * w`` a millionth of the tensor's gradient scale), the
gradients' rounding becomes a large relative change of that element's step. The row "optimizer
alone" feeds torch's own gradients to our optax chain and shows the two optimizers agree to
float rounding, which isolates this.

In bfloat16 the two frameworks round different operations. Ours runs the backbone's and the
attention's convolutions, BNs and SE gates in bfloat16 with float32 parameters and batch
statistics, the attention's scores and softmax in float32, and the head (pooling, BNNeck,
classifier) and losses in float32. Autocast runs everything from the first convolution to the
logits in bfloat16, features and logits included, and promotes only the cross-entropy to
float32, so the triplet loss's distance matrix (``|a|^2 + |b|^2 - 2ab``, which cancels) is
bfloat16 too: at the opened initialisation at 384x128 its triplet loss is 85 % off float64,
ours 1.7 %. Otherwise both are of bfloat16's size (2^-8 = 3.9e-3 per rounding) from float64
and are compared the same way.

``--workdir W`` compares a run's final model (with the config it saved, unless ``--config``
is given). Without it or ``--weights`` the network starts from its initialisation with every
path opened (random BN statistics, attention gate 0.5, a larger classifier) so that nothing
hides behind a zero. A ``--weights`` file is either a full state dict of the twin (ours
converted, or a PyTorch ReID checkpoint in the twin's names) or a torchvision/timm backbone.
JAX runs on its default device and the twin on ``--torch_device``; the float64 runs are on
the CPU whatever those are.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import torch
from absl import flags
from flax import nnx

from dualattn import cli
from dualattn.errors import ConfigError
from dualattn.interop.files import read_state_dict
from dualattn.interop.state_dict import flax_to_torch, torch_to_flax
from dualattn.interop.torch_model import TorchReIDNet
from dualattn.interop.traces import OUTPUTS, jax_trace, reference_traces, torch_trace
from dualattn.models import ReIDNet
from dualattn.pretrained import load_backbone_weights
from dualattn.state import create_model, load_model

ZERO_GRADIENT = ("attention.key_bn.bias", "attention.value_bn.bias")


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


def twin_of(model: ReIDNet, model_config: dict, num_classes: int, device: str = "cpu"):
    """The PyTorch twin carrying exactly ``model``'s weights."""
    twin = TorchReIDNet(num_classes, **model_config)
    twin.load_state_dict({k: torch.from_numpy(np.array(v))
                          for k, v in flax_to_torch(model).items()}, strict=True)
    return twin.to(device)


def pk_batch(p: int, k: int, height: int, width: int, seed: int = 0):
    """``(images NHWC f32 ~ N(0, 1), labels 0..p-1 each k times)``: a normalised input batch."""
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((p * k, height, width, 3), dtype=np.float32)
    return images, np.repeat(np.arange(p), k)


# ---------------------------------------------------------------------------------------------
# Differences and verdicts

# Ours may be this many times further from the float64 truth than torch is and still be called
# rounding: the two frameworks sum in different orders and with different kernels, so their
# errors differ by small factors (the largest ratio measured on rounding alone is in README).
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

    rows = [r(key) for key in OUTPUTS]
    rows[0].name = "test feature (eval mode)"
    rows[1].name = "train features (before BNNeck)"
    if ref is not None:
        # A loss is a scalar computed from the features and logits: judged against the error
        # its inputs carry (torch's), since a scalar can land near the truth by chance.
        carried = max(rows[1].torch_ref, rows[2].torch_ref)
        for loss in rows[3:6]:
            loss.floor = carried
    explained = []

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


def compare_networks(model: ReIDNet, twin, config, images: np.ndarray, labels: np.ndarray, *,
                     steps: int = 3, lr: float | None = None, reference: bool = True) -> Report:
    """Both networks (which must carry the same weights) on ``images``, in
    ``config.model.dtype`` (float32, or bfloat16 against the twin under autocast), each
    against the float64 reference unless ``reference`` is False. Neither is modified."""
    lr = config.optim.lr if lr is None else lr
    dtype = compared_precision(config)
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
        num_classes = model.classifier.kernel.shape[-1]
        how = f"the final model of {workdir} (step {loaded.step})"
        return model, twin_of(model, model_cfg, num_classes, device), how
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
    return model, twin_of(model, model_cfg, num_classes, device), how


FLAGS = flags.FLAGS


def define_flags() -> None:
    cli.define_config_flag("Model, loss and optimizer settings (default with --workdir: the "
                           "run's saved config).")
    cli.define_workdir_flag("A run whose final model both frameworks load.")
    flags.DEFINE_string("weights", "", "A .pth/.safetensors state dict: the twin's (full model) "
                        "or a torchvision/timm backbone. Default: initialisation.")
    flags.DEFINE_integer("num_classes", None, "Classifier size (default: the weights file's, "
                         "else 751, Market-1501's training identities).")
    flags.DEFINE_integer("steps", 3, "Optimizer steps before comparing parameters.")
    flags.DEFINE_integer("p", None, "Identities per batch (default config.input.p).")
    flags.DEFINE_integer("k", None, "Images per identity (default config.input.k).")
    flags.DEFINE_float("lr", None, "Constant learning rate (default config.optim.lr).")
    flags.DEFINE_string("torch_device", "cpu", "Device of the PyTorch twin: cpu or cuda.")
    flags.DEFINE_bool("reference", True, "Also run both networks in float64 on the CPU, the "
                      "ground truth each is compared with (--noreference: faster, no verdicts).")


def main(argv):
    cli.require("config")
    set_true_f32()
    config = FLAGS.config
    compared_precision(config)
    num_classes = FLAGS.num_classes
    if num_classes is None:
        num_classes = 751
        if FLAGS.weights:
            sd = read_state_dict(FLAGS.weights)
            if "classifier.weight" in sd:
                num_classes = sd["classifier.weight"].shape[0]
    p, k = FLAGS.p or config.input.p, FLAGS.k or config.input.k
    model, twin, how = build_pair(config, num_classes, FLAGS.weights, FLAGS.torch_device,
                                  FLAGS.workdir)
    images, labels = pk_batch(p, k, config.input.height, config.input.width, config.seed)
    precision = ("bfloat16: ours model.dtype=bfloat16, torch under autocast(bfloat16)"
                 if config.model.dtype == "bfloat16" else "float32, TF32 off")
    print(f"weights: {how}\nbatch: {p} ids x {k} images at {config.input.height}x"
          f"{config.input.width}; JAX on {jax.devices()[0].platform}, torch on "
          f"{FLAGS.torch_device}; {precision}")
    report = compare_networks(model, twin, config, images, labels, steps=FLAGS.steps,
                              lr=FLAGS.lr, reference=FLAGS.reference)
    print(report.format())


def command() -> None:
    """The ``dualattn-compare`` console script: ``python -m dualattn.interop.compare``."""
    define_flags()
    cli.run(main, distributed=False)


if __name__ == "__main__":
    command()
