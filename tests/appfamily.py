"""A tiny random-weight model family (Top-GAP k=4, 16, 64 and a baseline) for the app's tests."""
import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import torch

from topgap import ModelConfig, build_model, save_model

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["circle", "square", "triangle", "star"]
KS = (4, 16, 64)


def make_family(root: Path, name: str = "fam") -> Path:
    """Write the family to root/name and return that folder."""
    torch.manual_seed(0)
    folder = Path(root) / name
    for k in KS:
        cfg = ModelConfig("resnet18", CLASSES, k=k, fpn_channels=16, input_size=(64, 64))
        save_model(build_model(cfg), cfg, folder / f"k{k}")
    cfg = ModelConfig("resnet18", CLASSES, kind="baseline", k=None, input_size=(64, 64))
    save_model(build_model(cfg), cfg, folder / "baseline")
    return folder


@contextlib.contextmanager
def served_app(models: Path, timeout: float = 120):
    """`python app.py` in a subprocess on a free port, serving `models`; yields (process, url), stops it after."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "TOPGAP_MODELS": str(models), "GRADIO_SERVER_PORT": str(port),
           "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_ANALYTICS_ENABLED": "False",
           "MALLOC_ARENA_MAX": "2"}  # as in the Dockerfile: glibc would add an arena per worker thread
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
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
