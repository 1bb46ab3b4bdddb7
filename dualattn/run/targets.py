"""The accelerators a run can be planned for, as their compilers see them without the device.

libtpu and the jax-cuda12 plugin compile for a TPU topology or a GPU target description on a
machine with neither (``jax.experimental.topologies``): set ``JAX_PLATFORMS=cpu`` (and
``TPU_SKIP_MDS_QUERY=1``) before JAX starts, and ``devices`` gives the target's devices to
build a mesh over. Each target also carries the facts a plan is read against: memory per
device and the dense peak FLOP/s per compute dtype (vendor figures, without sparsity).

A GPU's description is written here from its published facts, keeping the fields that the
compiler of jaxlib 0.10 parses (``GpuTargetConfigProto``'s ``gpu_device_info``).
"""

from __future__ import annotations

import dataclasses
import math

from dualattn.errors import UserError

GIB = 2**30


class TargetError(UserError, RuntimeError):
    """A target that cannot be compiled for here: the message names the missing piece."""


@dataclasses.dataclass(frozen=True)
class GPU:
    """What the compiler needs to know of an NVIDIA GPU."""
    name: str
    compute_capability: tuple[int, int]
    cores: int  # streaming multiprocessors
    fpus_per_core: int
    clock_ghz: float
    memory_bytes: int
    memory_bandwidth: int  # bytes/s
    l2_bytes: int
    shared_memory_per_core: int
    shared_memory_per_block_optin: int

    def target_config(self) -> str:
        major, minor = self.compute_capability
        return "\n".join([
            "gpu_device_info {",
            "  threads_per_block_limit: 1024", "  threads_per_warp: 32",
            "  shared_memory_per_block: 49152",
            f"  shared_memory_per_core: {self.shared_memory_per_core}",
            "  threads_per_core_limit: 2048", f"  core_count: {self.cores}",
            f"  fpus_per_core: {self.fpus_per_core}",
            "  block_dim_limit_x: 2147483647", "  block_dim_limit_y: 65535",
            "  block_dim_limit_z: 65535", f"  memory_bandwidth: {self.memory_bandwidth}",
            f"  l2_cache_size: {self.l2_bytes}", f"  clock_rate_ghz: {self.clock_ghz}",
            f"  device_memory_size: {self.memory_bytes}",
            f"  shared_memory_per_block_optin: {self.shared_memory_per_block_optin}",
            f"  cuda_compute_capability {{ major: {major} minor: {minor} }}",
            "  registers_per_core_limit: 65536", "  registers_per_block_limit: 65536",
            "}", 'platform_name: "CUDA"', "dnn_version_info { major: 9 minor: 10 patch: 0 }",
            f'device_description_str: "{self.name}"', ""])


@dataclasses.dataclass(frozen=True)
class Target:
    """A named accelerator: how to get its devices and what its plan is read against."""
    key: str
    name: str
    platform: str  # "cuda" or "tpu"
    memory_bytes: int  # per device
    peak_flops: dict[str, float]  # compute dtype -> dense peak FLOP/s per device
    gpu: GPU | None = None
    tpu_generation: str = ""  # "v5e", "v6e", "v4"

    def topology(self, devices: int) -> dict:
        """``get_topology_desc`` arguments for ``devices`` devices (8 per GPU host)."""
        if self.platform == "cuda":
            hosts, per_host = (1, devices) if devices <= 8 else (math.ceil(devices / 8), 8)
            if hosts * per_host != devices:
                raise TargetError(f"--devices {devices}: GPU hosts hold 8 GPUs each; use up to 8 "
                                  "or a multiple of 8")
            return {"platform": "cuda", "target_config": self.gpu.target_config(),
                    "topology": f"1x{hosts}x{per_host}"}
        shape = TPU_SHAPES[self.tpu_generation].get(devices)
        if shape is None:
            known = sorted(TPU_SHAPES[self.tpu_generation])
            raise TargetError(f"--devices {devices}: {self.name} slices of {known} chips are "
                              "known here")
        kwargs = {"platform": "tpu", "topology_name": f"{self.tpu_generation}:{shape}"}
        if devices == 1:
            kwargs["chips_per_host_bounds"] = (1, 1, 1)
        if self.tpu_generation == "v4":
            kwargs["chip_config_name"] = "megacore"
        return kwargs

    def devices(self, count: int) -> list:
        """The target's ``count`` devices, for a mesh (no device needs to be present)."""
        from jax.experimental import topologies

        try:
            return list(topologies.get_topology_desc(**self.topology(count)).devices)
        except (RuntimeError, ValueError) as e:
            extra = "tpu" if self.platform == "tpu" else "cuda12"
            reason = " ".join(str(e).split())[:160]
            raise TargetError(
                f"the {self.name} compiler is not available here ({reason}); "
                f'pip install "jax[{extra}]==$(python -c "import jax; print(jax.__version__)")" '
                "(it compiles without the device; or into a folder of its own, named by "
                "DUALATTN_COMPILERS), then run the same command") from None


TPU_SHAPES = {"v5e": {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 64: "8x8", 256: "16x16"},
              "v6e": {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 64: "8x8", 256: "16x16"},
              "v4": {1: "1x1x1", 8: "2x2x2", 16: "2x2x4", 64: "4x4x4"}}

# Dense peaks; f32 on GPUs is TF32 on the tensor cores, JAX's default for f32 matmuls and
# convolutions there. TPUs multiply f32 at their bf16 rate at JAX's default precision.
TARGETS = {t.key: t for t in (
    Target("h100", "NVIDIA H100 SXM 80GB", "cuda", 84942979072,
           {"bfloat16": 989.4e12, "float32": 494.7e12},
           gpu=GPU("NVIDIA H100 80GB HBM3", (9, 0), 132, 128, 1.98, 84942979072,
                   3352320000000, 52428800, 233472, 232448)),
    Target("h200", "NVIDIA H200 141GB", "cuda", 151397597184,
           {"bfloat16": 989.4e12, "float32": 494.7e12},
           gpu=GPU("NVIDIA H200 141GB HBM3e", (9, 0), 132, 128, 1.98, 151397597184,
                   4800000000000, 52428800, 233472, 232448)),
    Target("a100", "NVIDIA A100 SXM 80GB", "cuda", 85100068864,
           {"bfloat16": 312e12, "float32": 156e12},
           gpu=GPU("NVIDIA A100-SXM4-80GB", (8, 0), 108, 64, 1.41, 85100068864,
                   2039040000000, 41943040, 167936, 166912)),
    Target("v5e", "TPU v5e", "tpu", 16 * GIB, {"bfloat16": 197e12, "float32": 197e12},
           tpu_generation="v5e"),
    Target("v6e", "TPU v6e", "tpu", 32 * GIB, {"bfloat16": 918e12, "float32": 918e12},
           tpu_generation="v6e"),
    Target("v4", "TPU v4", "tpu", 32 * GIB, {"bfloat16": 275e12, "float32": 275e12},
           tpu_generation="v4"),
)}


def target(key: str) -> Target:
    if key not in TARGETS:
        raise TargetError(f"--target {key!r}: one of {', '.join(TARGETS)}")
    return TARGETS[key]
