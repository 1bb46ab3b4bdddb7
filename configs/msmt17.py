"""MSMT17 (V1 or V2 folder) with the paper's settings; evaluation is heavier (82k gallery).

    python -m dualattn.train --config configs/msmt17.py --workdir runs/msmt17 \
        --config.dataset.root=/data/MSMT17_V1 \\
        --config.pretrained=/data/resnet50-0676ba61.pth
"""

from configs import common


def get_config():
    c = common.get_config()
    c.dataset.name = "msmt17"
    c.dataset.root = "data/MSMT17_V1"
    c.input.eval_batch_size = 256
    return c
