"""Image datasets with aligned object masks: class folders, Oxford-IIIT Pet and CIFAR-10.

`open_dataset(root, split)` detects the layout (``fmt="auto"``) and returns an :class:`ImageDataset` whose
items are ``{"image": float32 (3, H, W) in [0, 1], "label": int, "mask": uint8 (H, W), "has_mask": bool,
"index": int}``; mask values are 0 background, 1 object, 255 ignore/unknown (all 255 without a mask).

Decoding (:func:`read_image`) goes by file content, not name, through :mod:`topgap.data.imageio`, the same
decoder the app uses (EXIF orientation, 16-bit and float rescaled, transparency composited on white,
CMYK and palette converted, decompression bombs refused). Bad files are found when the dataset is opened: ``on_error="stop"`` raises a ValueError naming them,
``on_error="skip"`` leaves them out and lists them in ``dataset.skipped``. Nothing is ever written into a
data folder.
"""
from __future__ import annotations

import math
import tarfile
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import cv2
import numpy as np
import torch
from PIL import Image

from .imageio import open_image, to_rgb
from .masks import binary_mask

__all__ = ["open_dataset", "pad_crop_flip", "PAD", "list_splits", "ImageDataset", "read_image", "download_oxford_pet",
           "download_cifar10", "IMAGE_EXTENSIONS", "FORMATS", "CLASSES_FILE"]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
FORMATS = ("auto", "folder", "oxford-pet", "cifar10")
IGNORE = 255
_SMALL = 64  # inputs up to this side get the CIFAR augmentation (pad 4, random crop, flip)
_TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar")
_SYSTEM_FILES = frozenset({"thumbs.db", "desktop.ini"})
CLASSES_FILE = "classes.txt"  # optional in the folder format: one class name per line, in label order


# ---------------------------------------------------------------- decoding

def read_image(source: str | Path | bytes, name: str | None = None) -> np.ndarray:
    """Decode an image file (or its bytes) by content into (H, W, 3) uint8 RGB; ValueError names the file."""
    name = name or (str(source) if not isinstance(source, bytes) else "<bytes>")
    try:
        with open_image(source) as im:
            return to_rgb(im)[0]
    except ValueError as e:
        raise ValueError(f"cannot read image {name}: {e}") from None


def _read_mask(path: Path, boundary: str) -> np.ndarray:
    """(H, W) uint8 mask: 1 object, 0 background, 255 ignore."""
    try:
        with open_image(path) as im:
            obj, ignore = binary_mask(im, boundary=boundary)
    except ValueError as e:
        raise ValueError(f"cannot read mask {path}: {e}") from None
    m = obj.astype(np.uint8)
    m[ignore] = IGNORE
    return m


