"""The app's temp folder: gradio's uploads and cache, the images it serves and the downloads, bounded in size and
removed at exit. Nothing is created at import: `Workspace()` makes the folder."""
from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from ..io import atomic_write

__all__ = ["Workspace", "bound_storage", "MAX_STORAGE_MB"]

MAX_STORAGE_MB = 200  # default of TOPGAP_MAX_STORAGE_MB


def bound_storage(root: Path, max_bytes: int, min_age_s: float = 60) -> int:
    """Keep the files under `root` below max_bytes by deleting the oldest ones older than min_age_s (clients have
    fetched them by then); empty files go too. Returns the bytes left."""
    now = time.time()
    files = []
    for p in root.rglob("*"):
        try:
            st = p.stat()
        except OSError:
            continue
        if p.is_file():
            files.append((st.st_mtime, st.st_size, p))
    total = sum(size for _, size, _ in files)
    for mtime, size, p in sorted(files):
        if now - mtime < min_age_s:
            break
        if size and total <= max_bytes:
            continue
        p.unlink(missing_ok=True)
        total -= size
    return total


class Workspace:
    """A fresh temp folder with gradio/ (set as GRADIO_TEMP_DIR: uploads and output cache), images/ and
    downloads/; removed at exit. Beyond max_bytes (env TOPGAP_MAX_STORAGE_MB) the oldest files go."""

    def __init__(self, max_bytes: int | None = None, set_gradio_temp: bool = True):
        self.root = Path(tempfile.mkdtemp(prefix="topgap-app-"))
        self.downloads, self.images, self.uploads = self.root / "downloads", self.root / "images", self.root / "gradio"
        for d in (self.downloads, self.images, self.uploads):
            d.mkdir()
        if set_gradio_temp:
            os.environ["GRADIO_TEMP_DIR"] = str(self.uploads)  # read when gr.Blocks is created
        atexit.register(shutil.rmtree, self.root, ignore_errors=True)
        env = float(os.environ.get("TOPGAP_MAX_STORAGE_MB", MAX_STORAGE_MB))
        self.max_bytes = int(env * 2**20) if max_bytes is None else max_bytes
        self._last_bound = 0.0

    def png(self, array: np.ndarray | None) -> str | None:
        """An RGB uint8 array as a PNG in images/, named by its content and written atomically.

        Gradio re-writes numpy outputs in place in its cache, which races with clients still reading an identical
        earlier output; files are copied into the cache atomically instead.
        """
        if array is None:
            return None
        ok, data = cv2.imencode(".png", cv2.cvtColor(array, cv2.COLOR_RGB2BGR))
        path = self.images / f"{hashlib.sha256(data.tobytes()).hexdigest()[:40]}.png"
        if not path.exists():
            atomic_write(path, lambda tmp: Path(tmp).write_bytes(data.tobytes()))
        return str(path)

    def folder(self) -> Path:
        """A new, empty folder under downloads/."""
        return Path(tempfile.mkdtemp(dir=self.downloads))

    def bound(self, every_s: float = 10) -> int:
        """bound_storage on the whole workspace, at most every every_s seconds (-1 when skipped)."""
        now = time.time()
        if now - self._last_bound < every_s:
            return -1
        self._last_bound = now
        return bound_storage(self.root, self.max_bytes)
