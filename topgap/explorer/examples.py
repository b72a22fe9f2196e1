"""The app's example galleries beyond the bundled ones: a local dataset with masks (``python app.py --examples
DIR``: the folder format ``topgap evaluate`` reads, or an Oxford-IIIT Pet copy, images/ + annotations/trimaps/, read
through :func:`topgap.data.open_dataset`; nothing is copied), and a few test images of an Oxford-IIIT Pet copy on
the Hub (``TOPGAP_HUB_EXAMPLES``), downloaded on first use and cited.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ..data.datasets import list_splits, open_dataset
from ..data.synth import VARIANTS as SYNTH_VARIANTS
from .explain import FamilyStore, InputError
from .hub import parse_spec

__all__ = ["ExampleSet", "dataset_examples", "hub_examples", "bundled_examples", "env_examples", "examples_fit",
           "caption", "PER_CLASS", "MAX_EXAMPLES", "HUB_STEMS", "PETS_CITATION"]

log = logging.getLogger(__name__)

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


HUB_STEMS = ("Abyssinian_201", "american_bulldog_203", "Bengal_192")  # official test images of the pets family's breeds
PETS_CITATION = ("Oxford-IIIT Pet: O. M. Parkhi, A. Vedaldi, A. Zisserman, C. V. Jawahar, Cats and Dogs, CVPR 2012; "
                 "annotations CC BY-SA 4.0, each photo's copyright stays with its owner")


def hub_examples(spec: str, stems: tuple[str, ...] = HUB_STEMS) -> ExampleSet | None:
    """A few images with their trimaps from an Oxford-IIIT Pet copy on the Hub: a dataset repo "owner/name@revision"
    in the official layout (images/<stem>.jpg, annotations/trimaps/<stem>.png), downloaded into huggingface_hub's
    cache on first use. None, with one log line, when the Hub cannot be read (no network): the app starts without."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError

    try:
        repo, revision = parse_spec(spec)
        rows = [[hf_hub_download(repo, f, repo_type="dataset", revision=revision)
                 for f in (f"images/{stem}.jpg", f"annotations/trimaps/{stem}.png")] for stem in stems]
    except (HfHubHTTPError, OSError, ValueError) as e:  # offline: LocalEntryNotFoundError, an OSError
        log.warning("Hub examples off: %s could not be read (%s: %s); the app starts without them", spec,
                    type(e).__name__, e)
        return None
    return ExampleSet(rows, [f"{s.rsplit('_', 1)[0]} ({s})" for s in stems],
                      f"Test images of Oxford-IIIT Pet from the Hub ({spec}). {PETS_CITATION}")


def caption(name: str) -> str:
    """An example's caption from its file name: 'usual-background-circle' -> 'circle, usual background'."""
    words = name.split("-")
    if len(words) == 3 and words[:2] == ["background", "only"]:
        return f"{words[2]}'s background, no object"
    if len(words) == 3 and words[1] == "background":
        return f"{words[2]}, {words[0]} background"
    return {"misclassified-by-baseline": "misclassified by the baseline",
            "baseline-least-sure": "the baseline's least sure image"}.get(name, name.replace("-", " "))


SHAPES = set(SYNTH_VARIANTS["shapes"]["classes"])  # the synthetic examples' classes


def _example_order(path: Path) -> tuple[int, str]:
    """The shortcut test first: usual background, another background, the background alone, then the rest."""
    kinds = ("usual-background", "other-background", "background-only")
    return next((i for i, k in enumerate(kinds) if path.stem.startswith(k)), len(kinds)), path.stem


def bundled_examples(assets: Path) -> list[tuple[ExampleSet, str]]:
    """(examples, kind): the synthetic images (assets/images + masks/) and the CC0 photos (assets/photos +
    photos/masks/), each image with the mask of the same stem when there is one."""
    sets = []
    for kind, folder, masks, glob, label, name in (
            ("synthetic", assets / "images", assets / "masks", "*.png",
             "Synthetic shapes, in-distribution (with the mask where there is an object): each shape on its usual "
             "background, on another one, the background alone; then images a model got wrong", caption),
            ("photo", assets / "photos", assets / "photos" / "masks", "*.jpg",
             "Out-of-distribution test: a tabby cat, none of the pets family's three breeds (CC0 photo from "
             "scikit-image; mask by assets/make_photo_masks.py, see assets/LICENSES.md)",
             lambda stem: f"{stem} (CC0 photo from scikit-image)")):
        images = sorted(folder.glob(glob), key=_example_order) if folder.is_dir() else []
        rows = [[str(p), str(masks / f"{p.stem}.png") if (masks / f"{p.stem}.png").is_file() else None]
                for p in images]
        if rows:
            sets.append((ExampleSet(rows, [name(p.stem) for p in images], label), kind))
    return sets


def examples_fit(store: FamilyStore, kind: str, fam_name: str | None) -> bool:
    """Whether examples of `kind` suit the family: synthetic ones a family of the synthetic shapes, photos the
    others; a dataset's (--examples) and a family whose classes are not on disk (a Hub family) take all."""
    classes = set(store.class_names(fam_name)) if fam_name else set()
    return kind == "dataset" or not classes or (classes <= SHAPES) == (kind == "synthetic")


def env_examples() -> ExampleSet | None:
    """The examples of TOPGAP_EXAMPLES's dataset; a folder without usable pairs is logged and left out."""
    folder = os.environ.get("TOPGAP_EXAMPLES")
    if not folder:
        return None
    try:
        return dataset_examples(folder)
    except InputError as e:
        log.warning("TOPGAP_EXAMPLES: %s; showing the bundled examples only", e)
        return None
