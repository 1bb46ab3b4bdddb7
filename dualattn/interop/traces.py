"""What one framework computes for one network, batch and config: a trace, in any precision.

The numerics comparison (``dualattn.interop.numerics``) records the same quantities from four
runs on the same weights and batch (ours and the PyTorch twin in the compared precision, and
both again in float64) and compares them. A trace is a dict of float64 NumPy arrays under
these keys, with the twin's parameter names (torchvision/timm) for every tensor:

- ``test feature``: eval mode, before any step;
- ``train features``, ``logits``, ``loss: <term>`` for each term of the objective
  (``dualattn.training.losses.TERMS``) and ``loss: total``: the first train-mode step;
- ``grad/<param>``: that step's gradients (trainable parameters only; the twin's frozen
  BNNeck bias is not one, and ours has none);
- ``bn mean/<bn>``, ``bn var/<bn>``: BN running statistics after that step, the variances in
  torch's convention (the *unbiased* batch variance, x n/(n-1), blended in). Ours blend the
  biased one, so our traces hold the raw values under ``bn var raw/<bn>`` and torch's rule
  applied to them under ``bn var/``;
- ``param/<param>``: every trainable parameter after ``steps`` optimizer steps (torch
  ``Adam(weight_decay)``, our ``add_decayed_weights + adam`` chain) at a constant rate;
- ``replay/<param>`` (torch traces, when asked): our optax chain fed torch's own gradients
  from torch's starting point, which isolates the optimizers from the gradients' rounding.

Mixed precision is each framework's own: ``config.model.dtype="bfloat16"`` for ours, and
``torch.autocast(dtype=torch.bfloat16)`` around the twin's forward and loss, as the PyTorch
toolkits train with AMP. The float64 ground truth is our network built in float64 under
``jax.enable_x64`` (XLA's plain convolutions) and the twin in double, both on the CPU.
"""

from __future__ import annotations

import contextlib
import copy
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
from flax import nnx

from dualattn.models import ReIDNet
from dualattn.training.losses import TERMS, objective
from dualattn.training.optim import GATE, create_optimizer
from dualattn.weights.state_dict import flax_to_torch, state_to_torch

# The forward quantities of a trace, in the order the comparison prints them.
OUTPUTS = ("test feature", "train features", "logits",
           *(f"loss: {name}" for name in TERMS), "loss: total")
# Flax's BatchNorm momentum, as torch's 0.1 (dualattn.models.layers).
_KEEP = 0.9


# ---------------------------------------------------------------------------------------------
# The PyTorch side of the loss (as the PyTorch toolkits write it)


def torch_pairwise_euclidean(feats):
    """Euclidean distances by the ``|a|^2 + |b|^2 - 2ab`` expansion, clamped at 1e-12."""
    sq = (feats ** 2).sum(1)
    return (sq[:, None] + sq[None, :] - 2 * feats @ feats.t()).clamp(min=1e-12).sqrt()


def torch_hardest_pairs(dist, labels):
    """``(farthest positive, closest negative)`` index of each anchor, as ``max(dim)`` /
    ``min(dim)`` pick them."""
    same = labels[:, None] == labels[None, :]
    pos = torch.where(same, dist, torch.full_like(dist, -float("inf"))).max(1).indices
    neg = torch.where(same, torch.full_like(dist, float("inf")), dist).min(1).indices
    return pos, neg


def torch_triplet_hard(feats, labels, margin: float = 0.3):
    """Batch-hard triplet: masked max / min of Euclidean distances, hinge at ``margin``."""
    dist = torch_pairwise_euclidean(feats)
    pos, neg = torch_hardest_pairs(dist, labels)
    dist_ap = dist.gather(1, pos[:, None])[:, 0]
    dist_an = dist.gather(1, neg[:, None])[:, 0]
    return torch.relu(dist_ap - dist_an + margin).mean()


def torch_param_groups(twin, config, lr: float) -> list[dict]:
    """The twin's trainable parameters as torch ``Adam`` groups matching
    ``dualattn.training.optim.create_optimizer``: the attention gate in a group of its own
    (``optim.alpha_weight_decay``, ``optim.alpha_lr_factor``), each group's ``lr_factor``
    kept for a schedule that sets ``lr`` per step."""
    o = config.optim
    trainable = [(n, p) for n, p in twin.named_parameters() if p.requires_grad]
    gate = [p for n, p in trainable if n.rsplit(".", 1)[-1] == GATE]
    groups = [{"params": [p for n, p in trainable if n.rsplit(".", 1)[-1] != GATE],
               "weight_decay": o.weight_decay, "lr": lr, "lr_factor": 1.0}]
    if gate:
        groups.append({"params": gate, "weight_decay": o.weight_decay if o.alpha_weight_decay
                       else 0.0, "lr": lr * o.alpha_lr_factor, "lr_factor": o.alpha_lr_factor})
    return groups


