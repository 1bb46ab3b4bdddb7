"""Market-1501 with the paper's settings (see configs/common.py for every value and its source).

    python -m dualattn.train --config configs/market.py --workdir runs/market \
        --config.dataset.root=/data/Market-1501-v15.09.15 \\
        --config.pretrained=/data/resnet50-0676ba61.pth

Ablation rows of the paper: --config.model.use_se=False and/or --config.model.use_sa=False.
The paper trains 500 epochs; with BoT's x0.1 steps at 40 and 70 most of them run at 3.5e-6,
so --config.optim.epochs=120 (BoT's length) reaches nearly the same result much sooner.
"""

from configs import common


def get_config():
    return common.get_config()
