"""Publishing on the Hugging Face Hub: the app as a Gradio Space (`topgap space deploy`) and a model family as a
model repo (`topgap push`).

Both lay out the exact files first (a plan: path, size, LFS or not), check them offline, and then make ONE commit
with ``huggingface_hub.upload_folder``, which stores binaries through LFS/Xet by itself; remote files that are not in
the plan are deleted in that commit, so the repo mirrors the plan. A commit is all-or-nothing: after any failure the
repo keeps its previous commit, and the message says so.

    topgap space deploy USER/topgap-explorer --dry-run       # every file, its size, LFS or not, the total
    topgap push models/synthetic-shapes USER/topgap-synthetic-shapes
"""
from __future__ import annotations

import argparse
import contextlib
import fnmatch
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PlanFile", "FAMILY_FILES", "space_plan", "family_plan", "deploy", "push", "register"]

# What a Space needs, relative to the repository root (families are added by space_plan).
SPACE_FILES = ["app.py", "README.md", "requirements.txt", ".gitattributes", "topgap/**/*.py",
               "assets/LICENSES.json", "assets/images/*", "assets/masks/*", "assets/photos/*.jpg",
               "assets/photos/masks/*", "assets/textures/*"]
# What a family needs, relative to its folder: the card and each model's config + weights (no logs, no caches).
FAMILY_FILES = ["README.md", "card.json", "plots/*.png", "*/config.json", "*/model.safetensors"]
LICENSES = "assets/LICENSES.json"  # {"entries": [{"license", "author", "source", "files": [repo paths]}]}
IMAGES = {".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff"}
CPU_WHEELS = "https://download.pytorch.org/whl/cpu"
SDKS = ("gradio", "docker", "static")
FAMILY_TAGS = ["top-gap", "class-activation-maps", "explainability", "image-classification", "timm"]
METRICS = {"clean": "accuracy", "iou": "iou", "l1": "l1_sparsity", "mass_in_mask": "mass_in_mask",
           "white_box_rate": "adversarial_robustness"}  # card.json evaluation key -> metrics metadata


@dataclass(frozen=True)
class PlanFile:
    """One file of an upload: its path in the repo, size in bytes, whether it goes as LFS, and its content
    (a file to copy, or `text` written by the plan itself)."""

    path: str
    size: int
    lfs: bool
    source: Path | None = None
    text: str | None = None


def lfs_patterns(gitattributes: Path) -> list[str]:
    """The patterns that .gitattributes routes through LFS (``PATTERN ... filter=lfs``)."""
    if not gitattributes.is_file():
        return []
    lines = (ln.split() for ln in gitattributes.read_text().splitlines() if not ln.lstrip().startswith("#"))
    return [parts[0] for parts in lines if len(parts) > 1 and "filter=lfs" in parts[1:]]


def goes_lfs(path: str, patterns: list[str]) -> bool:
    """Whether git would store `path` through LFS: a pattern without "/" matches the file name at any depth."""
    return any(fnmatch.fnmatch(path if "/" in p else path.rsplit("/", 1)[-1], p.lstrip("/")) for p in patterns)


def is_binary(path: Path) -> bool:
    """What the Hub stores through LFS/Xet whatever .gitattributes says: a NUL byte in the first 8000 bytes
    (git's own test) or more than 10 MB."""
    with open(path, "rb") as f:
        return b"\0" in f.read(8000) or path.stat().st_size > 10_000_000


def _files(folder: Path, patterns: list[str], prefix: str, lfs: list[str] | None) -> list[PlanFile]:
    """The files under `folder` matching `patterns`, as `prefix` + relative path; LFS by the .gitattributes
    patterns `lfs`, or (None) by content."""
    paths = sorted({p for pat in patterns for p in folder.glob(pat) if p.is_file()})
    plan = []
    for p in paths:
        path = f"{prefix}{p.relative_to(folder).as_posix()}"
        plan.append(PlanFile(path, p.stat().st_size, is_binary(p) if lfs is None else goes_lfs(path, lfs), source=p))
    return plan


def space_requirements(text: str, hardware: str) -> str:
    """requirements.txt for the Space: on CPU hardware torch/torchvision come as CPU wheels (no CUDA libraries)
    from PyTorch's index; on GPU hardware (ZeroGPU included) the file is kept as it is."""
    if not hardware.startswith("cpu"):
        return text
    pinned = r"^(torch|torchvision)==([^\s+#]+)\s*$"
    if len(re.findall(pinned, text, re.M)) != 2:
        raise ValueError("requirements.txt must pin torch==X and torchvision==Y (one line each) for CPU wheels")
    body = re.sub(pinned, r"\1==\2+cpu", text, flags=re.M)
    return (f"# written by `topgap space deploy --hardware {hardware}`: CPU-only torch wheels, no CUDA libraries\n"
            f"--extra-index-url {CPU_WHEELS}\n{body}")


