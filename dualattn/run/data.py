"""A run's dataset: prepared once (the synthetic one generated first if asked), its splits
opened, the training sampler built and the test identities read and checked."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from data_pipeline import synthetic
from data_pipeline.datasets import (
    DatasetLayoutError,
    data_sources,
    fingerprint,
    prepare,
    prepared_source,
    read_columns,
)
from data_pipeline.sampler import PKSampler, make_sampler
from dualattn.errors import ConfigError


@dataclasses.dataclass
class Data:
    sources: dict[str, Any]
    sampler: PKSampler  # or its subclass IdentitySampler (config.input.sampler)
    num_classes: int
    # "train"/"query"/"gallery" -> (pids, camids), read once at load
    ids: dict[str, tuple[np.ndarray, np.ndarray]]
    # The fingerprint of the folder the prepared dataset came from (path, file count, size,
    # digest): what a run's checkpoints record, so that it is never resumed on other data.
    source: dict


def refuse_stray_generation(ds: ml_collections.ConfigDict) -> None:
    """A synthetic config generates its dataset where ``dataset.root`` points if nothing is
    there. When ``dataset.data_dir`` already holds one prepared from another folder, the root
    is most likely misspelt: say so rather than generate a second dataset beside the first."""
    source = prepared_source(ds.name, ds.data_dir)
    root = str(Path(ds.root).expanduser().absolute())
    if source is not None and source["root"] != root:
        raise DatasetLayoutError(
            f"dataset.root {root} does not exist, and {ds.data_dir} holds a dataset prepared "
            f"from {source['root']}; fix dataset.root, or set dataset.data_dir to a new "
            "folder to generate another synthetic dataset")


def check_test_split(ids: dict[str, tuple[np.ndarray, np.ndarray]], root: str) -> int:
    """How many queries have a valid match (an image of their identity in the gallery from
    another camera); none is an error, since nothing could be scored."""
    (q_pids, q_cams), (g_pids, g_cams) = ids["query"], ids["gallery"]
    by_id: dict[int, set] = {}
    for pid, cam in zip(g_pids.tolist(), g_cams.tolist(), strict=True):
        by_id.setdefault(pid, set()).add(cam)
    valid = sum(bool(by_id.get(pid, set()) - {cam})
                for pid, cam in zip(q_pids.tolist(), q_cams.tolist(), strict=True))
    if not valid:
        raise ConfigError(f"none of the {len(q_pids)} query images of {root} has a valid "
                          "match (an image of its identity in the gallery from another "
                          "camera), so nothing could be scored; check dataset.root and the "
                          "query/gallery folders")
    return valid


def load_data(config: ml_collections.ConfigDict) -> Data:
    """Prepare the dataset once (process 0; the others wait), open its splits and check that
    its test split can be scored."""
    ds = config.dataset
    builder = None
    if jax.process_index() == 0:
        if ds.synthetic and not Path(ds.root).exists():
            refuse_stray_generation(ds)
            print(f"generating the synthetic dataset in {ds.root} ...")
            tmp = Path(f"{ds.root}.incomplete")
            shutil.rmtree(tmp, ignore_errors=True)  # left by a generation that was killed
            try:
                synthetic.generate(tmp, train_ids=ds.synthetic_train_ids,
                                   test_ids=ds.synthetic_test_ids, seed=config.seed)
            except BaseException as e:
                shutil.rmtree(tmp, ignore_errors=True)  # no half-written dataset is left
                if isinstance(e, OSError):
                    raise DatasetLayoutError(
                        f"generating the synthetic dataset in {ds.root} failed "
                        f"({e.strerror or e}); fix the cause (a full disk: free space), then "
                        "run the same command again") from e
                raise
            tmp.rename(ds.root)  # a half-written dataset never sits at `root`
        builder = prepare(ds.name, ds.root, ds.data_dir, warn_counts=not ds.synthetic)
    multihost_utils.sync_global_devices("dataset prepared")
    if builder is None:  # the other processes open what process 0 prepared (and checked)
        builder = prepare(ds.name, ds.root, ds.data_dir, verbose=False)
    sources = data_sources(builder)
    labels, *train_ids = read_columns(sources["train"], "label", "pid", "camid")
    try:
        sampler = make_sampler(config.input.sampler, labels, config.input.p, config.input.k,
                               seed=config.seed)
    except ValueError as e:  # e.g. more identities per batch than the training set has
        raise ConfigError(f"{e} (dataset {ds.root})") from None
    ids = {"train": tuple(train_ids), **{split: read_columns(sources[split], "pid", "camid")
                                         for split in ("query", "gallery")}}
    check_test_split(ids, ds.root)
    return Data(sources=sources, sampler=sampler, num_classes=int(labels.max()) + 1, ids=ids,
                source=fingerprint.recorded(builder.data_dir))
