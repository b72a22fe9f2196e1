"""Expose this interpreter's torch and torchvision (and only what they need) to a fresh virtual environment.

CI checks that `pip install -c requirements.txt .` into a fresh venv gives a working `topgap`, i.e. that
pyproject.toml declares every runtime import. Downloading torch's CUDA build (about 6 GB) for that is not
worth it, so the venv sees the already-installed torch closure through a .pth file pointing to a folder of
symlinks; every other package is installed from the registry as a user's pip would.

Usage: python .ci/torch_overlay.py VENV_SITE_PACKAGES
"""
import importlib.metadata as md
import sys
from pathlib import Path

from packaging.requirements import Requirement

ROOTS = ["torch", "torchvision"]


def closure(names: list[str]) -> dict[str, md.Distribution]:
    """The installed distributions `names` need, recursively (markers evaluated, extras followed)."""
    found: dict[str, md.Distribution] = {}
    todo = [(n, frozenset()) for n in names]
    while todo:
        name, extras = todo.pop()
        dist = md.distribution(name)
        key = dist.metadata["Name"].lower().replace("_", "-")
        if key in found and not extras:
            continue
        found[key] = dist
        for text in dist.requires or []:
            req = Requirement(text)
            envs = [{"extra": e} for e in extras] or [{"extra": ""}]
            if req.marker is None or any(req.marker.evaluate(env) for env in envs):
                todo.append((req.name, frozenset(req.extras)))
    return found


def main(site: str) -> None:
    overlay = Path(site).parent / "torch-overlay"
    overlay.mkdir(exist_ok=True)
    for dist in closure(ROOTS).values():
        base = Path(dist.locate_file(""))
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            src, dst = base / top, overlay / top
            if src.exists() and not dst.exists() and top != "__pycache__" and not top.endswith(".pth"):
                dst.symlink_to(src)
    (Path(site) / "torch-overlay.pth").write_text(str(overlay) + "\n")
    print(f"{len(list(overlay.iterdir()))} entries of the torch closure linked into {overlay}")


if __name__ == "__main__":
    main(sys.argv[1])