def front_matter_errors(readme: Path, requirements: str, paths: set[str]) -> list[str]:
    """What the Hub would refuse or misread in README.md's front matter (checked with huggingface_hub.SpaceCard)."""
    import yaml
    from huggingface_hub import SpaceCard

    if not readme.is_file():
        return ["README.md is missing: a Space is configured by its front matter"]
    try:
        data = SpaceCard.load(readme).data.to_dict()
    except yaml.MarkedYAMLError as e:
        where = f" at line {e.problem_mark.line + 2} of README.md" if e.problem_mark else ""
        since = f" ({e.context} from line {e.context_mark.line + 2})" if e.context and e.context_mark else ""
        return [f"README.md front matter is not valid YAML: {e.problem}{where}{since}"]
    except (ValueError, yaml.YAMLError) as e:
        return [f"README.md front matter is not valid YAML: {e}"]
    errors = []
    if data.get("sdk") not in SDKS:
        errors.append(f"README.md front matter: sdk is {data.get('sdk')!r}; set it to one of {', '.join(SDKS)}")
    pin = re.search(r"^gradio==(\S+)\s*$", requirements, re.M)
    if data.get("sdk") == "gradio" and (not pin or str(data.get("sdk_version")) != pin.group(1)):
        errors.append(f"README.md front matter: sdk_version is {data.get('sdk_version')!r} but requirements.txt pins "
                      f"gradio=={pin.group(1) if pin else '(nothing)'}; make them equal")
    if "python_version" in data and not isinstance(data["python_version"], str):
        errors.append(f"README.md front matter: python_version reads as {data['python_version']!r}; quote it "
                      '(python_version: "3.11")')
    if data.get("sdk") == "gradio" and data.get("app_file", "app.py") not in paths:
        errors.append(f"README.md front matter: app_file {data.get('app_file')!r} is not in the upload")
    if not data.get("title"):
        errors.append("README.md front matter: title is missing")
    if len(str(data.get("short_description", ""))) > 60:
        errors.append("README.md front matter: short_description is longer than 60 characters")
    return errors


def licence_errors(root: Path, paths: list[str], family_images: list[str]) -> list[str]:
    """Images of the upload without a licence entry in assets/LICENSES.json (the families' own plots excepted)."""
    images = [p for p in paths if Path(p).suffix.lower() in IMAGES and p not in family_images]
    try:
        entries = json.loads((root / LICENSES).read_text())["entries"]
        licensed = {f for e in entries if e.get("license") and e.get("source") for f in e["files"]}
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        return [f"{LICENSES} is missing or unreadable ({e}); list each image with its license and source"] if images else []
    missing = [p for p in images if p not in licensed]
    return [f"no licence for {', '.join(missing)}: add it to {LICENSES} (license, author, source) or remove it"] \
        if missing else []


def space_plan(root: str | Path, families: list[str] | None = None, hardware: str = "cpu-basic") -> list[PlanFile]:
    """The files of a Space deploy, checked: front matter, licences of images. `families`: names under models/
    (None: every family there). Raises ValueError listing every problem."""
    root = Path(root)
    lfs = lfs_patterns(root / ".gitattributes")
    plan = [f for f in _files(root, SPACE_FILES, "", lfs) if f.path != "requirements.txt"]
    names = sorted(p.parent.parent.name for p in (root / "models").glob("*/*/config.json")) \
        if families is None else families
    family_files = []
    for name in dict.fromkeys(names):
        if not list((root / "models" / name).glob("*/config.json")):
            raise ValueError(f"no family models/{name} (a folder of <model>/config.json); choose from "
                             f"{sorted({p.parent.parent.name for p in (root / 'models').glob('*/*/config.json')})}")
        family_files += _files(root / "models" / name, FAMILY_FILES, f"models/{name}/", lfs)
    try:
        reqs = space_requirements((root / "requirements.txt").read_text(), hardware)
    except OSError:
        raise ValueError(f"{root / 'requirements.txt'} is missing: a Space installs its packages from it") from None
    plan = sorted(plan + family_files + [PlanFile("requirements.txt", len(reqs.encode()), False, text=reqs)],
                  key=lambda f: f.path)
    paths = [f.path for f in plan]
    errors = front_matter_errors(root / "README.md", reqs, set(paths))
    plain = [f.path for f in plan if f.source and not f.lfs and is_binary(f.source)]
    if plain:
        errors.append(f"binary files that .gitattributes does not route through LFS: {', '.join(plain)}; add "
                      "their patterns (a plain git push to a Space would be refused)")
    errors += licence_errors(root, paths, [f.path for f in family_files])
    if errors:
        raise ValueError("cannot deploy: " + "; ".join(errors))
    return plan