def _check_image(path: Path) -> tuple[int, int]:
    """Cheap validity check; returns the displayed (width, height). Raises on unreadable or truncated files."""
    with Image.open(path) as im:
        w, h = im.size
        if im.format == "JPEG":  # verify() does not read JPEG data: decode at 1/8 scale to catch truncation
            im.draft("RGB", (max(1, w // 8), max(1, h // 8)))
            im.load()
        else:
            im.verify()
    with Image.open(path) as im:  # verify() leaves the image unusable: reopen for the EXIF orientation
        if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):
            w, h = h, w
    return w, h


def _check_mask(path: Path, size: tuple[int, int]) -> str | None:
    """Why the mask at `path` cannot be used with an image of `size`, or None."""
    if not path.is_file():
        return "mask missing"
    try:
        with Image.open(path) as im:
            msize = im.size
            im.verify()
    except Exception as e:  # noqa: BLE001 - any failure to read is a reason
        return f"unreadable mask ({e})"
    if msize != size:
        return f"mask is {msize[0]}x{msize[1]} but its image is {size[0]}x{size[1]}"
    return None


def _problem_text(e: Exception) -> str:
    return f"{type(e).__name__}: {e}" if not isinstance(e, ValueError) else str(e)


# ---------------------------------------------------------------- the dataset

@dataclass
class _Item:
    source: Path | int  # a file, or a row of the in-memory array
    label: int
    mask: Path | None = None
    name: str | None = None  # a row's id: its tar member name, or "<split>/<row>" in the CIFAR-10 batches


def _resize(a: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    h, w = size
    if a.shape[:2] == (h, w):
        return a
    if nearest:
        interp = cv2.INTER_NEAREST
    else:
        interp = cv2.INTER_AREA if h <= a.shape[0] and w <= a.shape[1] else cv2.INTER_LINEAR
    return cv2.resize(a, (w, h), interpolation=interp)


def _uniform(lo: float, hi: float) -> float:
    return lo + (hi - lo) * torch.rand(()).item()


def _randint(n: int) -> int:
    """Uniform in [0, n)."""
    return int(torch.randint(n, ()).item())


def _crop_box(h: int, w: int, scale=(0.6, 1.0), ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """(y, x, ch, cw) of a random resized crop, as torchvision's RandomResizedCrop draws it."""
    for _ in range(10):
        area = _uniform(*scale) * h * w
        r = math.exp(_uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = round(math.sqrt(area * r)), round(math.sqrt(area / r))
        if 0 < cw <= w and 0 < ch <= h:
            return _randint(h - ch + 1), _randint(w - cw + 1), ch, cw
    return 0, 0, h, w


PAD = 4  # the CIFAR augmentation's zero padding: crops are drawn at offsets 0..2 * PAD


def pad_crop_flip(images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """The CIFAR training augmentation of :class:`ImageDataset` (inputs <= 64 px) on a batch, on its device: zero-pad
    by :data:`PAD`, crop back to H x W at row `dy` and column `dx` (each in 0..2 * PAD), mirror where `flip`.

    (B, C, H, W) images of any dtype, (B,) integer offsets, (B,) bool; equal to the per-image path for the same draws
    (tests), so a GPU-resident training loop augments as the DataLoader does."""
    b, c, h, w = images.shape
    if not (dy.shape == dx.shape == flip.shape == (b,)):
        raise ValueError(f"need one dy, dx and flip per image: {b} images, shapes {tuple(dy.shape)}, "
                         f"{tuple(dx.shape)}, {tuple(flip.shape)}")
    if min(int(dy.min()), int(dx.min())) < 0 or max(int(dy.max()), int(dx.max())) > 2 * PAD:
        raise ValueError(f"crop offsets must lie in 0..{2 * PAD}")
    padded = torch.nn.functional.pad(images, (PAD, PAD, PAD, PAD))
    dev = images.device
    rows = dy.to(dev)[:, None] + torch.arange(h, device=dev)  # (B, H)
    cols = dx.to(dev)[:, None] + torch.arange(w, device=dev)  # (B, W)
    cols = torch.where(flip.to(dev)[:, None], cols.flip(1), cols)
    batch, channel = torch.arange(b, device=dev)[:, None, None, None], torch.arange(c, device=dev)[None, :, None, None]
    return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]


class ImageDataset(torch.utils.data.Dataset):
    """Images with labels and optional aligned masks; build one with :func:`open_dataset`."""

    def __init__(self, root: Path, split: str, class_names: list[str], items: list[_Item], *,
                 input_size: tuple[int, int], train: bool, boundary: str, fmt: str,
                 skipped: list[tuple[str, str]] | None = None, array: np.ndarray | None = None):
        self.root, self.split, self.fmt = Path(root), split, fmt
        self.class_names = list(class_names)
        self.items = items
        self.labels = [it.label for it in items]
        self.has_masks = any(it.mask is not None for it in items)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.train, self.boundary = train, boundary
        self.skipped = list(skipped or [])
        self._array = array

    def __len__(self) -> int:
        return len(self.items)

    @property
    def ids(self) -> list[str]:
        """Each item's id, stable across runs and models: its file's path relative to the root (POSIX), or its
        tar member name; reports store these to name the images they were computed on."""
        return [it.name if isinstance(it.source, int) else it.source.relative_to(self.root).as_posix()
                for it in self.items]

    def __repr__(self) -> str:
        return (f"ImageDataset({self.fmt}, {str(self.root)!r}, split={self.split!r}, {len(self)} items, "
                f"{len(self.class_names)} classes, masks={self.has_masks}, train={self.train})")

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Item i at its own size: (H, W, 3) uint8 RGB and its (H, W) uint8 mask or None."""
        it = self.items[i]
        if isinstance(it.source, int):
            image = self._array[it.source]
        else:
            image = read_image(it.source)
        mask = _read_mask(it.mask, self.boundary) if it.mask is not None else None
        if mask is not None and mask.shape != image.shape[:2]:
            raise ValueError(f"mask {it.mask} is {mask.shape[1]}x{mask.shape[0]} but its image {it.source} is "
                             f"{image.shape[1]}x{image.shape[0]}; fix it or reopen with on_error='skip'")
        return image, mask

    def _transform(self, image: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        size = self.input_size
        has_mask = mask is not None
        if mask is None:
            mask = np.full(image.shape[:2], IGNORE, np.uint8)
        if self.train and max(size) <= _SMALL:  # CIFAR: resize, pad 4, random crop back, flip
            image, mask = _resize(image, size), _resize(mask, size, nearest=True)
            image = np.pad(image, ((PAD, PAD), (PAD, PAD), (0, 0)))
            mask = np.pad(mask, PAD, constant_values=0 if has_mask else IGNORE)
            y, x = _randint(2 * PAD + 1), _randint(2 * PAD + 1)
            image, mask = image[y:y + size[0], x:x + size[1]], mask[y:y + size[0], x:x + size[1]]
        else:
            if self.train:
                y, x, ch, cw = _crop_box(*image.shape[:2])
                image, mask = image[y:y + ch, x:x + cw], mask[y:y + ch, x:x + cw]
            image, mask = _resize(image, size), _resize(mask, size, nearest=True)
        if self.train and torch.rand(()).item() < 0.5:
            image, mask = image[:, ::-1], mask[:, ::-1]
        return image, mask

    def __getitem__(self, i: int) -> dict:
        image, mask = self.load(i)
        has_mask = mask is not None
        image, mask = self._transform(image, mask)
        return {"image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255),
                "label": self.items[i].label, "mask": torch.from_numpy(np.ascontiguousarray(mask)),
                "has_mask": has_mask, "index": i}


# ---------------------------------------------------------------- layouts

def _settle(problems: list[tuple[str, str]], on_error: str, where: str) -> list[tuple[str, str]]:
    """Raise for `problems` under on_error="stop"; return them (to record as skipped) under "skip"."""
    if problems and on_error == "stop":
        shown = "\n".join(f"  {f}: {why}" for f, why in problems[:10])
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise ValueError(f"{len(problems)} bad file(s) in {where}:\n{shown}{more}\n"
                         "Fix or remove them, or pass on_error='skip' (CLI: --on-error skip) to leave them out.")
    return problems


def _oxford_root(root: Path) -> Path | None:
    for r in (root, root / "oxford-iiit-pet"):
        if (r / "images").is_dir() and ((r / "annotations" / "trainval.txt").is_file()
                                        or (r / "annotations" / "test.txt").is_file()):
            return r
    return None


def _cifar_batches(root: Path) -> Path | None:
    if (root / "cifar-10-batches-py").is_dir():
        return root
    if root.name == "cifar-10-batches-py" and root.is_dir():
        return root.parent
    return None


def _tars(root: Path) -> dict[str, Path]:
    out = {}
    for p in sorted(root.iterdir()) if root.is_dir() else ():
        for suf in _TAR_SUFFIXES:
            if p.is_file() and p.name.endswith(suf):
                out[p.name[: -len(suf)]] = p
                break
    return out


def _folder_splits(root: Path) -> list[str]:
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != "masks" and not p.name.startswith("."))


def _detect(root: Path, fmt: str) -> str:
    """The concrete layout of `root`: "folder", "oxford-pet", "cifar10-batches" or "cifar10-tar"."""
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {', '.join(FORMATS)} (got {fmt!r})")
    if not root.is_dir():
        raise ValueError(f"dataset folder {root} does not exist")
    if fmt in ("auto", "oxford-pet") and _oxford_root(root):
        return "oxford-pet"
    if fmt == "oxford-pet":
        raise ValueError(f"{root} is not in the Oxford-IIIT Pet layout (images/ and annotations/trainval.txt, "
                         "or an oxford-iiit-pet/ folder holding them); use download_oxford_pet(root) to get it")
    if fmt in ("auto", "cifar10"):
        if _cifar_batches(root):
            return "cifar10-batches"
        if _tars(root):
            return "cifar10-tar"
    if fmt == "cifar10" and not _folder_splits(root):
        raise ValueError(f"{root} holds no CIFAR-10 data (cifar-10-batches-py/, <split>.tar.gz or "
                         "<split>/<class>/ folders); use download_cifar10(root) to get it")
    if not _folder_splits(root):
        raise ValueError(f"{root} holds no split folders (expected ROOT/<split>/<class>/<image>)")
    return "folder"


def list_splits(root, fmt: str = "auto") -> list[str]:
    """The split names available under `root`."""
    root = Path(root)
    layout = _detect(root, fmt)
    if layout == "oxford-pet":
        ann = _oxford_root(root) / "annotations"
        official = [s for s in ("trainval", "test") if (ann / f"{s}.txt").is_file()]
        return official + (["train", "val"] if "trainval" in official else [])
    if layout == "cifar10-batches":
        return ["train", "test"]
    if layout == "cifar10-tar":
        return list(_tars(root))
    return _folder_splits(root)


def _unknown_split(split: str, root: Path, available: list[str]) -> ValueError:
    return ValueError(f"no split {split!r} in {root}; available: {', '.join(available) or 'none'}")


def _open_folder(root: Path, split: str, on_error: str, **kw) -> ImageDataset:
    splits = _folder_splits(root)
    if split not in splits:
        raise _unknown_split(split, root, splits)
    class_names = sorted({c.name for s in splits for c in (root / s).iterdir()
                          if c.is_dir() and not c.name.startswith(".")})
    if (root / CLASSES_FILE).is_file():  # an explicit class order, e.g. the label order of the source dataset
        listed = [line.strip() for line in (root / CLASSES_FILE).read_text().splitlines() if line.strip()]
        if sorted(listed) != class_names:
            raise ValueError(f"{root / CLASSES_FILE} lists {listed} but the class folders are {class_names}; "
                             "make it list each class folder once, or delete it to sort them by name")
        class_names = listed
    mask_root = root / "masks" / split
    with_masks = mask_root.is_dir()
    problems, warn, items = [], [], []
    for label, name in enumerate(class_names):
        cdir = root / split / name
        if not cdir.is_dir():
            continue  # the class exists in another split only
        n_before = len(items)
        for p in sorted(cdir.rglob("*")):
            if not p.is_file() or p.name.startswith(".") or p.name.lower() in _SYSTEM_FILES:
                continue
            if p.suffix.lower() not in IMAGE_EXTENSIONS:
                problems.append((str(p), f"not an image file (extension {p.suffix or 'none'})"))
                continue
            try:
                size = _check_image(p)
            except Exception as e:  # noqa: BLE001 - any failure to read is a reason to skip
                problems.append((str(p), f"unreadable image ({_problem_text(e)})"))
                continue
            mask = mask_root / name / p.relative_to(cdir).with_suffix(".png") if with_masks else None
            if mask is not None and (why := _check_mask(mask, size)):
                problems.append((str(mask), f"{why}; the image is kept without a mask"))
                mask = None
            items.append(_Item(p, label, mask))
        if len(items) == n_before:
            warn.append((str(cdir), "empty class folder (no readable images)"))
    where = f"split {split!r} of {root}"
    if warn and on_error == "skip":
        warnings.warn(f"{where}: " + "; ".join(f"{f}: {w}" for f, w in warn), stacklevel=3)
    skipped = _settle(problems + warn, on_error, where)
    if not items:
        raise ValueError(f"{where} holds no readable images")
    return ImageDataset(root, split, class_names, items, fmt="folder", skipped=skipped, **kw)


def _read_list(path: Path) -> list[tuple[str, int, int]]:
    """(image stem, class id, species) per line of an Oxford-IIIT Pet list file."""
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) < 3:
            raise ValueError(f"{path} line {n}: expected 'Image CLASS-ID SPECIES BREED-ID', got {line!r}")
        rows.append((parts[0], int(parts[1]), int(parts[2])))
    return rows


VAL_EVERY = 5  # Oxford-IIIT Pet has no validation split: every 5th trainval image of each breed is "val"


def _oxford_part(rows: list[tuple[str, int, int]], split: str) -> list[tuple[str, int, int]]:
    """`train` / `val`: a deterministic, stratified 80/20 partition of trainval (by breed, in file-name order)."""
    seen: dict[str, int] = {}
    out = []
    for row in sorted(rows, key=lambda r: (r[0].rsplit("_", 1)[0], r[0])):
        breed = row[0].rsplit("_", 1)[0]
        i = seen[breed] = seen.get(breed, -1) + 1
        if (i % VAL_EVERY == VAL_EVERY - 1) == (split == "val"):
            out.append(row)
    return out


def _open_oxford(root: Path, split: str, on_error: str, labels: str, **kw) -> ImageDataset:
    """Official splits trainval and test; train and val partition trainval (see :func:`_oxford_part`)."""
    base = _oxford_root(root)
    ann = base / "annotations"
    name = "trainval" if split in ("train", "val") else split
    if name not in ("trainval", "test") or not (ann / f"{name}.txt").is_file():
        raise _unknown_split(split, root, list_splits(base))
    if labels not in ("breed", "species"):
        raise ValueError(f"labels must be 'breed' or 'species' (got {labels!r})")
    rows = _read_list(ann / f"{name}.txt")
    if split in ("train", "val"):
        rows, name = _oxford_part(rows, split), split
    if labels == "species":
        class_names = ["cat", "dog"]
    else:  # every breed in the list files, in CLASS-ID order (the official label order)
        breeds = {}
        for s in ("trainval", "test"):
            if (ann / f"{s}.txt").is_file():
                for stem, cid, _ in _read_list(ann / f"{s}.txt"):
                    breeds.setdefault(stem.rsplit("_", 1)[0], cid)
        class_names = sorted(breeds, key=lambda b: (breeds[b], b.lower()))
    index = {c: i for i, c in enumerate(class_names)}
    problems, items = [], []
    for stem, _, species in rows:
        p = base / "images" / f"{stem}.jpg"
        label = species - 1 if labels == "species" else index[stem.rsplit("_", 1)[0]]
        if labels == "species" and species not in (1, 2):
            problems.append((str(p), f"species {species} in {name}.txt is neither 1 (cat) nor 2 (dog)"))
            continue
        try:
            size = _check_image(p)
        except Exception as e:  # noqa: BLE001
            problems.append((str(p), f"unreadable image ({_problem_text(e)})"))
            continue
        mask = ann / "trimaps" / f"{stem}.png"
        if why := _check_mask(mask, size):
            problems.append((str(mask), f"{why}; the image is kept without a mask"))
            mask = None
        items.append(_Item(p, label, mask))
    skipped = _settle(problems, on_error, f"split {name!r} of {base}")
    if not items:
        raise ValueError(f"split {name!r} of {base} holds no readable images")
    return ImageDataset(base, name, class_names, items, fmt="oxford-pet", skipped=skipped, **kw)


def _tar_members(path: Path) -> list[str]:
    with tarfile.open(path) as tf:
        return [m.name for m in tf if m.isfile()]


def _class_of(member: str) -> str | None:
    parts = PurePosixPath(member).parts
    if len(parts) < 2 or PurePosixPath(member).suffix.lower() not in IMAGE_EXTENSIONS:
        return None
    return parts[-2]


def _open_cifar_tar(root: Path, split: str, on_error: str, **kw) -> ImageDataset:
    tars = _tars(root)
    if split not in tars:
        raise _unknown_split(split, root, list(tars))
    names = {c for s, p in tars.items() if s != split for m in _tar_members(p) if (c := _class_of(m))}
    decoded, problems = [], []
    with tarfile.open(tars[split]) as tf:
        for m in tf:
            cls = _class_of(m.name) if m.isfile() else None
            if cls is None:
                continue
            where = f"{tars[split]}:{m.name}"
            try:
                decoded.append((cls, m.name, read_image(tf.extractfile(m).read(), where)))
            except ValueError as e:
                problems.append((where, str(e)))
    skipped = _settle(problems, on_error, f"split {split!r} of {root}")
    if not decoded:
        raise ValueError(f"{tars[split]} holds no images (expected {split}/<class>/<image> members)")
    decoded.sort(key=lambda d: (d[0], d[1]))
    shapes = {d[2].shape for d in decoded}
    if len(shapes) > 1:
        raise ValueError(f"{tars[split]} mixes image sizes {sorted(shapes)[:3]}; extract it and open the folder")
    class_names = sorted(names | {d[0] for d in decoded})
    index = {c: i for i, c in enumerate(class_names)}
    array = np.stack([d[2] for d in decoded])
    items = [_Item(i, index[d[0]], name=d[1]) for i, d in enumerate(decoded)]
    return ImageDataset(root, split, class_names, items, fmt="cifar10", skipped=skipped, array=array, **kw)


def _open_cifar_batches(root: Path, split: str, **kw) -> ImageDataset:
    from torchvision.datasets import CIFAR10

    if split not in ("train", "test"):
        raise _unknown_split(split, root, ["train", "test"])
    base = _cifar_batches(root)
    ds = CIFAR10(str(base), train=split == "train", download=False)
    items = [_Item(i, int(t), name=f"{split}/{i}") for i, t in enumerate(ds.targets)]
    return ImageDataset(base, split, list(ds.classes), items, fmt="cifar10", array=np.asarray(ds.data), **kw)


def open_dataset(root, split: str, *, input_size=(224, 224), train: bool = False, fmt: str = "auto",
                 labels: str = "breed", on_error: str = "stop", boundary: str = "ignore") -> ImageDataset:
    """Open one split of a dataset.

    Args:
        root: dataset folder. Layouts: "folder" (ROOT/<split>/<class>/<image>, masks at
            ROOT/masks/<split>/<class>/<stem>.png; label order from ROOT/classes.txt if present, else sorted
            names), "oxford-pet" (the official Oxford-IIIT Pet layout, or
            torchvision's ROOT/oxford-iiit-pet/), "cifar10" (<split>.tar.gz of <split>/<class>/<image>,
            torchvision's cifar-10-batches-py/, or class folders); "auto" detects.
        split: e.g. "train", "test"; Oxford-IIIT Pet has "trainval" (alias "train") and "test".
        input_size: (height, width) every item is resized to (no cropping).
        train: add augmentation (random resized crop + flip; pad-4 crop + flip for inputs <= 64 px).
        labels: Oxford-IIIT Pet only: "breed" or "species" (cat, dog).
        on_error: "stop" raises on bad files, "skip" leaves them out (listed in ``.skipped``).
        boundary: what an Oxford trimap's boundary band becomes: "ignore", "object" or "background".
    """
    if on_error not in ("stop", "skip"):
        raise ValueError(f"on_error must be 'stop' or 'skip' (got {on_error!r})")
    if boundary not in ("ignore", "object", "background"):
        raise ValueError(f"boundary must be ignore, object or background (got {boundary!r})")
    if isinstance(input_size, int):
        input_size = (input_size, input_size)
    if len(input_size) != 2 or min(input_size) < 1:
        raise ValueError(f"input_size must be (height, width) with positive sides (got {input_size!r})")
    root = Path(root)
    kw = dict(input_size=tuple(input_size), train=train, boundary=boundary)
    layout = _detect(root, fmt)
    if layout == "oxford-pet":
        return _open_oxford(root, split, on_error, labels, **kw)
    if layout == "cifar10-batches":
        return _open_cifar_batches(root, split, **kw)
    if layout == "cifar10-tar":
        return _open_cifar_tar(root, split, on_error, **kw)
    return _open_folder(root, split, on_error, **kw)


def download_oxford_pet(root) -> Path:
    """Download Oxford-IIIT Pet (images + trimaps) with torchvision; returns ROOT/oxford-iiit-pet (official layout)."""
    from torchvision.datasets import OxfordIIITPet

    for split in ("trainval", "test"):
        OxfordIIITPet(str(root), split=split, target_types="segmentation", download=True)
    return Path(root) / "oxford-iiit-pet"


def download_cifar10(root) -> Path:
    """Download CIFAR-10's python batches with torchvision; returns ROOT (holding cifar-10-batches-py/)."""
    from torchvision.datasets import CIFAR10

    for train in (True, False):
        CIFAR10(str(root), train=train, download=True)
    return Path(root)
