"""A run's programs compiled ahead of time for devices that are not here, and what the compiled
programs say: memory per device, FLOPs, and the collectives the compiler inserted.

The train step is the trainer's own (``dualattn.training.step``) and the evaluation forward
the evaluator's (``dualattn.evaluation.evaluator.protocol_features``), lowered over a
``data`` mesh of the target's devices with the shardings the trainer uses: the batch split
over the devices, the state replicated. These are compile-time facts, never speeds.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import time

import jax
import jax.numpy as jnp
from flax import nnx

from dualattn.evaluation.evaluator import protocol_features
from dualattn.models.reid import count_params
from dualattn.run.mesh import data_parallel_shardings
from dualattn.run.model import create_train_state
from dualattn.training.step import make_train_step

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT\s+)?%[\w.-]+\s*=\s*(?P<shape>.*?)\s+(?P<op>" + "|".join(COLLECTIVES)
    + r")(?P<phase>-start|-done)?\(")
_ARRAY = re.compile(r"\b(?P<dtype>pred|[a-z]+\d+)\[(?P<dims>[\d,]*)\]")


@dataclasses.dataclass
class Collective:
    """One collective of the compiled program: its kind and result arrays' dtypes and bytes."""
    op: str
    arrays: list[tuple[str, int]]  # (dtype, bytes) of each result array
    op_name: str  # JAX's name of the operation it came from, where the compiler kept it

    @property
    def bytes(self) -> int:
        return sum(b for _, b in self.arrays)


def _itemsize(dtype: str) -> int:
    if dtype == "pred":
        return 1
    return max(1, int(re.sub(r"\D", "", dtype)) // 8)


def collectives(hlo_text: str) -> list[Collective]:
    """The collectives of an optimised HLO module's text, each counted once (the ``-done`` of
    an asynchronous pair carries its result; the ``-start`` is skipped)."""
    found = []
    for line in hlo_text.splitlines():
        m = _INSTRUCTION.match(line)
        if m is None or m.group("phase") == "-start":
            continue
        arrays = [(a.group("dtype"),
                   math.prod(int(d) for d in a.group("dims").split(",") if d)
                   * _itemsize(a.group("dtype")))
                  for a in _ARRAY.finditer(m.group("shape"))]
        name = re.search(r'op_name="([^"]*)"', line)
        found.append(Collective(m.group("op"), arrays, name.group(1) if name else ""))
    return found


def jaxpr_flops(jaxpr) -> float:
    """FLOPs of the matmuls and convolutions of a (closed) jaxpr, nested ones included, a
    multiply-add counted as two: what XLA's cost analysis counts for these networks, less the
    elementwise work (a few per cent), for compilers that do not offer the analysis."""
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in contract)
        elif name == "conv_general_dilated":
            rhs = eqn.invars[1].aval.shape
            dn = eqn.params["dimension_numbers"]
            window = math.prod(rhs[d] for d in dn.rhs_spec[2:]) * rhs[dn.rhs_spec[1]]
            total += 2 * math.prod(eqn.outvars[0].aval.shape) * window
        for sub in _sub_jaxprs(eqn.params):
            total += jaxpr_flops(sub)
    return total


def _sub_jaxprs(params):
    """The jaxprs nested in an equation's parameters (jit, custom derivatives, control
    flow)."""
    for value in params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            inner = getattr(item, "jaxpr", item)
            if hasattr(inner, "eqns"):
                yield inner


@dataclasses.dataclass
class Compiled:
    """What one compiled program says, per device."""
    program: str  # "train step" or "evaluation forward"
    devices: int
    batch: int  # global
    peak_bytes: int
    flops: float  # per device, per call
    flops_source: str  # "compiler" or "jaxpr"
    collectives: list[Collective]
    seconds: float  # to lower and compile


def _peak(memory) -> int:
    """Bytes the program holds at once on a device: its arguments, outputs not aliased onto
    them (the donated state) and its temporaries."""
    return int(memory.argument_size_in_bytes + memory.output_size_in_bytes
               - memory.alias_size_in_bytes + memory.temp_size_in_bytes)