# The objective's terms as the PyTorch toolkits write them, by ``TERMS``'s names: (features,
# logits, labels, the config's loss section) -> scalar.
TORCH_TERMS = {
    "cross_entropy": lambda feats, logits, labels, c: torch.nn.functional.cross_entropy(
        logits, labels, label_smoothing=c.label_smoothing),
    "triplet": lambda feats, logits, labels, c: torch_triplet_hard(feats, labels, c.margin),
}


def torch_reid_loss(feats, logits, labels, loss_config):
    """``(total, terms)`` with the weights of ``config.loss``, as ``objective`` computes them.
    A term of ours the twin does not have is left out, so the comparison shows it."""
    weights = loss_config.weights
    terms = {name: term(feats, logits, labels, loss_config)
             for name, term in TORCH_TERMS.items() if name in weights}
    return sum(weights[name] * value for name, value in terms.items()), terms


# ---------------------------------------------------------------------------------------------
# PyTorch


def _numpy(t) -> np.ndarray:
    """A float64 copy (for a double tensor ``.double().numpy()`` would share its memory, which
    later steps overwrite)."""
    return np.array(t.detach().cpu().double().numpy(), copy=True)


def torch_trace(twin, config, images: np.ndarray, labels: np.ndarray, *, steps: int, lr: float,
                autocast: torch.dtype | None = None, replay: bool = False,
                dtype: torch.dtype | None = None, device: str | None = None):
    """``(trace, values per channel of each BN)`` of a copy of ``twin`` (in ``dtype`` and on
    ``device`` if given, else its own), under ``torch.autocast(dtype=autocast)`` if given."""
    twin = copy.deepcopy(twin).to(device=device, dtype=dtype)
    first = next(twin.parameters())
    device, dtype = first.device, first.dtype
    xt = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(device, dtype)
    yt = torch.from_numpy(labels).to(device)

    def mixed():
        return (torch.autocast(device_type=device.type, dtype=autocast) if autocast
                else contextlib.nullcontext())

    trace = {}
    twin.eval()
    with torch.no_grad(), mixed():
        trace["test feature"] = _numpy(twin(xt))

    counts = {}  # values per channel seen by each BN, for torch's n/(n-1)
    hooks = [m.register_forward_hook(
        lambda mod, inp, _out, name=name: counts.__setitem__(
            name, inp[0].numel() // inp[0].shape[1]))
        for name, m in twin.named_modules()
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    trainable = {n: p for n, p in twin.named_parameters() if p.requires_grad}
    optimizer = torch.optim.Adam(torch_param_groups(twin, config, lr))
    if replay:
        ours = create_optimizer(config, lr)
        replayed = {n: p.detach().cpu().numpy().copy() for n, p in trainable.items()}
        replay_state = ours.init(replayed)
    twin.train()
    for step in range(steps):
        optimizer.zero_grad()
        with mixed():
            feats, logits = twin(xt)
            total, terms = torch_reid_loss(feats, logits, yt, config.loss)
        total.backward()
        if step == 0:
            for hook in hooks:
                hook.remove()
            trace.update({"train features": _numpy(feats), "logits": _numpy(logits),
                          **{f"loss: {n}": _numpy(v) for n, v in terms.items()},
                          "loss: total": _numpy(total)})
            trace.update({f"grad/{n}": _numpy(p.grad) for n, p in trainable.items()})
            buffers = twin.state_dict()
            for bn in counts:
                trace[f"bn mean/{bn}"] = _numpy(buffers[f"{bn}.running_mean"])
                trace[f"bn var/{bn}"] = _numpy(buffers[f"{bn}.running_var"])
        if replay:
            grads = {n: p.grad.detach().cpu().numpy() for n, p in trainable.items()}
            updates, replay_state = ours.update(grads, replay_state, replayed)
            replayed = optax.apply_updates(replayed, updates)
        optimizer.step()
    trace.update({f"param/{n}": _numpy(p) for n, p in trainable.items()})
    if replay:
        trace.update({f"replay/{n}": np.asarray(v, np.float64) for n, v in replayed.items()})
    return trace, counts


# ---------------------------------------------------------------------------------------------
# JAX


def _eval(model, x):
    return model(x, train=False)


def jax_trace(model: ReIDNet, config, images: np.ndarray, labels: np.ndarray, *, steps: int,
              lr: float, counts: dict[str, int]) -> dict[str, np.ndarray]:
    """The trace of a copy of ``model`` (its own dtype); ``counts`` are the values per channel
    of each BN (from ``torch_trace``) for torch's variance rule."""
    model = nnx.clone(model)
    x, y = jnp.asarray(images), jnp.asarray(labels)
    loss_config = config.loss
    trace = {"test feature": np.asarray(nnx.jit(_eval)(model, x), np.float64)}
    optimizer = nnx.Optimizer(model, create_optimizer(config, lr), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, x, y):
        def loss_fn(model):
            out = model(x, train=True)
            total, terms = objective(out, y, loss_config)
            return total, (terms, out)
        (total, (terms, out)), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        optimizer.update(model, grads)
        return total, terms, out, grads

    before = flax_to_torch(model)
    for step in range(steps):
        total, terms, out, grads = train_step(model, optimizer, x, y)
        if step == 0:
            trace.update({"train features": out.features, "logits": out.logits,
                          **{f"loss: {n}": v for n, v in terms.items()}, "loss: total": total})
            trace.update({f"grad/{n}": g for n, g in state_to_torch(grads).items()})
            after = flax_to_torch(model)
            for bn, n in counts.items():
                old = before[f"{bn}.running_var"].astype(np.float64)
                new = after[f"{bn}.running_var"].astype(np.float64)
                batch_var = (new - _KEEP * old) / (1 - _KEEP)
                trace[f"bn mean/{bn}"] = after[f"{bn}.running_mean"]
                trace[f"bn var raw/{bn}"] = new
                trace[f"bn var/{bn}"] = (_KEEP * old
                                         + (1 - _KEEP) * batch_var * n / max(n - 1, 1))
    trace.update({f"param/{n}": v for n, v in state_to_torch(nnx.state(model, nnx.Param)).items()})
    return {k: np.asarray(v, np.float64) for k, v in trace.items()}


def patches_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                 dimension_numbers=None, feature_group_count=1, precision=None,
                 preferred_element_type=None, **kwargs) -> jax.Array:
    """``lax.conv_general_dilated``'s values for the network's convolutions (NHWC input, HWIO
    kernel, no dilation or groups) as one matmul over the kernel's k*k shifted views of the
    input. With the Eigen-convolution flag of ``dualattn.run.xla_flags`` set, XLA:CPU has no fast
    float64 convolution (a float64 forward pass runs ~25x slower than this); its float64
    matmul is fast either way. The patches are recomputed for the gradient, not stored (k*k
    times the input, in float64)."""
    if (feature_group_count != 1 or lhs_dilation not in (None, (1, 1))
            or rhs_dilation not in (None, (1, 1))):
        raise ValueError("patches_conv computes plain convolutions only")
    return _patches_conv(lhs, rhs, tuple(window_strides), tuple(map(tuple, padding)),
                         precision)


@partial(jax.checkpoint, static_argnums=(2, 3, 4))
def _patches_conv(lhs, rhs, window_strides, padding, precision):
    kh, kw, cin, cout = rhs.shape
    (sh, sw), ((top, bottom), (left, right)) = window_strides, padding
    x = jnp.pad(lhs, ((0, 0), (top, bottom), (left, right), (0, 0)))
    oh, ow = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
    views = [x[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw, :]
             for i in range(kh) for j in range(kw)]
    patches = views[0] if len(views) == 1 else jnp.concatenate(views, axis=-1)
    return jnp.dot(patches, rhs.reshape(kh * kw * cin, cout), precision=precision)


def float64_model(model: ReIDNet, model_config: dict, num_classes: int) -> ReIDNet:
    """``model``'s weights in a float64 network whose convolutions are ``patches_conv``. Call
    (and use the result) under ``jax.enable_x64(True)``."""
    settings = {k: v for k, v in model_config.items() if k != "cpu_schedule"}
    settings.update(dtype="float64", param_dtype="float64", conv_general_dilated=patches_conv)
    wide = ReIDNet(num_classes, **settings, rngs=nnx.Rngs(0))
    nnx.update(wide, jax.tree.map(lambda a: jnp.asarray(np.asarray(a, np.float64)),
                                  nnx.state(model)))
    return wide


def reference_traces(model: ReIDNet, twin, config, images, labels, *, steps: int, lr: float,
                     counts: dict[str, int]):
    """``(ours, torch's)`` traces in float64 on the CPU: the ground truth, computed twice."""
    num_classes = model.classifier.kernel.shape[-1]
    with jax.enable_x64(True), jax.default_device(jax.devices("cpu")[0]):
        wide = float64_model(model, config.model.to_dict(), num_classes)
        ours = jax_trace(wide, config, images, labels, steps=steps, lr=lr, counts=counts)
    theirs, _ = torch_trace(twin, config, images, labels, steps=steps, lr=lr,
                            dtype=torch.float64, device="cpu")
    return ours, theirs
