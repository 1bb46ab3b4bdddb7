"""Ours and the PyTorch twin trained side by side: one run in each framework, nothing else
different.

Both start from the same weights (ours at the config's seed, converted to the twin by
``flax_to_torch``, as ``convert`` writes them). Every step, our sampler and our augmentation
(``dualattn.training.augment``, jitted, with the trainer's random keys) make the batch once,
and both frameworks take one step on it: ours through the trainer's own step
(``dualattn.training.step.step_on_batch``), the twin through torch's ``Adam`` with L2 weight
decay and the same parameter groups (``traces.torch_param_groups``), BNNeck and loss
(``traces.torch_reid_loss``), at the rate our schedule gives that step. At each of the
trainer's evaluations, both are scored by one evaluator: the twin's weights are brought back by
``torch_to_flax``, the converter ``convert`` uses, so the test protocol (and its code) is the
same for both and the twin's eval-mode forward pass is ours (the two forward passes agree to
float32 rounding: BENCHMARKS.md, "Numerics").

Each step also records which pair batch-hard mining picked for every anchor in each framework.
Rounding makes the two runs differ from the first step; they *separate* when the two losses
differ by more than ``SEPARATION`` (relative). The usual cause is a mining flip: two
candidates at nearly the same distance, ordered one way by ours and the other by torch, after
which the two runs follow different gradients (BENCHMARKS.md's device-count note describes
the same mechanism between device counts). ``Separation`` names the first flip and how close
its two candidates were.

``reference_pair`` builds the same pair in float64 on the CPU: run beside the float32 pair on
the first steps, it tells rounding from a real difference, as ``compare`` does for one batch.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np
import torch
from flax import nnx

from data_pipeline.input_pipeline import train_dataset
from dualattn.evaluation.evaluator import ReIDEvaluator
from dualattn.interop.numerics import UNIT_ROUNDOFF, Row, relative, twin_of
from dualattn.interop.traces import (
    float64_model,
    torch_hardest_pairs,
    torch_pairwise_euclidean,
    torch_param_groups,
    torch_reid_loss,
)
from dualattn.run.data import load_data
from dualattn.run.model import InferenceModel, create_train_state
from dualattn.training.augment import augment
from dualattn.training.loop import evaluation_due
from dualattn.training.losses import hardest_pairs, pairwise_euclidean
from dualattn.training.optim import create_optimizer
from dualattn.training.step import augment_config, step_on_batch
from dualattn.weights.state_dict import flax_to_torch, torch_to_flax

# Losses closer than this (relative to ours) are the same run up to rounding: float32 rounding
# of one step's loss is ~1e-7 relative, and a thousand times that is a change a reader of the
# loss curve could see in its fourth digit.
SEPARATION = 1e-3


@dataclasses.dataclass
class StepRecord:
    """One step of both: each framework's loss and terms, and the mining picks that differ
    (anchor, "positive"/"negative", ours' index, the twin's index)."""
    step: int
    ours: dict[str, float]
    twin: dict[str, float]
    flips: list[tuple[int, str, int, int]]
    gap: float | None = None  # relative distance gap of the first flip's two candidates
    # (features, logits) of the step's forward pass, ours and the twin's
    outputs: tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None

    def difference(self) -> float:
        """``|ours - twin| / |ours|`` of the total loss."""
        return abs(self.ours["loss"] - self.twin["loss"]) / max(abs(self.ours["loss"]), 1e-30)


def _ours_step(graphdef, state, x, labels, *, config, schedule):
    state, metrics, out = step_on_batch(graphdef, state, x, labels, config=config,
                                        schedule=schedule)
    pos, neg = hardest_pairs(pairwise_euclidean(out.features), labels)
    return state, metrics, (out.features, out.logits), pos, neg


class TwinPair:
    """Our train state and the twin with its optimizer, stepped together on the same batches.

    ``graphdef``/``state`` are the trainer's named parts ``{"model", "optimizer"}``
    (``dualattn.run.model.TrainState``); the twin starts from the model's weights."""

    def __init__(self, config, graphdef, state, schedule, *, torch_device: str = "cpu",
                 torch_dtype: torch.dtype = torch.float32):
        self.config, self.graphdef, self.state, self.schedule = config, graphdef, state, schedule
        model = nnx.merge(graphdef, state)["model"]
        self.twin = twin_of(model, config.model.to_dict(), torch_device).to(dtype=torch_dtype)
        self.optimizer = torch.optim.Adam(torch_param_groups(self.twin, config,
                                                             config.optim.lr))
        self.step = 0
        self._ours = jax.jit(functools.partial(_ours_step, config=config, schedule=schedule),
                             static_argnums=0, donate_argnums=1)

    def __call__(self, x: np.ndarray, labels: np.ndarray) -> StepRecord:
        """One step of each on the augmented, normalised NHWC batch ``x``."""
        self.state, metrics, out, pos, neg = self._ours(self.graphdef, self.state, x, labels)
        ours = {k: float(v) for k, v in jax.device_get(metrics).items()}
        out = tuple(np.asarray(a) for a in out)

        p = next(self.twin.parameters())
        xt = torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))
        xt = xt.to(p.device, p.dtype)
        yt = torch.from_numpy(np.asarray(labels, np.int64)).to(p.device)
        lr = float(self.schedule(self.step))
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_factor"]
        self.twin.train()
        self.optimizer.zero_grad()
        t_feats, logits = self.twin(xt)
        total, terms = torch_reid_loss(t_feats, logits, yt, self.config.loss)
        total.backward()
        self.optimizer.step()
        with torch.no_grad():
            t_pos, t_neg = torch_hardest_pairs(torch_pairwise_euclidean(t_feats), yt)
            twin = {"loss": float(total), **{k: float(v) for k, v in terms.items()}}
        picks = {"positive": (np.asarray(pos), t_pos.cpu().numpy()),
                 "negative": (np.asarray(neg), t_neg.cpu().numpy())}
        flips = [(int(a), kind, int(o[a]), int(t[a]))
                 for kind, (o, t) in picks.items() for a in np.flatnonzero(o != t)]
        record = StepRecord(self.step + 1, ours, twin, flips, outputs=(
            out, tuple(t.detach().cpu().numpy() for t in (t_feats, logits))))
        if flips:
            record.gap = candidate_gap(out[0], flips[0])
        self.step += 1
        return record

    def ours_model(self) -> InferenceModel:
        return InferenceModel(self.step, *nnx.split(nnx.merge(self.graphdef,
                                                              self.state)["model"]))

    def twin_model(self) -> InferenceModel:
        """The twin's weights in our network, through ``torch_to_flax`` (as ``convert``)."""
        model = nnx.clone(nnx.merge(self.graphdef, self.state)["model"])
        torch_to_flax(twin_state_dict(self.twin), model)
        return InferenceModel(self.step, *nnx.split(model))

    def parameter_distance(self) -> float:
        """``|theta_ours - theta_twin| / |theta_twin|`` over every trainable parameter."""
        ours = flax_to_torch(nnx.merge(self.graphdef, self.state)["model"])
        twin = {n: p.detach().cpu().double().numpy() for n, p in self.twin.named_parameters()
                if p.requires_grad}
        diff = sum(float(np.sum((ours[n].astype(np.float64) - v) ** 2)) for n, v in twin.items())
        norm = sum(float(np.sum(v ** 2)) for v in twin.values())
        return float(np.sqrt(diff / norm))


