"""Tiny random-weight model families (Top-GAP k=4, 16, 64 and a baseline by default) and a served app for the
app's tests."""
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import torch

from topgap import ModelConfig, build_model, save_model

ROOT = Path(__file__).resolve().parents[1]
CARD = Path(__file__).resolve().parent / "fixtures" / "synthetic-card"  # a card as `topgap card` writes it (k 4/16/64)
CLASSES = ["circle", "square", "triangle", "star"]
KS = (4, 16, 64)


def make_family(root: Path, name: str = "fam", ks: tuple[int, ...] = KS, card: bool | Path = False) -> Path:
    """Write the family to root/name and return that folder; card=True copies CARD (card.json as `topgap card`
    wrote it for a synthetic family of these KS, and its plots), a folder copies that folder's card and plots."""
    torch.manual_seed(0)
    folder = Path(root) / name
    if card:
        source = CARD if card is True else Path(card)
        shutil.copytree(source / "plots", folder / "plots")
        shutil.copyfile(source / "card.json", folder / "card.json")
    for k in ks:
        cfg = ModelConfig("resnet18", CLASSES, k=k, fpn_channels=16, input_size=(64, 64))
        save_model(build_model(cfg), cfg, folder / f"k{k}")
    cfg = ModelConfig("resnet18", CLASSES, kind="baseline", k=None, input_size=(64, 64))
    save_model(build_model(cfg), cfg, folder / "baseline")
    return folder


@contextlib.contextmanager
def served_app(models: Path, timeout: float = 120, workdir: Path | None = None):
    """`python app.py` in a subprocess on a free port, serving `models`; yields (process, url), stops it after.

    With `workdir`, the app's temp folders go under workdir/tmp and its log (stdout and stderr) to workdir/app.log.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "TOPGAP_MODELS": str(models), "GRADIO_SERVER_PORT": str(port),
           "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_ANALYTICS_ENABLED": "False",
           "MALLOC_ARENA_MAX": "2"}  # as in the Dockerfile: glibc would add an arena per worker thread
    log = subprocess.DEVNULL
    if workdir is not None:
        (workdir / "tmp").mkdir(parents=True, exist_ok=True)
        env["TMPDIR"] = str(workdir / "tmp")
        log = open(workdir / "app.log", "wb")  # noqa: SIM115  (closed below)
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if urllib.request.urlopen(url, timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
            if proc.poll() is not None:
                raise RuntimeError("python app.py exited during start-up")
            if time.monotonic() > deadline:
                raise RuntimeError(f"python app.py did not answer within {timeout} s")
        yield proc, url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if workdir is not None:
            log.close()


def client_bursts(url: str, image: Path, mask: Path | None, clients: int = 8, requests: int = 25) -> list[str]:
    """`clients` gradio_client sessions in threads, each calling /explain `requests` times with the image (and
    mask); returns the errors (repr), empty when every call answered with models."""
    from gradio_client import Client, handle_file

    errors: list[str] = []

    def burst():
        c = Client(url, verbose=False)
        for _ in range(requests):
            try:
                r = c.predict(handle_file(image), handle_file(mask) if mask else None, api_name="/explain")
                assert r["models"], r
            except Exception as e:  # noqa: BLE001  (collected and reported)
                errors.append(repr(e))

    threads = [threading.Thread(target=burst) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors
