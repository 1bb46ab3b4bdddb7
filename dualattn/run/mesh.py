"""The data-parallel layout every entry point uses: one ``data`` axis over all devices."""

from __future__ import annotations

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P


def data_parallel_shardings() -> tuple[NamedSharding, NamedSharding]:
    """(batch sharded over every device of every process, replicated) on a 1-D ``data`` mesh.

    Auto axes: XLA propagates the batch sharding through the step, so BatchNorm statistics and
    triplet mining are computed over the global batch.
    """
    mesh = jax.make_mesh((jax.device_count(),), ("data",),
                         axis_types=(jax.sharding.AxisType.Auto,))
    return NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
