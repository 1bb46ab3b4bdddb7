"""The data-parallel layout every entry point uses: one ``data`` axis over all devices."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


def data_parallel_shardings(devices=None) -> tuple[NamedSharding, NamedSharding]:
    """(batch sharded over every device of every process, replicated) on a 1-D ``data`` mesh;
    over ``devices`` instead when given (``dualattn.run.aot``: a target's devices, not here).

    Auto axes: XLA propagates the batch sharding through the step, so BatchNorm statistics and
    triplet mining are computed over the global batch.
    """
    auto = (jax.sharding.AxisType.Auto,)
    if devices is None:
        mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=auto)
    else:
        mesh = Mesh(np.array(devices), ("data",), axis_types=auto)
    return NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
