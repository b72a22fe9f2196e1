"""The app's example gallery from a local dataset with masks (``python app.py --examples DIR``): the folder
format ``topgap evaluate`` reads, or an Oxford-IIIT Pet copy (images/ + annotations/trimaps/), read through
:func:`topgap.data.open_dataset`. Nothing is copied: the gallery points at the user's files.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..data.datasets import list_splits, open_dataset
from .explain import InputError

__all__ = ["ExampleSet", "dataset_examples", "PER_CLASS", "MAX_EXAMPLES"]

PER_CLASS = 3  # the first N images with a mask of each class
MAX_EXAMPLES = 60


@dataclass
class ExampleSet:
    """Rows of (image path, mask path) for gr.Examples, their captions, and the label above them."""
    rows: list[list[str | None]]
    captions: list[str]
    label: str


def dataset_examples(root: str | Path, per_class: int = PER_CLASS, limit: int = MAX_EXAMPLES) -> ExampleSet:
    """The first `per_class` images with a mask of each class of `root`'s test split (else val, else the first
    split), at most `limit` in all.

    Raises:
        InputError: no dataset there, or no image with a mask; the message names the folder and the layout.
    """
    root = Path(root)
    layout = ("the folder format (ROOT/<split>/<class>/<image> with masks at ROOT/masks/<split>/<class>/<stem>.png) "
              "or Oxford-IIIT Pet (images/ and annotations/trimaps/)")
    try:
        splits = list_splits(root)
        split = next((s for s in ("test", "val") if s in splits), splits[0] if splits else None)
        if split is None:
            raise ValueError(f"{root} holds no split")
        ds = open_dataset(root, split, on_error="skip")
    except ValueError as e:
        raise InputError(f"examples folder {root}: {e}; give a dataset in {layout}") from None
    counts: dict[int, int] = {}
    rows, captions = [], []
    for item in ds.items:
        if item.mask is None or counts.get(item.label, 0) >= per_class or len(rows) >= limit:
            continue
        counts[item.label] = counts.get(item.label, 0) + 1
        rows.append([str(item.source), str(item.mask)])
        captions.append(f"{ds.class_names[item.label]} ({Path(str(item.source)).stem})")
    if not rows:
        raise InputError(f"examples folder {root}: split {split!r} has no image with a mask; give a dataset in "
                         f"{layout}")
    return ExampleSet(rows, captions, f"Examples from your dataset {root.name} ({ds.split} split, the first "
                      f"{per_class} with a mask per class; not bundled)")