def family_plan(family: str | Path, *, datasets: list[str] | None = None, license: str = "mit") -> list[PlanFile]:
    """The files of a family's model repo: each model's config.json + model.safetensors, card.json, plots/, and the
    card as README.md with Hub metadata (library_name, tags, datasets, metrics). The weights are checked first."""
    from huggingface_hub import ModelCard, ModelCardData
    from huggingface_hub.repocard import REGEX_YAML_BLOCK

    from .checkpoint import load_family

    family = Path(family)
    if not (family / "README.md").is_file():
        raise ValueError(f"{family} has no card (README.md): write it with `topgap card {family} ...` first; "
                         "it becomes the repo's README")
    load_family(family)  # refuses truncated weights, unknown backbones, mismatched classes
    metrics = []
    with contextlib.suppress(OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
        evaluated = json.loads((family / "card.json").read_text())["evaluation"]["models"].values()
        metrics = [m for key, m in METRICS.items() if any(key in e for e in evaluated)]
    data = ModelCardData(library_name="pytorch", license=license, tags=FAMILY_TAGS, datasets=datasets or None,
                         metrics=metrics or None, pipeline_tag="image-classification")
    body = REGEX_YAML_BLOCK.sub("", (family / "README.md").read_text(), count=1).lstrip()
    readme = str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}"))
    files = [f for f in _files(family, FAMILY_FILES, "", None) if f.path != "README.md"]
    return sorted(files + [PlanFile("README.md", len(readme.encode()), False, text=readme)], key=lambda f: f.path)


def stage(plan: list[PlanFile], dest: Path) -> Path:
    """Lay the plan out in `dest` (hard links where possible, else copies; `text` files written)."""
    for f in plan:
        target = dest / f.path
        target.parent.mkdir(parents=True, exist_ok=True)
        if f.text is not None:
            target.write_text(f.text)
            continue
        try:
            os.link(f.source, target)
        except OSError:
            shutil.copyfile(f.source, target)
    return dest


def _summary(plan: list[PlanFile]) -> dict:
    total = sum(f.size for f in plan)
    return {"files": [{"path": f.path, "bytes": f.size, "lfs": f.lfs} for f in plan], "count": len(plan),
            "lfs_count": sum(f.lfs for f in plan), "total_bytes": total, "total": f"{total / 1e6:.1f} MB"}


@contextlib.contextmanager
def _hub_errors(repo_id: str, url: str, created: list[bool]):
    """Hub failures as one line that says what happened to the repo and what to do."""
    from huggingface_hub.errors import HfHubHTTPError, HTTPError

    def after() -> str:
        return (f"; {url} exists but this run committed nothing to it (a commit is all-or-nothing): run the same "
                "command again") if created else "; nothing was created or uploaded"

    try:
        yield
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else None
        why = {401: "the Hub refused the token (401): log in again with `hf auth login` and a write token",
               402: "the Hub asks for payment for this repo or hardware (402): choose free hardware (cpu-basic)",
               403: f"your token may not write to {repo_id} (403): the name belongs to another user or organisation "
                    "(pick YOUR_USER/NAME), or the token is read-only (make a write token)",
               409: f"the name {repo_id} is taken (409): pick another name"}.get(status)
        raise ValueError((why or f"the Hub answered {status}: {' '.join(str(e).split())}") + after()) from None
    except (HTTPError, ConnectionError, TimeoutError) as e:  # network: DNS, refused, timeout, HF_HUB_OFFLINE=1
        raise ValueError(f"cannot reach the Hub ({type(e).__name__}: {e}); check the network, HF_ENDPOINT and "
                         f"HF_HUB_OFFLINE{after()}") from None


