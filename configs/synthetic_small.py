"""The synthetic job at a quarter of its cost, for comparisons that need many runs.

    python -m benchmarks.ablations            # every switch of the recipe, 3 seeds each
    python -m dualattn.compare --train --config configs/synthetic_small.py

The synthetic config (configs/synthetic.py) at 64x32 inputs for 12 epochs (warmup 2, decays at
8 and 11), translation scaled with the image (2 px), one evaluation at the end and no
baselines, report or ranked lists. About 2 minutes a run on 2 CPU cores; what it ranks is the
recipe's parts against each other, not the 40-epoch job's final figures.
"""

from configs import synthetic


def get_config():
    c = synthetic.get_config()
    c.input.height, c.input.width = 64, 32
    c.augment.translate = 2
    c.optim.epochs = 12
    c.optim.warmup_epochs = 2
    c.optim.decay_epochs = (8, 11)
    c.eval.every_epochs = 12
    c.eval.baselines = False
    c.eval.report = False
    c.eval.ranked_list_queries = 0
    c.log_every_steps = 16
    c.checkpoint_every_epochs = 12
    return c
