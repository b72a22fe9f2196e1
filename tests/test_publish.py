"""`topgap space deploy` and `topgap push`, offline: the plan, its checks, Hub failures (monkeypatched
huggingface_hub calls), and a family round-tripped through a fake Hub folder into the app's HubStore."""
import json
import re
import shutil
import sys
import types
from pathlib import Path

import httpx2
import huggingface_hub
import pytest
from huggingface_hub import ModelCard
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
from PIL import Image

from appfamily import make_family
from topgap.checkpoint import load_family
from topgap.cli import main
from topgap.explorer.explain import Family, InputError
from topgap.explorer.hub import card_text, store_from_env
from topgap.explorer.zerogpu import gpu
from topgap.publish import deploy, push, space_plan, space_requirements

ROOT = Path(__file__).resolve().parents[1]
README = """---
title: Test Space
emoji: 🎯
colorFrom: indigo
colorTo: yellow
sdk: gradio
sdk_version: 6.31.0
python_version: "3.11"
app_file: app.py
---

# Test
"""
REQS = "torch==2.15.0\ntorchvision==0.29.2\ngradio==6.31.0\n"


def _write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


@pytest.fixture
def repo(tmp_path):
    """A small repository with what a Space needs and what it must not get."""
    r = tmp_path / "repo"
    _write(r / "app.py", "print(1)\n")                                # 9 bytes
    _write(r / "README.md", README)
    _write(r / "requirements.txt", REQS)
    shutil.copyfile(ROOT / ".gitattributes", r / ".gitattributes")
    _write(r / "topgap/__init__.py", "")                                # 0 bytes
    _write(r / "topgap/explorer/hub.py", "x = 1\n")                     # 6 bytes
    _write(r / "assets/images/a.png", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR")  # 16 bytes, binary
    _write(r / "assets/LICENSES.json", json.dumps({"entries": [{"license": "MIT", "author": "us", "source": "synth",
                                                                "files": ["assets/images/a.png"]}]}))
    _write(r / "models/fam/k4/config.json", "{}")                       # 2 bytes
    _write(r / "models/fam/k4/model.safetensors", b"\0" * 100)          # 100 bytes
    _write(r / "models/fam/README.md", "# card\n")                      # 7 bytes
    _write(r / "models/fam/plots/iou.png", b"\x89PNG\0\0")              # 6 bytes
    for out in ("tests/test_x.py", "reports/fam/results.json", "bench/app.py", "models/fam/k4/train_log.json",
                "models/fam/train_args.json", "topgap/__pycache__/x.cpython-311.pyc", ".gradio/cached.png",
                "Dockerfile", "data/x.png"):
        _write(r / out, b"\0out")
    return r


def _plan(capsys, *argv) -> dict:
    assert main(["space", "deploy", "me/space", "--dry-run", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def test_dry_run_lists_what_goes_in_with_sizes_and_lfs(repo, capsys):
    plan = _plan(capsys, "--root", str(repo))
    files = {f["path"]: (f["bytes"], f["lfs"]) for f in plan["files"]}
    reqs = space_requirements(REQS, "cpu-basic")
    assert files == {
        ".gitattributes": ((ROOT / ".gitattributes").stat().st_size, False), "README.md": (len(README.encode()), False),
        "app.py": (9, False), "requirements.txt": (len(reqs), False), "topgap/__init__.py": (0, False),
        "topgap/explorer/hub.py": (6, False), "assets/images/a.png": (16, True),
        "assets/LICENSES.json": ((repo / "assets/LICENSES.json").stat().st_size, False),
        "models/fam/k4/config.json": (2, False), "models/fam/k4/model.safetensors": (100, True),
        "models/fam/README.md": (7, False), "models/fam/plots/iou.png": (6, True)}
    assert plan["total_bytes"] == sum(b for b, _ in files.values()) and plan["count"] == 12 and plan["lfs_count"] == 3
    assert plan["url"] == "https://huggingface.co/spaces/me/space" and plan["dry_run"] is True


def test_families_option_and_unknown_family(repo, capsys):
    assert not [f for f in _plan(capsys, "--root", str(repo), "--families")["files"] if f["path"].startswith("models/")]
    with pytest.raises(ValueError, match=r"no family models/nope .*choose from \['fam'\]"):
        space_plan(repo, ["nope"])


def test_cpu_space_gets_cpu_torch_wheels_and_gpu_space_the_file_as_is():
    cpu = space_requirements(REQS, "cpu-basic").splitlines()
    assert cpu[1] == "--extra-index-url https://download.pytorch.org/whl/cpu"
    assert cpu[2:] == ["torch==2.15.0+cpu", "torchvision==0.29.2+cpu", "gradio==6.31.0"]
    assert space_requirements(REQS, "zero-a10g") == REQS
    with pytest.raises(ValueError, match="must pin torch==X and torchvision==Y"):
        space_requirements("torch>=2\ngradio==6.31.0\n", "cpu-basic")


def test_local_requirements_stay_the_pypi_pins():
    """make install and CI install requirements.txt as it is: the PyPI pair, no other index."""
    text = (ROOT / "requirements.txt").read_text()
    assert re.search(r"^torch==2\.15\.0$", text, re.M) and re.search(r"^torchvision==0\.29\.2$", text, re.M)
    assert "index-url" not in text and "+cpu" not in text


@pytest.mark.parametrize("edit, message", [
    (("sdk_version: 6.31.0", "sdk_version: 6.30.0"), "sdk_version is '6.30.0' but requirements.txt pins gradio==6.31.0"),
    (('python_version: "3.11"', "python_version: 3.10"), r"python_version reads as 3.1; quote it"),
    (("sdk: gradio", "sdk: streamlit"), "sdk is 'streamlit'; set it to one of gradio, docker, static"),
    (("title: Test Space", "title: [Test"), r"is not valid YAML: expected ',' or '\]', but got ':' at line 3 of README.md \(while parsing a flow sequence from line 2\)"),
    (("app_file: app.py", "app_file: main.py"), "app_file 'main.py' is not in the upload"),
])
def test_front_matter_errors_are_reported(repo, edit, message):
    (repo / "README.md").write_text(README.replace(*edit))
    with pytest.raises(ValueError, match=f"^cannot deploy: README.md front matter.*{message}"):
        space_plan(repo)


def test_refuses_an_image_without_a_licence_entry(repo):
    _write(repo / "assets/masks/b.png", b"\x89PNG\0")
    with pytest.raises(ValueError, match=r"no licence for assets/masks/b.png: add it to assets/LICENSES.json"):
        space_plan(repo)
    (repo / "assets/LICENSES.json").unlink()
    with pytest.raises(ValueError, match="assets/LICENSES.json is missing or unreadable"):
        space_plan(repo)


def test_refuses_a_binary_that_gitattributes_keeps_out_of_lfs(repo):
    text = (repo / ".gitattributes").read_text()
    (repo / ".gitattributes").write_text(text.replace("*.png filter=lfs", "#"))
    with pytest.raises(ValueError, match=r"not route through LFS: assets/images/a.png, models/fam/plots/iou.png"):
        space_plan(repo)


def test_this_repository_deploys(capsys):
    """The real plan: front matter valid, every example image licensed, every binary through LFS, nothing extra."""
    plan = _plan(capsys, "--root", str(ROOT))
    paths = {f["path"] for f in plan["files"]}
    assert {"app.py", "README.md", "requirements.txt", ".gitattributes", "assets/LICENSES.json",
            "topgap/explorer/hub.py", "models/synthetic-shapes/baseline/model.safetensors",
            "models/synthetic-shapes/card.json", "models/synthetic-shapes/plots/iou.png"} <= paths
    examples = [p for d in ("images", "masks") for p in (ROOT / "assets" / d).glob("*.png")]
    assert examples and {f"assets/{p.parent.name}/{p.name}" for p in examples} <= paths  # the app's examples
    assert {"assets/photos/chelsea.jpg", "assets/photos/masks/chelsea.png", "assets/textures/grass.jpg"} <= paths
    assert not [p for p in paths if p.startswith(("tests/", "reports/", "bench/")) or p.endswith(".pyc")
                or "train_log" in p or p in ("Dockerfile", "Makefile")]
    assert all(f["lfs"] == f["path"].endswith((".png", ".jpg", ".safetensors")) for f in plan["files"])


def _http_error(status: int) -> HfHubHTTPError:
    request = httpx2.Request("POST", "https://huggingface.co/api/repos/create")
    return HfHubHTTPError(f"{status} error", response=httpx2.Response(status, request=request))


@pytest.fixture
def hub_calls(monkeypatch):
    """Record create_repo / upload_folder calls; a test sets what they do."""
    calls = []
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_test")
    monkeypatch.setattr(huggingface_hub, "create_repo",
                        lambda repo_id, **kw: calls.append(("create", repo_id, kw)) or f"https://hf.co/spaces/{repo_id}")
    return calls


def test_missing_token_uploads_nothing(repo, hub_calls, monkeypatch):
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(ValueError, match=r"no Hugging Face token: run `hf auth login`.*nothing was uploaded"):
        deploy(repo, "me/space")
    assert hub_calls == []


def test_name_taken_says_so_and_that_nothing_was_committed(repo, hub_calls, monkeypatch, capsys):
    def refuse(**kw):
        raise _http_error(403)

    monkeypatch.setattr(huggingface_hub, "upload_folder", refuse)
    assert main(["space", "deploy", "other/space", "--root", str(repo)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("topgap space: error: your token may not write to other/space (403): the name belongs to")
    assert err.endswith("exists but this run committed nothing to it (a commit is all-or-nothing): run the same "
                        "command again") and "\n" not in err
    assert hub_calls[0][2] == {"repo_type": "space", "exist_ok": True, "private": False, "space_sdk": "gradio",
                               "space_hardware": "cpu-basic"}


def test_network_error_before_anything_was_created(repo, monkeypatch):
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_test")

    def offline(repo_id, **kw):
        raise httpx2.ConnectError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(huggingface_hub, "create_repo", offline)
    with pytest.raises(ValueError, match=r"^cannot reach the Hub \(ConnectError: .*name resolution\); check the "
                                         r"network, HF_ENDPOINT and HF_HUB_OFFLINE; nothing was created or uploaded$"):
        deploy(repo, "me/space")


def test_deploy_uploads_exactly_the_plan_in_one_commit(repo, hub_calls, monkeypatch):
    seen = {}

    def upload(folder_path, **kw):
        seen.update(kw, files={p.relative_to(folder_path).as_posix(): p.read_bytes()
                               for p in Path(folder_path).rglob("*") if p.is_file()})
        return types.SimpleNamespace(oid="abc123")

    monkeypatch.setattr(huggingface_hub, "upload_folder", upload)
    out = deploy(repo, "me/space")
    assert out["url"] == "https://hf.co/spaces/me/space" and out["commit"] == "abc123"
    assert set(seen["files"]) == {f["path"] for f in out["files"]} == set(seen["allow_patterns"])
    assert seen["files"]["requirements.txt"].decode() == space_requirements(REQS, "cpu-basic")
    assert seen["files"]["models/fam/k4/model.safetensors"] == b"\0" * 100
    assert seen["delete_patterns"] == "*" and seen["repo_type"] == "space"


# ---- families: topgap push -> a (fake) Hub repo -> the app's HubStore ----

@pytest.fixture
def family(tmp_path):
    fam = make_family(tmp_path / "local", "fam")
    _write(fam / "README.md", "# Fam card\n\nMeasured on nothing.\n")
    _write(fam / "card.json", json.dumps({"evaluation": {"models": {"k4": {"clean": {"accuracy": 0.5}, "iou": 0.3}}}}))
    (fam / "plots").mkdir()
    Image.new("RGB", (4, 4)).save(fam / "plots" / "iou.png")
    _write(fam / "k4" / "train_log.json", "[]")
    return fam


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """upload_folder stores the folder as the repo's one commit; snapshot_download serves it at that revision."""
    hub = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_test")
    monkeypatch.setattr(huggingface_hub, "create_repo", lambda repo_id, **kw: f"https://huggingface.co/{repo_id}")

    def upload(repo_id, folder_path, allow_patterns, **kw):
        shutil.rmtree(hub / repo_id, ignore_errors=True)
        shutil.copytree(folder_path, hub / repo_id)
        return types.SimpleNamespace(oid="c0ffee")

    def download(repo_id, revision, allow_patterns):
        if revision != "c0ffee":
            raise LocalEntryNotFoundError(f"no revision {revision} of {repo_id} in the cache")
        out = tmp_path / "snapshots" / repo_id / revision
        for p in (hub / repo_id).rglob("*"):
            rel = p.relative_to(hub / repo_id).as_posix()
            if p.is_file() and huggingface_hub.utils.filter_repo_objects([rel], allow_patterns=allow_patterns):
                _write(out / rel, p.read_bytes())
        return str(out)

    monkeypatch.setattr(huggingface_hub, "upload_folder", upload)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", download)
    return hub


def test_push_round_trip_into_the_app_store(family, fake_hub, tmp_path, monkeypatch, capsys):
    assert main(["push", str(family), "me/topgap-fam", "--dataset", "me/shapes"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["url"] == "https://huggingface.co/me/topgap-fam" and out["app"] == "TOPGAP_HUB_FAMILIES=me/topgap-fam@c0ffee"
    repo = fake_hub / "me/topgap-fam"
    assert sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*") if p.is_file()) == sorted(
        ["README.md", "card.json", "plots/iou.png"] + [f"{m}/{f}" for m in ("baseline", "k16", "k4", "k64")
                                                       for f in ("config.json", "model.safetensors")])
    meta = ModelCard.load(repo / "README.md").data
    assert meta.library_name == "pytorch" and "top-gap" in meta.tags and meta.datasets == ["me/shapes"]
    assert meta.metrics == ["accuracy", "iou"] and meta.license == "mit"

    monkeypatch.setenv("TOPGAP_HUB_FAMILIES", "me/topgap-fam@c0ffee")
    store = store_from_env(tmp_path / "no-local-models")
    assert store.names() == ["me/topgap-fam"] and store.remote == ["me/topgap-fam"]
    folder = store.folder("me/topgap-fam")
    assert card_text(folder / "README.md") == (family / "README.md").read_text()
    assert (folder / "card.json").read_bytes() == (family / "card.json").read_bytes() and (folder / "plots/iou.png").is_file()
    loaded, original = load_family(folder), load_family(family)
    assert list(loaded) == list(original)
    for name, (model, _) in original.items():
        for key, value in model.state_dict().items():
            assert loaded[name][0].state_dict()[key].equal(value), (name, key)
    assert Family(folder, "me/topgap-fam").ks == [4, 16, 64]


def test_hub_family_falls_back_to_the_local_folder_then_says_what_failed(family, fake_hub, tmp_path, monkeypatch):
    monkeypatch.setenv("TOPGAP_HUB_FAMILIES", "me/fam@deadbeef")  # a revision the (fake) Hub does not have
    assert store_from_env(family.parent).folder("me/fam") == family
    with pytest.raises(InputError, match=r"me/fam could not be read from the Hub \(LocalEntryNotFoundError: no "
                                         r"revision deadbeef.*there is no local .*/fam; check the repo id"):
        store_from_env(tmp_path / "elsewhere").folder("me/fam")
    monkeypatch.setenv("TOPGAP_HUB_FAMILIES", "not a repo@x")
    with pytest.raises(InputError, match="'not a repo@x' is not a Hub family: write OWNER/NAME@REVISION"):
        store_from_env(tmp_path)


def test_push_refuses_a_family_without_a_card(tmp_path):
    fam = make_family(tmp_path, "bare")
    with pytest.raises(ValueError, match=r"bare has no card \(README.md\): write it with `topgap card"):
        push(fam, "me/bare", dry_run=True)


def test_gpu_is_spaces_gpu_when_spaces_is_importable(monkeypatch):
    def fn(x):
        return x + 1

    monkeypatch.setitem(sys.modules, "spaces", None)  # not installed: import fails
    assert gpu(fn) is fn
    fake = types.ModuleType("spaces")
    fake.GPU = lambda f: ("on a GPU slot", f)
    monkeypatch.setitem(sys.modules, "spaces", fake)
    assert gpu(fn) == ("on a GPU slot", fn)
