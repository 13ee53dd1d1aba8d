"""The validation split: held out of the training set, stratified by class, the same for the teacher and
every student of an experiment.

Every choice kdtemp makes (the best cell of a table, a run's best epoch, the run to export) is made on
this split, so the test accuracy it then reports was not used to choose. The split depends only on the
labels, `data.val_fraction` and `data.split_seed`: students' seeds never move it.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from kdtemp.config.schema import DataConfig
from kdtemp.data.dataset import Dataset
from kdtemp.errors import DataError


def stratified_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, validation indices), each sorted: round(fraction * N) samples held out, shared
    among the classes in proportion to their size (largest remainders first), drawn without replacement
    by a generator seeded with `seed`; every class keeps at least one sample to train on."""
    label_array = labels.cpu().numpy()
    classes, sizes = np.unique(label_array, return_counts=True)
    counts = class_counts(sizes, fraction)
    generator = np.random.default_rng(seed)
    held_out = [
        generator.permutation(np.flatnonzero(label_array == label))[:count]
        for label, count in zip(classes, counts, strict=True)
    ]
    val = np.sort(np.concatenate(held_out)) if held_out else np.empty(0, dtype=np.int64)
    keep = np.ones(len(label_array), dtype=bool)
    keep[val] = False
    return torch.from_numpy(np.flatnonzero(keep)), torch.from_numpy(val.astype(np.int64))


def class_counts(sizes: np.ndarray, fraction: float) -> np.ndarray:
    """How many of each class to hold out: floor(fraction * n_c), then one more for the classes with the
    largest remainders (the first on a tie) until round(fraction * N) are; at most n_c - 1 each."""
    wanted = fraction * sizes
    counts = np.floor(wanted).astype(np.int64)
    short = int(np.floor(fraction * sizes.sum() + 0.5)) - int(counts.sum())
    order = np.argsort(-(wanted - counts), kind="stable")
    counts[order[: max(short, 0)]] += 1
    return np.minimum(counts, sizes - 1)


def with_validation(data: Dataset, config: DataConfig) -> Dataset:
    """`data` with its validation split: the dataset's own when it has one, else `val_fraction` of the
    training set (stratified), else none (val_fraction 0: the test set stands in)."""
    if data.val_x is not None:
        return replace(data, validation=data.validation or "the dataset's own validation split")
    if config.val_fraction == 0:
        return replace(data, validation="none (data.val_fraction 0): choices are made on the test set")
    train, val, validation = held_out(data.train_y, config, f"{data.name}'s")
    return replace(
        data,
        train_x=data.train_x[train],
        train_y=data.train_y[train],
        val_x=data.train_x[val],
        val_y=data.train_y[val],
        validation=validation,
    )


def held_out(labels: torch.Tensor, config: DataConfig, whose: str) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(train indices, validation indices, where the split came from in words) of `stratified_split` at
    data.val_fraction > 0, refused when it holds out nothing. Loaders that must know the split before
    they finish (text: the tokenizer trains on the training rows only) call it themselves."""
    train, val = stratified_split(labels, config.val_fraction, config.split_seed)
    if len(val) == 0:
        raise DataError(
            f"data.val_fraction {config.val_fraction:g} of {whose} {len(labels)} training "
            "samples holds out none; raise data.val_fraction, or give your own validation split"
        )
    seed = config.split_seed
    return (
        train,
        val,
        f"{config.val_fraction:g} of the training set, stratified by class (data.split_seed {seed})",
    )