def twin_state_dict(twin) -> dict[str, np.ndarray]:
    """The twin's state dict as NumPy float32 (BN counters as they are)."""
    return {k: (v.detach().cpu().float().numpy() if v.is_floating_point()
                else v.detach().cpu().numpy()) for k, v in twin.state_dict().items()}


def candidate_gap(features: np.ndarray, flip: tuple[int, str, int, int]) -> float:
    """How close the two candidates of a mining flip were for ours: ``|d(a, i) - d(a, j)| /
    d(a, i)`` in float64 from our features."""
    anchor, _, i, j = flip
    f = features.astype(np.float64)
    d_i, d_j = (float(np.linalg.norm(f[anchor] - f[k])) for k in (i, j))
    return abs(d_i - d_j) / max(d_i, 1e-30)


def reference_pair(config, graphdef, state, schedule) -> TwinPair:
    """The same pair in float64 on the CPU (ours under ``jax.enable_x64``: step it inside that
    context too), from the same weights: the ground truth of a few steps."""
    model = nnx.merge(graphdef, state)["model"]
    num_classes = model.classifier.kernel.shape[-1]
    with jax.enable_x64(True), jax.default_device(jax.devices("cpu")[0]):
        wide = float64_model(model, config.model.to_dict(), num_classes)
        optimizer = nnx.Optimizer(wide, create_optimizer(config, schedule), wrt=nnx.Param)
        wide_graphdef, wide_state = nnx.split({"model": wide, "optimizer": optimizer})
        return TwinPair(config, wide_graphdef, wide_state, schedule,
                        torch_dtype=torch.float64)