def _flops(compiled, fn, args, devices: int) -> tuple[float, str]:
    """The compiler's FLOP count where it offers one (XLA:TPU), else the jaxpr's."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - an analysis the compiler does not offer
        cost = None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    if cost and cost.get("flops", 0) > 0:
        return float(cost["flops"]), "compiler"
    jaxpr = jax.make_jaxpr(fn, static_argnums=(0,))(*args).jaxpr
    return jaxpr_flops(jaxpr) / devices, "jaxpr"


def _abstract(tree, sharding):
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                        tree)


def compile_train_step(config, devices: list, batch: int, train) -> Compiled:
    """The trainer's step for a global ``batch`` over ``devices``, compiled; ``train``: the
    run's ``TrainState`` (``state_for``)."""
    data, replicated = data_parallel_shardings(devices)
    step = make_train_step(config, train.schedule)
    key = jax.random.key(0)
    args = (train.graphdef, _abstract(train.state, replicated),
            jax.ShapeDtypeStruct((batch, config.input.height, config.input.width, 3), jnp.uint8,
                                 sharding=data),
            jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=data),
            jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=replicated))
    return _compile("train step", step, args, len(devices), batch)


def compile_eval_forward(config, devices: list, batch: int, train) -> Compiled:
    """The evaluator's test-feature pass for a global ``batch`` over ``devices``, compiled."""
    data, replicated = data_parallel_shardings(devices)
    forward = jax.jit(functools.partial(
        protocol_features, flip=config.eval.flip_test,
        normalize_features=config.eval.normalize_features), static_argnums=0)
    args = (train.model_graphdef, _abstract(train.state["model"], replicated),
            jax.ShapeDtypeStruct((batch, config.input.height, config.input.width, 3), jnp.uint8,
                                 sharding=data))
    return _compile("evaluation forward", forward, args, len(devices), batch)


def state_for(config, num_classes: int):
    """``(config with plain convolutions, its TrainState)`` for compiling elsewhere."""
    config = _plain(config)
    return config, create_train_state(config, num_classes, steps_per_epoch=100,
                                      pretrained=False)


def _plain(config):
    """The config with plain Flax convolutions: ``model.cpu_schedule`` "auto" decides by the
    host's backend, the CPU here, and must not put the XLA:CPU convolution into a GPU or TPU
    program."""
    config = config.copy_and_resolve_references()
    config.model.cpu_schedule = "off"
    return config


def _compile(program: str, fn, args, devices: int, batch: int) -> Compiled:
    start = time.perf_counter()
    lowered = fn.lower(*args)
    compiled = lowered.compile()
    seconds = time.perf_counter() - start
    flops, source = _flops(compiled, fn, args, devices)
    return Compiled(program, devices, batch, _peak(compiled.memory_analysis()), flops, source,
                    collectives(compiled.as_text()), seconds)


# ---------------------------------------------------------------------------------------------
# A plan: the train step and the evaluation forward of a run on a target


# The share of a GPU's memory JAX's allocator takes at start (XLA_PYTHON_CLIENT_MEM_FRACTION's
# default): what a program can use there. A TPU's HBM is counted whole.
GPU_POOL = 0.75
# The smaller per-device batch the memory slope is measured at (and twice it).
FIT_BATCH = 32


