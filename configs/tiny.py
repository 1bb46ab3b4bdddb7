"""A seconds-long run for tests: a few identities, 64x32 inputs, one bottleneck per stage.

    python -m dualattn.train --config configs/tiny.py --workdir /tmp/tiny \
        --config.dataset.root=/tmp/tiny_data
"""

from configs import synthetic


def get_config():
    c = synthetic.get_config()
    c.dataset.root = "data/tiny_market"
    c.dataset.data_dir = "data/tiny_tfds"
    c.dataset.synthetic_train_ids = 8
    c.dataset.synthetic_test_ids = 6
    c.input.height, c.input.width = 64, 32
    c.input.p, c.input.k = 4, 2
    c.input.eval_batch_size = 16
    c.model.stage_sizes = (1, 1, 1, 1)
    c.model.width = 8
    c.optim.epochs = 2
    c.optim.warmup_epochs = 0
    c.optim.decay_epochs = ()
    c.eval.every_epochs = 1
    c.log_every_steps = 1
    c.checkpoint_every_epochs = 1
    # The tests' config: the baselines and the report cost an evaluation and a compilation
    # each, so they are switched on only where tested.
    c.eval.baselines = False
    c.eval.report = False
    return c