def _upload(repo_id: str, repo_type: str, plan: list[PlanFile], message: str, **create) -> tuple[str, str]:
    """create_repo (kept if it exists) + one upload_folder commit that mirrors the plan; returns (url, commit)."""
    import huggingface_hub as hf

    if not hf.get_token():
        raise ValueError("no Hugging Face token: run `hf auth login` (a token with write access) or set HF_TOKEN; "
                         "nothing was uploaded")
    prefix = "spaces/" if repo_type == "space" else ""
    url, created = f"https://huggingface.co/{prefix}{repo_id}", []
    with _hub_errors(repo_id, url, created):
        url = str(hf.create_repo(repo_id, repo_type=repo_type, exist_ok=True, **create))
        created.append(True)
        with tempfile.TemporaryDirectory(prefix="topgap-upload-") as tmp:
            info = hf.upload_folder(repo_id=repo_id, repo_type=repo_type, folder_path=stage(plan, Path(tmp)),
                                    commit_message=message, allow_patterns=[f.path for f in plan],
                                    delete_patterns="*")
    return url, info.oid


def deploy(root: str | Path, repo_id: str, *, families: list[str] | None = None, hardware: str = "cpu-basic",
           private: bool = False, dry_run: bool = False) -> dict:
    """Deploy the app in `root` as the Gradio Space `repo_id`; with `dry_run`, only the checked plan."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise ValueError(f"{repo_id!r} is not a repo id ({e}); write USER/NAME") from None
    plan = space_plan(root, families, hardware)
    torch = f"CPU wheels from {CPU_WHEELS}" if hardware.startswith("cpu") else "requirements.txt as it is (CUDA)"
    out = {"repo_id": repo_id, "hardware": hardware, "torch": torch, **_summary(plan)}
    if dry_run:
        return {"dry_run": True, "url": f"https://huggingface.co/spaces/{repo_id}", **out}
    from huggingface_hub import SpaceCard

    sdk = SpaceCard.load(Path(root) / "README.md").data.sdk
    url, commit = _upload(repo_id, "space", plan, "Deploy the Top-GAP explorer (topgap space deploy)",
                          private=private, space_sdk=sdk, space_hardware=hardware)
    return {"url": url, "commit": commit, **out}


def push(family: str | Path, repo_id: str, *, datasets: list[str] | None = None, license: str = "mit",
         private: bool = False, dry_run: bool = False) -> dict:
    """Push a family folder to the model repo `repo_id`; the app loads it with
    TOPGAP_HUB_FAMILIES=repo_id@commit (see topgap.explorer.hub)."""
    plan = family_plan(family, datasets=datasets, license=license)
    out = {"repo_id": repo_id, **_summary(plan)}
    if dry_run:
        return {"dry_run": True, **out}
    url, commit = _upload(repo_id, "model", plan, f"Push the {Path(family).name} family (topgap push)",
                          private=private)
    return {"url": url, "commit": commit, "app": f"TOPGAP_HUB_FAMILIES={repo_id}@{commit}", **out}


def _deploy(args: argparse.Namespace) -> dict:
    return deploy(args.root, args.repo_id, families=args.families, hardware=args.hardware, private=args.private,
                  dry_run=args.dry_run)


def _push(args: argparse.Namespace) -> dict:
    return push(args.family, args.repo_id, datasets=args.dataset, license=args.license, private=args.private,
                dry_run=args.dry_run)


def register(subparsers) -> None:
    """Add ``topgap space deploy`` and ``topgap push``."""
    fmt = argparse.ArgumentDefaultsHelpFormatter
    space = subparsers.add_parser("space", help="Hugging Face Spaces", description=__doc__, formatter_class=fmt)
    p = space.add_subparsers(dest="space_command", required=True).add_parser(
        "deploy", help=deploy.__doc__, description=deploy.__doc__, formatter_class=fmt)
    p.add_argument("repo_id", help="USER/NAME of the Space")
    p.add_argument("--root", default=".", help="the repository to deploy (app.py, README.md, models/)")
    p.add_argument("--families", nargs="*", default=None,
                   help="families under models/ to ship (default: all; none with the option alone)")
    p.add_argument("--hardware", default="cpu-basic",
                   help="Space hardware (cpu-basic, zero-a10g, ...): cpu* gets CPU torch wheels; used when the "
                        "Space is created, an existing Space keeps its own")
    p.add_argument("--private", action="store_true", help="create the Space private")
    p.add_argument("--dry-run", action="store_true", help="list the files (size, LFS) and the total; upload nothing")
    p.set_defaults(func=_deploy)
    p = subparsers.add_parser("push", help=push.__doc__, description=push.__doc__, formatter_class=fmt)
    p.add_argument("family", help="a family folder (card + <model>/config.json, model.safetensors)")
    p.add_argument("repo_id", help="USER/NAME of the model repo")
    p.add_argument("--dataset", action="append", default=None, help="a Hub dataset id for the metadata (repeat)")
    p.add_argument("--license", default="mit")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--dry-run", action="store_true", help="list the files (size, LFS) and the total; upload nothing")
    p.set_defaults(func=_push)
