"""Numerics of our JAX network against its PyTorch twin on the same weights.

    python -m dualattn.interop.compare --config configs/market.py [--weights FILE] [--steps 3]
    python -m dualattn.interop.compare --workdir runs/market

Both frameworks run in true f32 (TF32 off on both sides, XLA at HIGHEST precision) on the same
weights and the same input batch (P identities x K images, random pixels). Printed, as the
largest absolute difference and the largest difference relative to the reference's largest
magnitude (``max|ours - torch| / max|torch|``, per tensor, which does not blow up on entries
that happen to be near zero):

- the test feature (eval mode), and the train-mode features and logits;
- each loss part (label-smoothed cross-entropy, batch-hard triplet, total);
- the gradients: the summary over all parameters and the worst five tensors by name;
- BatchNorm running statistics after one train-mode step;
- every parameter after ``--steps`` optimizer steps: torch ``Adam(weight_decay=wd)`` against
  our ``add_decayed_weights + adam`` chain at a constant learning rate.

Two differences are not rounding and are reported apart, with their reason:

- torch blends the *unbiased* batch variance (x n/(n-1), n values per channel) into BN running
  variances, Flax the biased one. The running-variance row applies torch's rule to our batch
  variance; the raw difference is printed beside it.
- With a BNNeck, the biases of the attention's key and value BNs have an exactly zero true
  gradient (a constant on K shifts every softmax row uniformly; a constant on V shifts every
  sample's pooled feature alike, which the BNNeck and the triplet distances cancel). Both
  frameworks compute rounding noise there, and Adam's division by sqrt(v) turns noise into
  full-size steps, so those two tensors are listed apart rather than compared.

And one that is rounding, amplified: after Adam steps, parameters differ by more than the
gradients do. Adam normalises each element by its own history, and where an element's gradient
nearly cancels the L2 term (``g + wd * w`` a millionth of the tensor's gradient scale), the
gradients' rounding becomes a large relative change of that element's step. The row "optimizer
alone" feeds torch's own gradients to our optax chain and shows the two optimizers agree to
float rounding, which isolates this.

``--workdir W`` compares a run's final model (with the config it saved, unless ``--config``
is given). Without it or ``--weights`` the network starts from its initialisation with every
path opened (random BN statistics, attention gate 0.5, a larger classifier) so that nothing
hides behind a zero. A ``--weights`` file is either a full state dict of the twin (ours
converted, or a PyTorch ReID checkpoint in the twin's names) or a torchvision/timm backbone.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
from absl import flags
from flax import nnx

from dualattn import cli
from dualattn.interop.files import read_state_dict
from dualattn.interop.state_dict import flax_to_torch, state_to_torch, torch_to_flax
from dualattn.interop.torch_model import TorchReIDNet
from dualattn.losses import objective
from dualattn.models import ReIDNet
from dualattn.optim import create_optimizer
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
# The PyTorch side of the loss (as the PyTorch toolkits write it)


def torch_triplet_hard(feats, labels, margin: float = 0.3):
    """Batch-hard triplet: masked max / min of Euclidean distances, hinge at ``margin``."""
    sq = (feats ** 2).sum(1)
    dist = (sq[:, None] + sq[None, :] - 2 * feats @ feats.t()).clamp(min=1e-12).sqrt()
    same = labels[:, None] == labels[None, :]
    dist_ap = torch.where(same, dist, torch.full_like(dist, -float("inf"))).max(1).values
    dist_an = torch.where(same, torch.full_like(dist, float("inf")), dist).min(1).values
    return torch.relu(dist_ap - dist_an + margin).mean()


def torch_reid_loss(feats, logits, labels, loss_config):
    """``(total, cross_entropy, triplet)`` with the weights of ``config.loss``."""
    ce = torch.nn.functional.cross_entropy(logits, labels,
                                           label_smoothing=loss_config.label_smoothing)
    tri = torch_triplet_hard(feats, labels, loss_config.margin)
    return loss_config.ce_weight * ce + loss_config.triplet_weight * tri, ce, tri


# ---------------------------------------------------------------------------------------------
# Differences


@dataclasses.dataclass
class Row:
    name: str
    max_abs: float
    max_rel: float  # max|ours - theirs| / max|theirs|
    note: str = ""


def diff(name: str, ours, theirs, note: str = "") -> Row:
    a, b = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"{name}: shapes differ, {a.shape} vs {b.shape}")
    max_abs = float(np.abs(a - b).max()) if a.size else 0.0
    scale = float(np.abs(b).max()) if b.size else 0.0
    rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    return Row(name, max_abs, rel, note)


def summarize(group: str, rows: list[Row], worst: int = 5) -> tuple[Row, list[Row]]:
    """One row for a group of tensors (largest of each column) and its ``worst`` by max_rel."""
    ranked = sorted(rows, key=lambda r: r.max_rel, reverse=True)
    total = Row(f"{group} ({len(rows)} tensors)", max(r.max_abs for r in rows),
                max(r.max_rel for r in rows))
    return total, ranked[:worst]


@dataclasses.dataclass
class Report:
    rows: list[Row]
    worst_gradients: list[Row]
    worst_parameters: list[Row]
    explained: list[Row]

    def row(self, prefix: str) -> Row:
        return next(r for r in self.rows if r.name.startswith(prefix))

    def format(self) -> str:
        def table(rows):
            return "\n".join(f"  {r.name:<64}{r.max_abs:>12.3e}{r.max_rel:>12.3e}"
                             + (f"  {r.note}" if r.note else "") for r in rows)
        head = f"  {'quantity':<64}{'max abs':>12}{'max rel':>12}"
        parts = [head, table(self.rows), "", "worst five gradients:", table(self.worst_gradients),
                 "", "worst five parameters after the last step:",
                 table(self.worst_parameters)]
        if self.explained:
            parts += ["", "explained, not rounding (see the module docstring):",
                      table(self.explained)]
        return "\n".join(parts)


# ---------------------------------------------------------------------------------------------
# The comparison


def compare_networks(model: ReIDNet, twin, config, images: np.ndarray, labels: np.ndarray, *,
                     steps: int = 3, lr: float | None = None) -> Report:
    """Run both networks on ``images`` and report every difference. ``model`` and ``twin`` must
    carry the same weights; both are trained for ``steps`` steps in place."""
    device = next(twin.parameters()).device
    lr = config.optim.lr if lr is None else lr
    loss_cfg = config.loss
    x, y = jnp.asarray(images), jnp.asarray(labels)
    xt = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(device)
    yt = torch.from_numpy(labels).to(device)
    rows, explained = [], []

    twin.eval()
    with torch.no_grad():
        rows.append(diff("test feature (eval mode)", model(x, train=False),
                         twin(xt).cpu().numpy()))

    optimizer = nnx.Optimizer(model, create_optimizer(config, lr), wrt=nnx.Param)
    torch_opt = torch.optim.Adam([p for p in twin.parameters() if p.requires_grad], lr=lr,
                                 weight_decay=config.optim.weight_decay)

    @nnx.jit
    def jax_step(model, optimizer, x, y):
        def loss_fn(model):
            out = model(x, train=True)
            parts = objective(out.logits, out.features, y, loss_cfg)
            return parts.total, (parts, out)
        (_, (parts, out)), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        optimizer.update(model, grads)
        return parts, out, grads

    # Values per channel seen by each torch BN in train mode, for torch's n/(n-1) rule.
    per_channel = {}
    hooks = [m.register_forward_hook(
        lambda mod, inp, _out, name=name: per_channel.__setitem__(
            name, inp[0].numel() // inp[0].shape[1]))
        for name, m in twin.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]

    twin.train()
    before = flax_to_torch(model)
    trainable = {n: p for n, p in twin.named_parameters() if p.requires_grad}
    # Our optax chain fed torch's own gradients, from torch's starting point: isolates the
    # optimizer from the gradients' rounding (Adam is elementwise, so torch layouts do).
    replay = {n: p.detach().cpu().numpy().copy() for n, p in trainable.items()}
    replay_opt = create_optimizer(config, lr)
    replay_state = replay_opt.init(replay)
    for step in range(steps):
        parts, out, grads = jax_step(model, optimizer, x, y)
        torch_opt.zero_grad()
        feats, logits = twin(xt)
        total, ce, tri = torch_reid_loss(feats, logits, yt, loss_cfg)
        total.backward()
        if step == 0:
            for h in hooks:
                h.remove()
            rows += [diff("train features (before BNNeck)", out.features,
                          feats.detach().cpu().numpy()),
                     diff("logits", out.logits, logits.detach().cpu().numpy()),
                     diff("loss: cross-entropy", parts.cross_entropy, ce.item()),
                     diff("loss: triplet", parts.triplet, tri.item()),
                     diff("loss: total", parts.total, total.item())]
            rows.append(_bn_rows(before, flax_to_torch(model), twin, per_channel, explained))
            ours = state_to_torch(grads)
            grad_rows = []
            for name, p in twin.named_parameters():
                if not p.requires_grad:  # the BNNeck bias: frozen in torch, absent in ours
                    continue
                row = diff(name, ours[name], p.grad.cpu().numpy())
                if name in ZERO_GRADIENT and model.bottleneck is not None:
                    row.note = (f"true gradient 0; |ours| {np.abs(ours[name]).max():.1e}, "
                                f"|torch| {p.grad.abs().max().item():.1e}")
                    explained.append(row)
                else:
                    grad_rows.append(row)
            total_row, worst_gradients = summarize("gradients", grad_rows)
            rows.append(total_row)
        torch_grads = {n: p.grad.cpu().numpy() for n, p in trainable.items()}
        updates, replay_state = replay_opt.update(torch_grads, replay_state, replay)
        replay = optax.apply_updates(replay, updates)
        torch_opt.step()

    converted = flax_to_torch(model)
    param_rows = []
    for name, p in twin.named_parameters():
        if not p.requires_grad:
            continue
        row = diff(name, converted[name], p.detach().cpu().numpy())
        if name in ZERO_GRADIENT and model.bottleneck is not None:
            row.name += f" after {steps} steps"
            row.note = "Adam steps on rounding noise"
            explained.append(row)
        else:
            param_rows.append(row)
    total_row, worst_parameters = summarize(f"parameters after {steps} Adam steps", param_rows)
    rows.append(total_row)
    optimizer_rows = [diff(n, replay[n], p.detach().cpu().numpy()) for n, p in trainable.items()]
    rows.append(summarize("optimizer alone: our chain on torch's gradients", optimizer_rows)[0])
    return Report(rows, worst_gradients, worst_parameters, explained)


def _bn_rows(before: dict, after: dict, twin, per_channel: dict, explained: list) -> Row:
    """Running statistics after one train step; variances with torch's unbiased rule applied
    to ours (the raw difference goes to ``explained``)."""
    theirs = twin.state_dict()
    means, rule_vars, raw_vars = [], [], []
    for bn, n in per_channel.items():
        means.append(diff(f"{bn}.running_mean", after[f"{bn}.running_mean"],
                          theirs[f"{bn}.running_mean"].cpu().numpy()))
        old = before[f"{bn}.running_var"].astype(np.float64)
        batch_var = (after[f"{bn}.running_var"] - 0.9 * old) / 0.1
        torch_rule = 0.9 * old + 0.1 * batch_var * n / max(n - 1, 1)
        ref = theirs[f"{bn}.running_var"].cpu().numpy()
        rule_vars.append(diff(bn, torch_rule, ref))
        raw_vars.append(diff(bn, after[f"{bn}.running_var"], ref))
    mean_row, _ = summarize("BN running means after 1 step", means)
    var_row, _ = summarize("BN running variances, torch's n/(n-1) applied", rule_vars)
    raw_row, _ = summarize("BN running variances, raw", raw_vars)
    raw_row.note = "torch uses the unbiased batch variance"
    explained.append(raw_row)
    # One line per statistic in the main table: report the worse of the two.
    return mean_row if mean_row.max_rel > var_row.max_rel else var_row


# ---------------------------------------------------------------------------------------------
# Command line


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
    f32 = config.copy_and_resolve_references()
    f32.model.dtype = "float32"
    model_cfg = f32.model.to_dict()
    if workdir:
        loaded = load_model(f32, workdir, "latest")
        model = nnx.merge(loaded.graphdef, loaded.state)
        num_classes = model.classifier.kernel.shape[-1]
        how = f"the final model of {workdir} (step {loaded.step})"
        return model, twin_of(model, model_cfg, num_classes, device), how
    model = create_model(f32, num_classes)  # as the trainer builds it, in f32
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


def main(argv):
    cli.require("config")
    set_true_f32()
    config = FLAGS.config
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
    print(f"weights: {how}\nbatch: {p} ids x {k} images at {config.input.height}x"
          f"{config.input.width}; JAX on {jax.devices()[0].platform}, torch on "
          f"{FLAGS.torch_device}; f32, TF32 off\n")
    report = compare_networks(model, twin, config, images, labels, steps=FLAGS.steps,
                              lr=FLAGS.lr)
    print(report.format())


if __name__ == "__main__":
    define_flags()
    cli.run(main, distributed=False)
