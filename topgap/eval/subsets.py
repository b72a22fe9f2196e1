"""Representative, recorded subsets of a test split: the images that attacks, ROAD, sanity checks and a quick
``--max-images`` run are computed on.

Loaders return splits sorted by class, so the first N images are a few classes only (500 airplanes on CIFAR-10).
A subset is instead a seeded, class-stratified sample (:func:`stratified_indices`), drawn once per report from the
labels alone, so every model evaluated on the split sees the same images; its ids go into the report
(:func:`sample_record`), and two reports are paired only if their samples hold the same ids
(:func:`check_same_sample`).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
from torch.utils.data import Dataset, Subset

__all__ = ["stratified_indices", "dataset_ids", "dataset_labels", "base_dataset", "sample_record", "check_same_sample"]


def stratified_indices(labels: Sequence[int], n: int | None, seed: int = 0) -> list[int]:
    """A seeded, class-stratified sample of `n` indices into `labels`, in ascending order (None or n >= len: all).

    Rule: numpy's ``default_rng(seed)`` draws a random order of the images within each class and a random order of
    the classes; the sample is the first n images dealt round-robin (one per class per round, in that class order,
    each class in its own random order). So per-class counts differ by at most one, except that a class with fewer
    images than its share is taken whole; and the sample for a smaller n is a subset of the one for a larger n at
    the same seed (ROAD's 10 images lie inside the attacks' 50). It depends only on the labels and the seed
    (scikit-learn's StratifiedShuffleSplit is not nested, hence numpy). numpy does not promise the same stream
    across versions (NEP 19): the ids stored in the report, not the seed, are the record.
    """
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if n is not None and n < 0:
        raise ValueError(f"sample size must be >= 0 or None for all images (got {n})")
    if n is None or n >= len(labels):
        return list(range(len(labels)))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    order = order[np.argsort(labels[order], kind="stable")]  # grouped by class, a random order within each
    classes, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
    rank = np.empty(len(labels), np.int64)
    rank[order] = np.arange(len(labels)) - np.repeat(starts, counts)  # position within its class's order
    turn = rng.permutation(len(classes))[np.searchsorted(classes, labels)]  # its class's place in each round
    return sorted(np.lexsort((turn, rank))[:n].tolist())


def _base(dataset: Dataset) -> tuple[Dataset, list[int] | None]:
    """The dataset under any nesting of Subsets, and the indices into it (None: all of it, in order)."""
    indices = None
    while isinstance(dataset, Subset):
        inner = [int(i) for i in dataset.indices]
        indices = inner if indices is None else [inner[i] for i in indices]
        dataset = dataset.dataset
    return dataset, indices


def base_dataset(dataset: Dataset) -> Dataset:
    """The dataset under any nesting of Subsets."""
    return _base(dataset)[0]


def dataset_ids(dataset: Dataset) -> list[str]:
    """Each item's id: ImageDataset.ids (paths relative to the root, tar member names), through Subsets.

    A dataset without ``ids`` (in-memory test data) is identified by position, as str(index)."""
    base, indices = _base(dataset)
    ids = list(base.ids) if hasattr(base, "ids") else [str(i) for i in range(len(base))]
    return ids if indices is None else [ids[i] for i in indices]


def dataset_labels(dataset: Dataset) -> list[int]:
    """Each item's label, from the dataset's ``labels`` (without decoding an image), through Subsets; a dataset
    without ``labels`` (in-memory test data) is read item by item."""
    base, indices = _base(dataset)
    try:
        labels = [int(label) for label in base.labels] if hasattr(base, "labels") else \
            [int(base[i]["label"]) for i in range(len(base))]
    except (TypeError, KeyError, IndexError):
        raise TypeError(f"{type(base).__name__} has no `labels` and its items no 'label'; a class-stratified sample "
                        "needs each item's label") from None
    return labels if indices is None else [labels[i] for i in indices]


def sample_record(dataset: Dataset, indices: Sequence[int], *, seed: int, purpose: str) -> dict:
    """What a report stores about the images `indices` of `dataset` it computed `purpose` on (JSON-serialisable):
    {"purpose", "seed", "n", "ids", "per_class": {class name: count, every class, in label order}}."""
    ids, labels = dataset_ids(dataset), dataset_labels(dataset)
    names = getattr(_base(dataset)[0], "class_names", None)
    classes = dict(enumerate(names)) if names is not None else {c: str(c) for c in sorted(set(labels))}
    counts = Counter(labels[i] for i in indices)
    return {"purpose": purpose, "seed": int(seed), "n": len(indices), "ids": [ids[i] for i in indices],
            "per_class": {name: counts.get(c, 0) for c, name in classes.items()}}


def check_same_sample(record_a: dict, record_b: dict) -> None:
    """Refuse (ValueError) to pair two reports' results unless both were computed on the same images, in the same
    order: paired differences and bootstraps compare image by image."""
    purpose, other = record_a.get("purpose"), record_b.get("purpose")
    if purpose != other:
        raise ValueError(f"cannot pair samples drawn for different purposes: {purpose!r} and {other!r}")
    a, b = list(record_a["ids"]), list(record_b["ids"])
    if a == b:
        return
    only_a, only_b = set(a) - set(b), set(b) - set(a)
    if not only_a and not only_b:
        raise ValueError(f"the {purpose!r} samples hold the same images in a different order ({len(a)} and {len(b)} "
                         "ids); align the per-image results by id before pairing them")
    raise ValueError(f"the {purpose!r} samples differ: {len(only_a)} of {len(a)} ids only in the first report, "
                     f"{len(only_b)} of {len(b)} only in the second (e.g. {sorted(only_a | only_b)[0]}); pair only "
                     "reports evaluated on the same split with the same sample seed and size")
