"""DukeMTMC-reID with the paper's settings.

    python -m dualattn.train --config configs/duke.py --workdir runs/duke \
        --config.dataset.root=/data/DukeMTMC-reID \\
        --config.pretrained=/data/resnet50-0676ba61.pth
"""

from configs import common


def get_config():
    c = common.get_config()
    c.dataset.name = "dukemtmc_reid"
    c.dataset.root = "data/DukeMTMC-reID"
    return c
