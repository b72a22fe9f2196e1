"""Model families from the Hugging Face Hub: one model repo per family (written by `topgap push`), pinned to a
revision, e.g. TOPGAP_HUB_FAMILIES="me/topgap-synthetic-shapes@3f2c9e1,me/topgap-pets@v1".

The download holds the family's card (README.md, card.json, plots/) beside each model's config.json +
model.safetensors, so the app shows its card like a local one. Local folders stay the fallback: when the Hub
cannot be read, the local folder named like the repo (models/topgap-synthetic-shapes) is used, with a warning.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from ..publish import FAMILY_FILES
from .explain import FamilyStore, InputError

__all__ = ["HubStore", "store_from_env", "card_text", "parse_spec"]

log = logging.getLogger(__name__)


def parse_spec(spec: str) -> tuple[str, str | None]:
    """"owner/name@revision" -> (repo_id, revision); a missing @revision means the main branch (not pinned)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    repo_id, _, revision = spec.strip().partition("@")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise InputError(f"{spec!r} is not a Hub family: write OWNER/NAME@REVISION ({e})") from None
    return repo_id, revision or None


class HubStore(FamilyStore):
    """A :class:`FamilyStore` that adds Hub families, named by repo id, downloaded on first use."""

    def __init__(self, root: str | Path, families: str | list[str]):
        super().__init__(root)
        specs = families.split(",") if isinstance(families, str) else families
        self.pinned = dict(parse_spec(s) for s in specs if s.strip())  # repo_id -> revision
        self.remote = list(self.pinned)
        self._downloaded: dict[str, Path] = {}

    def names(self) -> list[str]:
        return super().names() + self.remote  # a repo id has a "/", a local name never does

    def folder(self, name: str) -> Path:
        if name not in self.pinned:
            return super().folder(name)
        if name in self._downloaded:
            return self._downloaded[name]
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, HTTPError

        try:
            path = Path(snapshot_download(name, revision=self.pinned[name], allow_patterns=FAMILY_FILES))
            self._downloaded[name] = path
            return path
        except (HfHubHTTPError, HTTPError, OSError, ValueError) as e:  # LocalEntryNotFoundError is an OSError
            local = self.root / name.split("/")[-1]
            if not local.is_dir():
                raise InputError(f"model family {name} could not be read from the Hub ({type(e).__name__}: {e}) and "
                                 f"there is no local {local}; check the repo id and revision") from None
            log.warning("family %s from the Hub failed (%s); using %s", name, e, local)
            return local


def store_from_env(root: str | Path) -> FamilyStore:
    """The app's families: the folders under `root`, plus TOPGAP_HUB_FAMILIES (comma-separated repo@revision)."""
    specs = os.environ.get("TOPGAP_HUB_FAMILIES", "")
    return HubStore(root, specs) if specs.strip() else FamilyStore(root)


def card_text(readme: Path) -> str:
    """A family card's Markdown without its Hub metadata block (the YAML front matter `topgap push` adds)."""
    from huggingface_hub.repocard import REGEX_YAML_BLOCK

    return REGEX_YAML_BLOCK.sub("", readme.read_text(errors="replace"), count=1).lstrip()
