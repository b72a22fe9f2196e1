"""A tiny random-weight model family (Top-GAP k=4, 16, 64 and a baseline) for the app's tests."""
from pathlib import Path

import torch

from topgap import ModelConfig, build_model, save_model

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
