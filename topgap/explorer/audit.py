"""Batch audit: many images (a zip or several files, masks optional) through :func:`explain_all`, one table row per
image and model (every trained k and the baseline) with the figures /explain returns, and the table as a CSV.

Masks pair with images by file stem: a mask lies in a folder named ``masks/`` (``masks/cat.png`` for ``cat.jpg``)
or is named ``<stem>_mask.<ext>`` or ``<stem>.mask.<ext>`` (for several uploaded files, which have no folders).

Zips are read in memory, never extracted. Bounded (:class:`Bounds`): the number of images, the upload's size, each
member's and all members' uncompressed size, and a member's compression ratio (zip bombs); images go through
:func:`topgap.data.imageio.decode_image` (decompression bombs). Names that are absolute or climb out with ``..`` are
ignored with a note. Past a bound the whole batch is refused with a message naming the bound; an unreadable image or
mask only gets a note on its row.
"""
from __future__ import annotations

import csv
import zipfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from ..cam import METHODS
from ..data.imageio import InputError
from ..io import atomic_write
from .explain import Family, explain_all, own_mask

__all__ = ["Bounds", "BOUNDS", "Item", "IMAGE_SUFFIXES", "COLUMNS", "read_zip", "read_uploads", "pair", "collect",
           "run_audit", "write_csv"]

MB = 2**20
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
COLUMNS = ["image", "mask", "model", "kind", "k", "label", "probability", "l1", "iou", "threshold", "mass", "pxap",
           "method", "notes"]


@dataclass(frozen=True)
class Bounds:
    """What one audit accepts."""
    images: int = 64  # images per audit
    upload: int = 50 * MB  # all uploaded files together, as uploaded (zips compressed)
    member: int = 10 * MB  # one file's uncompressed size (the app's upload limit)
    total: int = 100 * MB  # all files' uncompressed size
    ratio: float = 100  # a zip member's uncompressed / compressed size, checked for members over 1 MB


BOUNDS = Bounds()


@dataclass
class Item:
    """One image of the batch and its mask, as bytes."""
    name: str
    image: bytes
    mask_name: str | None = None
    mask: bytes | None = None
    notes: list[str] = field(default_factory=list)


def _bad_name(name: str) -> bool:
    """An absolute name, a drive letter or a `..` part: a path-traversal attempt (never extracted anyway)."""
    p = PurePosixPath(name.replace("\\", "/"))
    return not p.parts or p.is_absolute() or ".." in p.parts or ":" in p.parts[0]


def _ignored(name: str) -> bool:
    """Folders, macOS resource forks and hidden files, skipped silently."""
    parts = PurePosixPath(name).parts
    return name.endswith("/") or "__MACOSX" in parts or any(p.startswith(".") for p in parts)


def _too_many(n: int, bounds: Bounds) -> InputError:
    return InputError(f"the upload holds {n} images, more than the {bounds.images} one audit takes; "
                      f"split it into batches of at most {bounds.images}")


def _mb(n: float) -> str:
    return f"{n / MB:.3g} MB"


def _too_much(bounds: Bounds) -> InputError:
    return InputError(f"the images unpack to more than {_mb(bounds.total)}, the most one audit takes; "
                      "split them into smaller batches")


def read_zip(path: str | Path, bounds: Bounds = BOUNDS, already: int = 0) -> tuple[dict[str, bytes], list[str]]:
    """The image files of a zip, {member name: bytes}, read in memory within `bounds` (`already`: bytes read from
    other files of the upload), and notes on what was ignored.

    Raises:
        InputError: not a readable zip, encrypted, or past a bound (the message names it).
    """
    name = Path(path).name
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            notes = [f"{i.filename}: a name outside the zip's folder, ignored" for i in infos if _bad_name(i.filename)]
            infos = [i for i in infos if not _bad_name(i.filename) and not _ignored(i.filename)]
            notes += [f"{i.filename}: not an image ({', '.join(IMAGE_SUFFIXES)}), ignored" for i in infos
                      if PurePosixPath(i.filename).suffix.lower() not in IMAGE_SUFFIXES]
            infos = [i for i in infos if PurePosixPath(i.filename).suffix.lower() in IMAGE_SUFFIXES]
            images = sum(not _mask_stem(i.filename) for i in infos)
            if images > bounds.images:
                raise _too_many(images, bounds)
            files, total = {}, already
            for i in infos:
                _check_size(i.filename, i.file_size, i.compress_size, bounds)
                with zf.open(i) as f:
                    data = f.read(bounds.member + 1)  # the header's size may lie: never read more than allowed
                _check_size(i.filename, len(data), i.compress_size, bounds)
                total += len(data)
                if total > bounds.total:
                    raise _too_much(bounds)
                files[i.filename] = data
            return files, notes
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
        raise InputError(f"{name} is not a readable zip file ({e}); zip the images again and upload it") from None
    except RuntimeError as e:  # encrypted members
        raise InputError(f"{name} cannot be read ({e}); upload a zip without a password") from None
    except NotImplementedError as e:
        raise InputError(f"{name} uses an unsupported compression ({e}); zip it again with deflate") from None


def _check_size(name: str, size: int, compressed: int, bounds: Bounds) -> None:
    if size > bounds.member:
        raise InputError(f"{name} unpacks to more than {_mb(bounds.member)}, the most one image may take; "
                         "downscale it or save it as PNG/JPEG and zip it again")
    if size > MB and size > bounds.ratio * max(compressed, 1):
        raise InputError(f"{name} is compressed more than {bounds.ratio:g}:1 ({size} bytes from {compressed}), "
                         "which real images never are (a zip bomb?); zip the image files themselves")


