"""Optional: model families from a Hugging Face Hub model repo laid out like models/ (<family>/<model>/...).

Local folders stay the default and the fallback: a family is fetched from the Hub only when it is named
in `families` (or absent locally), and any Hub error falls back to the local folder of that name.
"""
from __future__ import annotations

import logging
from pathlib import Path

from ..checkpoint import CONFIG, WEIGHTS
from .explain import FamilyStore, InputError

__all__ = ["HubStore"]

log = logging.getLogger(__name__)


class HubStore(FamilyStore):
    """A :class:`FamilyStore` that downloads named families from `repo_id` on first use."""

    def __init__(self, root: str | Path, repo_id: str, families: str | list[str] = "", revision: str | None = None):
        super().__init__(root)
        self.repo_id, self.revision = repo_id, revision or None
        self.remote = [f for f in (families.split(",") if isinstance(families, str) else families) if f.strip()]
        self.remote = [f.strip() for f in self.remote]

    def names(self) -> list[str]:
        return sorted(set(super().names()) | set(self.remote))

    def folder(self, name: str) -> Path:
        if name in self.remote:
            from huggingface_hub import snapshot_download
            from huggingface_hub.errors import HfHubHTTPError

            try:
                path = snapshot_download(self.repo_id, revision=self.revision,
                                         allow_patterns=[f"{name}/*/{CONFIG}", f"{name}/*/{WEIGHTS}",
                                                         f"{name}/README.md", f"{name}/card.json", f"{name}/plots/*"])
                return Path(path) / name
            except (HfHubHTTPError, OSError, ValueError) as e:
                log.warning("family %s from %s failed (%s); using the local folder", name, self.repo_id, e)
        if not (self.root / name).is_dir():
            raise InputError(f"model family {name!r} is neither on the Hub ({self.repo_id}) nor in {self.root}")
        return self.root / name