@dataclasses.dataclass
class Plan:
    """One target, dtype, device count and batch: what the compilers say."""
    target: str
    name: str
    dtype: str
    devices: int
    train: Compiled
    evaluate: Compiled
    memory_bytes: int  # per device, usable
    peak_flops: float  # per device, dense, for the dtype
    gradient_bytes: int  # every trainable parameter's gradient, in f32
    slope_bytes: float | None = None  # per image per device, from two more compiles
    fixed_bytes: float | None = None  # what the memory would be at batch 0, from the same

    @property
    def batch_per_device(self) -> int:
        return self.train.batch // self.devices

    @property
    def fits(self) -> bool:
        return self.train.peak_bytes <= self.memory_bytes

    @property
    def largest_batch_per_device(self) -> int | None:
        """From the memory slope: the fixed part plus the slope times the batch must fit."""
        if not self.slope_bytes or self.slope_bytes <= 0 or self.fixed_bytes is None:
            return None
        return max(0, int((self.memory_bytes - self.fixed_bytes) // self.slope_bytes))

    @property
    def images_per_s_bound(self) -> float:
        """Images per second per device at 100 % of the dense peak: a bound, not a
        prediction (memory traffic, the input pipeline and collectives all cost more)."""
        return self.peak_flops / (self.train.flops / self.batch_per_device)

    def collective_summary(self) -> dict:
        """Counts and bytes per kind and dtype, and the gradients' share of the f32
        all-reduces."""
        kinds: dict[str, dict] = {}
        for c in self.train.collectives:
            entry = kinds.setdefault(c.op, {"count": 0, "bytes": {}})
            entry["count"] += 1
            for dtype, size in c.arrays:
                entry["bytes"][dtype] = entry["bytes"].get(dtype, 0) + size
        reduced = kinds.get("all-reduce", {"bytes": {}})["bytes"]
        gradients = self.gradient_bytes if self.devices > 1 else 0  # one device sums nothing
        return {"by_kind": kinds, "gradients_f32_bytes": gradients,
                "rest_of_f32_all_reduce_bytes": reduced.get("f32", 0) - gradients,
                "all_reduce_dtypes": sorted(reduced)}

    def as_dict(self) -> dict:
        out = {k: getattr(self, k) for k in ("target", "name", "dtype", "devices",
                                             "memory_bytes", "peak_flops", "gradient_bytes",
                                             "slope_bytes", "fixed_bytes")}
        out.update(batch=self.train.batch, batch_per_device=self.batch_per_device,
                   fits=self.fits, largest_batch_per_device=self.largest_batch_per_device,
                   images_per_s_bound=self.images_per_s_bound,
                   collectives=self.collective_summary())
        for part in (self.train, self.evaluate):
            out[part.program.replace(" ", "_")] = {
                "peak_bytes": part.peak_bytes, "flops_per_device": part.flops,
                "flops_per_image": part.flops * self.devices / part.batch,
                "flops_source": part.flops_source, "compile_s": part.seconds,
                "collectives": len(part.collectives)}
        return out


def plan(config, target, devices: int, batch: int, num_classes: int,
         fit: bool = True) -> Plan:
    """Compile the run's train step and evaluation forward for ``devices`` of ``target``;
    with ``fit``, the train step again at ``FIT_BATCH`` and twice it per device (or the batch
    and twice it, if larger), for the memory's slope and fixed part."""
    devs = target.devices(devices)
    config, state = state_for(config, num_classes)
    train = compile_train_step(config, devs, batch, state)
    evaluate = compile_eval_forward(config, devs, config.input.eval_batch_size, state)
    slope = fixed = None
    if fit:
        # Memory is linear in the batch only past the smallest batches (below them tiling
        # pads the batch: a TPU step at 8 per device took less than at 4), so the slope comes
        # from FIT_BATCH and twice it per device.
        low = max(batch // devices, FIT_BATCH)
        at_low = train if low == batch // devices else compile_train_step(
            config, devs, low * devices, state)
        at_high = compile_train_step(config, devs, 2 * low * devices, state)
        slope = (at_high.peak_bytes - at_low.peak_bytes) / low
        fixed = at_low.peak_bytes - slope * low
    usable = target.memory_bytes * (GPU_POOL if target.platform == "cuda" else 1.0)
    gradient_bytes = 4 * count_params(nnx.merge(state.graphdef, state.state)["model"])
    return Plan(target.key, target.name, config.model.dtype, devices, train, evaluate,
                int(usable), target.peak_flops[config.model.dtype], gradient_bytes, slope,
                fixed)