@dataclasses.dataclass
class Separation:
    """Where the two runs part: the first step whose losses differ by more than
    ``SEPARATION`` and the first mining flip, with the flip's detail."""
    step: int | None = None
    difference: float = 0.0
    flip: StepRecord | None = None

    def update(self, record: StepRecord) -> None:
        if self.flip is None and record.flips:
            self.flip = record
        if self.step is None and record.difference() > SEPARATION:
            self.step, self.difference = record.step, record.difference()

    def describe(self) -> str:
        flip = ""
        if self.flip is not None:
            anchor, kind, i, j = self.flip.flips[0]
            flip = (f"the first batch-hard flip is at step {self.flip.step}: anchor {anchor}'s "
                    f"hardest {kind} is image {i} for ours and {j} for the twin, two "
                    f"candidates {self.flip.gap:.1e} apart (relative distance); "
                    f"{len(self.flip.flips)} pick(s) differ in that step")
        if self.step is None:
            return ("the losses never differ by more than "
                    f"{SEPARATION:.0e} (relative)" + (f"; {flip}" if flip else ""))
        head = (f"the losses separate at step {self.step} ({self.difference:.1e} relative, "
                f"threshold {SEPARATION:.0e})")
        if self.flip is not None and self.flip.step <= self.step:
            return f"{head}; {flip}, and from there the two runs follow different gradients"
        return (f"{head}, with no mining flip before it: rounding differences grew step by "
                "step" + (f"; later {flip}" if flip else ""))


# ---------------------------------------------------------------------------------------------
# The whole run


@dataclasses.dataclass
class Evaluation:
    """Both frameworks at one of the trainer's evaluations: the mean loss of each since the
    last one, each one's rates, and how far apart their parameters are."""
    step: int
    epoch: int
    ours_loss: float
    twin_loss: float
    ours: dict[str, float]
    twin: dict[str, float]
    distance: float


@dataclasses.dataclass
class SideBySide:
    evaluations: list[Evaluation]
    separation: Separation
    reference: list[Row]  # the first steps' losses against float64
    losses: list[tuple[float, float]]  # (ours, twin) total loss of every step
    gate: list[tuple[float, float]] | None = None  # (ours, twin) alpha after every step
    # The float64 pair's own agreement, ours against the twin's (relative, worst step): the
    # truth the reference rows use does not depend on the framework.
    reference_agreement: float | None = None


def train_side_by_side(config, *, torch_device: str = "cpu", reference_steps: int = 0,
                       on_evaluation=lambda e: None, on_reference=lambda r: None) -> SideBySide:
    """Train ours and the twin on ``config`` for ``optim.epochs`` (one device, one process),
    each batch made once and stepped on by both; the first ``reference_steps`` steps also run
    in float64 (``reference_pair``). ``on_evaluation`` and ``on_reference`` see each row as it
    comes."""
    data = load_data(config)
    spe = data.sampler.steps_per_epoch
    total = config.optim.epochs * spe
    train = create_train_state(config, data.num_classes, spe)
    reference = (reference_pair(config, train.graphdef, train.state, train.schedule)
                 if reference_steps else None)
    pair = TwinPair(config, train.graphdef, train.state, train.schedule,
                    torch_device=torch_device)
    evaluator = ReIDEvaluator(config, data)
    make_batch = jax.jit(functools.partial(augment, cfg=augment_config(config)))
    base_rng = jax.random.key(config.seed)
    separation, evaluations, rows, losses, gate, agreement = Separation(), [], [], [], [], []
    batches = train_dataset(data.sources["train"], data.sampler,
                            image_size=(config.input.height, config.input.width),
                            start_step=0, num_steps=total, process_index=0, process_count=1,
                            num_workers=config.input.num_workers)
    for step, batch in enumerate(batches):
        x = np.asarray(make_batch(jax.random.fold_in(base_rng, step), batch["image"]))
        record = pair(x, batch["label"])
        separation.update(record)
        losses.append((record.ours["loss"], record.twin["loss"]))
        if "alpha" in record.ours:
            gate.append((record.ours["alpha"], pair.twin.attention.alpha.item()))
        if step < reference_steps:
            with jax.enable_x64(True), jax.default_device(jax.devices("cpu")[0]):
                truth = reference(x.astype(np.float64), batch["label"])
            agreement.append(abs(truth.ours["loss"] - truth.twin["loss"]) / abs(truth.twin["loss"]))
            rows.append(reference_row(record, truth))
            on_reference(rows[-1])
        if evaluation_due(config, step + 1, spe):
            ours, twin = (evaluator(m).rates() for m in (pair.ours_model(), pair.twin_model()))
            since = evaluations[-1].step if evaluations else 0
            mean = np.mean(losses[since:], axis=0)
            evaluations.append(Evaluation(step + 1, (step + 1) // spe, float(mean[0]),
                                          float(mean[1]), ours, twin,
                                          pair.parameter_distance()))
            on_evaluation(evaluations[-1])
    return SideBySide(evaluations, separation, rows, losses, gate or None,
                      max(agreement) if agreement else None)