def read_uploads(paths: Iterable[str | Path], bounds: Bounds = BOUNDS) -> tuple[dict[str, bytes], list[str]]:
    """Uploaded files (zips and images) as {name: bytes} within `bounds`, and notes on what was ignored.

    Raises:
        InputError: past a bound, a bad zip, or the same name twice.
    """
    paths = [Path(p) for p in paths]
    size = sum(p.stat().st_size for p in paths)
    if size > bounds.upload:
        raise InputError(f"the upload is {_mb(size)}, more than the {_mb(bounds.upload)} one audit takes; "
                         "upload fewer or smaller files")
    files, notes = {}, []
    for p in paths:
        if p.suffix.lower() == ".zip":
            used = sum(len(d) for d in files.values())
            found, more = read_zip(p, bounds, already=used)
            notes += [f"{p.name}: {n}" for n in more]
        elif p.suffix.lower() in IMAGE_SUFFIXES:
            _check_size(p.name, p.stat().st_size, p.stat().st_size, bounds)
            found = {p.name: p.read_bytes()}
        else:
            notes.append(f"{p.name}: neither a zip nor an image ({', '.join(IMAGE_SUFFIXES)}), ignored")
            continue
        for name, data in found.items():
            if name in files:
                raise InputError(f"{name} was uploaded twice; rename one of them")
            files[name] = data
    if sum(len(d) for d in files.values()) > bounds.total:
        raise _too_much(bounds)
    images = sum(not _mask_stem(n) for n in files)
    if images > bounds.images:
        raise _too_many(images, bounds)
    return files, notes


def _mask_stem(name: str) -> str | None:
    """The stem of the image a mask file belongs to (see the module docstring), None for an image."""
    p = PurePosixPath(name)
    if len(p.parts) > 1 and p.parts[-2].lower() == "masks":
        return p.stem
    for suffix in ("_mask", ".mask"):
        if p.stem.lower().endswith(suffix):
            return p.stem[:-len(suffix)]
    return None


def pair(files: dict[str, bytes]) -> tuple[list[Item], list[str]]:
    """Images with their masks (paired by stem), in name order, and notes on masks without an image or with many."""
    items = [Item(n, d) for n, d in sorted(files.items()) if _mask_stem(n) is None]
    by_stem: dict[str, list[Item]] = {}
    for item in items:
        by_stem.setdefault(PurePosixPath(item.name).stem, []).append(item)
    notes = []
    for name, data in sorted(files.items()):
        stem = _mask_stem(name)
        if stem is None:
            continue
        owners = by_stem.get(stem, [])
        if not owners:
            notes.append(f"{name}: a mask without an image named {stem}.*, ignored")
        elif len(owners) > 1:
            for item in owners:
                item.notes.append(f"mask {name} fits {len(owners)} images named {stem}.*, not used; give the images "
                                  "unique names")
        elif owners[0].mask is not None:
            owners[0].notes.append(f"two masks ({owners[0].mask_name}, {name}): the first is used")
        else:
            owners[0].mask_name, owners[0].mask = name, data
    return items, notes


def collect(paths: Iterable[str | Path], bounds: Bounds = BOUNDS) -> tuple[list[Item], list[str]]:
    """Uploaded files -> images paired with masks, and notes; refuses an upload without images."""
    files, notes = read_uploads(paths, bounds)
    items, more = pair(files)
    if not items:
        raise InputError(f"the upload holds no image ({', '.join(IMAGE_SUFFIXES)}); upload a zip of images or the "
                         "image files themselves")
    return items, notes + more


def run_audit(family: Family, items: list[Item], method: str = "gradcam",
              track: Callable[[list[Item]], Iterable[Item]] | None = None) -> list[list]:
    """Rows of :data:`COLUMNS`, one per image and model: :meth:`Result.report`'s figures (as /explain returns them).

    An unreadable image gets one row with the reason; a mask that cannot be used, its image's rows without mask
    figures and a note. `track` wraps the items for a progress bar (default: tqdm).

    Raises:
        InputError: an unknown CAM method (nothing is run).
    """
    if method not in METHODS:
        raise InputError(f"unknown CAM method {method!r}; choose one of {', '.join(METHODS)}")
    rows = []
    for item in (track or (lambda xs: tqdm(xs, desc="audit", unit="image")))(items):
        try:
            result = explain_all(family, item.image, method=method)
        except InputError as e:
            rows.append([item.name, item.mask_name] + [None] * (len(COLUMNS) - 3) + ["; ".join(item.notes + [str(e)])])
            continue
        notes = item.notes + result.notes
        if item.mask is not None:
            try:
                result = result.with_mask(*own_mask(item.mask, result.image.shape[:2]))
                notes += result.mask_notes
            except InputError as e:
                notes.append(f"mask not used: {e}")
        for name, m in result.report()["models"].items():
            rows.append([item.name, item.mask_name if result.has_mask else None, name, m["kind"], m["k"], m["label"],
                         m["probability"], m["l1"], m["iou"], m["threshold"], m["mass"], m["pxap"],
                         method if m["kind"] == "baseline" else None, "; ".join(notes)])
    return rows


def _cell(v):
    """None as an empty cell; text that a spreadsheet would run as a formula (a file named "=cmd|..."), quoted."""
    if v is None:
        return ""
    return "'" + v if isinstance(v, str) and v.startswith(("=", "+", "-", "@", "\t", "\r")) else v


def write_csv(rows: list[list], folder: str | Path, name: str = "audit.csv") -> Path:
    """The rows under a header of :data:`COLUMNS` as folder/name, written atomically (see :func:`_cell`)."""
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            out = csv.writer(f)
            out.writerow(COLUMNS)
            out.writerows([[_cell(v) for v in row] for row in rows])
    return atomic_write(Path(folder) / name, write)
