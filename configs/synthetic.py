"""The main job on a fresh machine: the built-in synthetic dataset, CPU-sized.

    python -m dualattn.train --config configs/synthetic.py --workdir runs/synthetic

Generates the procedural dataset (Market-1501 layout) into data/synthetic_market on first use
and reads it through the real Market builder and pipeline. Same network family and losses as
the paper, shrunk to run on 2 CPU cores: 128x64 inputs, a ResNet with two bottlenecks per stage
and width 16 (+SE +SA +BNNeck), no ImageNet weights. Under 10 minutes on 2 CPU cores.
"""

from configs import common


def get_config():
    c = common.get_config()
    c.dataset.root = "data/synthetic_market"
    c.dataset.data_dir = "data/synthetic_tfds"
    c.dataset.synthetic = True
    c.input.height, c.input.width = 128, 64
    c.input.num_workers = 0  # 2 cores: decoding inline beats worker start-up
    c.input.eval_batch_size = 64
    c.augment.translate = 4
    c.model.stage_sizes = (2, 2, 2, 2)
    c.model.width = 16
    c.optim.epochs = 40
    c.optim.lr = 1e-3
    c.optim.warmup_epochs = 3
    c.optim.decay_epochs = (25, 35)
    c.eval.every_epochs = 10
    c.eval.baselines = True  # the demo ends by saying how far training took it
    c.log_every_steps = 20
    c.checkpoint_every_epochs = 5
    return c
