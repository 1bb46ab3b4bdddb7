"""Train steps of the tiny config on every device of every process; process 0 saves the result.

    python -m tests.device_count_worker DATA_ROOT TFDS_DIR OUT.npz STEPS [DTYPE]

Run by tests/test_reliability.py with fake CPU devices (XLA_FLAGS) and, for several
processes, JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID. Uses the trainer's
own pieces: its mesh, its per-process share of every global batch, its jitted step.
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np

from configs import tiny
from data_pipeline.input_pipeline import train_dataset
from dualattn.cli import initialize_distributed
from dualattn.run import xla_flags
from dualattn.run.data import load_data
from dualattn.run.mesh import data_parallel_shardings
from dualattn.run.model import create_train_state
from dualattn.training.step import make_train_step


def main(root: str, tfds_dir: str, out: str, steps: int, dtype: str = "float32") -> None:
    xla_flags.prefer_cpu_flags()  # as the commands do
    initialize_distributed()
    c = tiny.get_config()
    c.dataset.root, c.dataset.data_dir = root, tfds_dir
    if dtype == "float64":  # the ground truth: every parameter, activation and sum in float64
        jax.config.update("jax_enable_x64", True)
    data = load_data(c)
    batch_sharding, replicated = data_parallel_shardings()
    train = create_train_state(c, data.num_classes, data.sampler.steps_per_epoch)
    if dtype != "float32":  # the same initial weights, computed in ``dtype``
        c.model.dtype = dtype
        if dtype == "float64":
            c.model.param_dtype, c.model.cpu_schedule = "float64", "off"
        initial = train.state
        train = create_train_state(c, data.num_classes, data.sampler.steps_per_epoch)
        train = train._replace(state=jax.tree.map(lambda a, b: jnp.asarray(b, a.dtype),
                                                  train.state, initial))
    state = jax.device_put(train.state, replicated)
    step_fn = make_train_step(c, train.schedule)
    batches = train_dataset(data.sources["train"], data.sampler, image_size=(64, 32),
                            start_step=0, num_steps=steps, process_index=jax.process_index(),
                            process_count=jax.process_count())
    losses = []
    for step, batch in enumerate(batches):
        images = jax.make_array_from_process_local_data(batch_sharding, batch["image"])
        labels = jax.make_array_from_process_local_data(batch_sharding, batch["label"])
        state, metrics = step_fn(train.graphdef, state, images, labels,
                                 jax.random.fold_in(jax.random.key(c.seed), step))
        losses.append(float(metrics["loss"]))
    flat = jax.tree_util.tree_flatten_with_path(state)[0]
    # The state is replicated: every process holds all of it on each of its devices.
    arrays = {jax.tree_util.keystr(p): np.asarray(x.addressable_data(0)) for p, x in flat}
    if jax.process_index() == 0:
        np.savez(out, losses=np.asarray(losses), devices=jax.device_count(), **arrays)


if __name__ == "__main__":
    main(*sys.argv[1:4], int(sys.argv[4]), *sys.argv[5:])