def reference_row(record: StepRecord, truth: StepRecord) -> Row:
    """One step's total loss, ours and the twin's, each against the float64 pair's
    (``truth``: ours in float64; ``SideBySide.reference_agreement`` says how closely the
    twin's float64 agrees with it). As in
    ``compare``, a loss is judged against the error its inputs carry (the twin's features and
    logits against float64's): a scalar can land near the truth by chance."""
    o, t, f64 = record.ours["loss"], record.twin["loss"], truth.ours["loss"]
    note = ("" if not (record.flips or truth.flips)
            else f"mining picks differ: float32 {len(record.flips)}, float64 "
                 f"{len(truth.flips)}")
    row = Row(f"step {record.step} loss", abs(o - t) / abs(t), abs(o - t),
              abs(o - f64) / abs(f64), abs(t - f64) / abs(f64), note=note)
    row.floor = max(relative(twin, wide) for twin, wide in zip(record.outputs[1],
                                                                truth.outputs[0], strict=True))
    return row


def format_reference(rows: list[Row]) -> str:
    """The first steps' losses against float64, as ``compare`` prints its rows."""
    roundoff = UNIT_ROUNDOFF["float32"]
    head = f"  {'total loss (relative difference)':<34}{'ours-f64':>11}{'torch-f64':>11}" \
           f"{'ours-torch':>11}  verdict"
    return "\n".join([head, *(f"  {r.name:<34}{r.ours_ref:>11.1e}{r.torch_ref:>11.1e}"
                              f"{r.ours_torch:>11.1e}  {r.verdict(roundoff)}"
                              + (f"  {r.note}" if r.note else "") for r in rows)])


EVALUATION_HEAD = (f"{'step':>6}{'epoch':>6}  {'loss ours/twin':>15}  {'R1 ours/twin':>13}  "
                   f"{'mAP ours/twin':>13}  {'mINP ours/twin':>14}  {'param dist':>10}")


def format_evaluation(e: Evaluation) -> str:
    def pair(key):
        return f"{100 * e.ours[key]:.1f}/{100 * e.twin[key]:.1f}"
    return (f"{e.step:>6}{e.epoch:>6}  {e.ours_loss:>7.4f}/{e.twin_loss:<7.4f}  "
            f"{pair('rank1'):>13}  {pair('mAP'):>13}  {pair('mINP'):>14}  {e.distance:>10.1e}")


def seed_verdict(twin_map: float, ours_maps: list[float]) -> str:
    """The twin's final mAP against the spread of ours over seeds (the first of which ran
    beside the twin): within the seed noise when it lies within two sample standard deviations
    of ours' mean."""
    mean, sd = float(np.mean(ours_maps)), float(np.std(ours_maps, ddof=1))
    d = twin_map - ours_maps[0]
    within = abs(twin_map - mean) <= 2 * sd
    return (f"final mAP: twin {100 * twin_map:.2f} %, ours {100 * ours_maps[0]:.2f} % on the "
            f"same seed (twin - ours {100 * d:+.2f} points); ours over {len(ours_maps)} seeds "
            f"{100 * mean:.2f} ± {100 * sd:.2f} % (sample sd; "
            f"{100 * min(ours_maps):.2f} to {100 * max(ours_maps):.2f}): the twin is "
            + ("within" if within else "OUTSIDE") + " two seed standard deviations of ours")
