"""A trained model is a folder: ``config.json`` (a :class:`ModelConfig`) and ``model.safetensors``.

The weights are written first and config.json last, each atomically; config.json records the
weights' SHA-256, so a folder is either complete and consistent or refused with a clear error.
No pickle anywhere: safetensors holds only tensors.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .config import ModelConfig
from .io import atomic_write, write_json
from .model import TopGapNet, check_backbone, create_baseline

__all__ = ["build_model", "save_model", "load_model", "load_family", "read_config", "CheckpointError"]

CONFIG, WEIGHTS = "config.json", "model.safetensors"


class CheckpointError(ValueError):
    """A model folder that cannot be loaded; the message says which file and what to do."""


def build_model(cfg: ModelConfig, pretrained: bool = False) -> nn.Module:
    """An untrained TopGapNet or baseline as `cfg` describes it."""
    if cfg.kind == "baseline":
        return create_baseline(cfg.backbone, cfg.num_classes, dropout=cfg.dropout, pretrained=pretrained,
                               last_stage=cfg.last_stage)
    return TopGapNet(cfg.backbone, cfg.num_classes, cfg.k, num_maps=cfg.num_maps, fpn_channels=cfg.fpn_channels,
                     dropout=cfg.dropout, fpn=cfg.fpn, pretrained=pretrained, last_stage=cfg.last_stage,
                     pooling=cfg.pooling, pooling_params=cfg.pooling_params)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_model(model: nn.Module, cfg: ModelConfig, folder: str | Path, *, dtype: torch.dtype | None = None) -> Path:
    """Write `model`'s weights and `cfg` to `folder`, atomically.

    Args:
        dtype: e.g. torch.float16 to halve the file; floating tensors are cast, and
            :func:`load_model` casts them back to the model's dtype.
    """
    folder = Path(folder)
    state = {}
    for name, t in model.state_dict().items():
        t = t.detach().cpu()
        state[name] = (t.to(dtype) if dtype is not None and t.is_floating_point() else t).contiguous()
    weights = atomic_write(folder / WEIGHTS, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
    write_json(folder / CONFIG, {**cfg.to_dict(), "weights_sha256": _sha256(weights)})
    return folder


def read_config(folder: str | Path) -> ModelConfig:
    """The :class:`ModelConfig` of a model folder, with clear errors."""
    path = Path(folder) / CONFIG
    if not path.is_file():
        raise CheckpointError(f"{path} not found: a model folder holds {CONFIG} and {WEIGHTS} (see topgap.save_model)")
    try:
        data = json.loads(path.read_text())
        return ModelConfig.from_dict(data)
    except (json.JSONDecodeError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path} is not a valid topgap config: {e}") from None


def load_model(folder: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelConfig]:
    """Load a model folder written by :func:`save_model`; returns (model in eval mode, config).

    Raises:
        CheckpointError: missing or corrupt files, an unknown backbone, weights whose shapes or
            class count disagree with config.json. The message names the file and the fix.
    """
    folder = Path(folder)
    cfg = read_config(folder)
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{weights} not found; re-save the model or copy the whole folder")
    expected = json.loads((folder / CONFIG).read_text()).get("weights_sha256")
    if expected and _sha256(weights) != expected:
        raise CheckpointError(f"{weights} does not match {CONFIG} (SHA-256 differs): the file is truncated or was "
                              "replaced after the config was written; re-download or re-save the model")
    try:
        check_backbone(cfg.backbone)
    except ValueError as e:
        raise CheckpointError(f"{folder / CONFIG}: {e}") from None
    try:
        state = load_file(weights)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{weights} is not a readable safetensors file ({e}); re-download or re-save it") from None
    model = build_model(cfg)
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"{weights} does not fit a {cfg.kind} {cfg.backbone} model: missing {missing[:4]}, "
                              f"unexpected {unexpected[:4]}; is config.json's backbone/num_maps/fpn/last_stage right?")
    for name, t in own.items():
        if state[name].shape != t.shape:
            raise CheckpointError(f"{weights}: {name} has shape {tuple(state[name].shape)} but config.json "
                                  f"({cfg.num_classes} classes, backbone {cfg.backbone}) needs {tuple(t.shape)}; "
                                  "class_names and the weights disagree")
        state[name] = state[name].to(t.dtype)
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), cfg


def family_members(folder: str | Path) -> list[Path]:
    """Model folders directly under a family folder: Top-GAP models by increasing k, then the rest by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a folder; a family is a folder of model folders (k8/, baseline/, ...)")
    members = [p for p in sorted(folder.iterdir()) if (p / CONFIG).is_file()]
    if not members:
        raise CheckpointError(f"{folder} holds no model folder (a subfolder with {CONFIG}); train one with topgap train")
    configs = {p: read_config(p) for p in members}
    return sorted(members, key=lambda p: (configs[p].kind != "topgap", configs[p].k or 0, p.name))


def load_family(folder: str | Path, device: str | torch.device = "cpu") -> dict[str, tuple[nn.Module, ModelConfig]]:
    """Load every model of a family folder: {subfolder name: (model, config)}, Top-GAP by k first, baseline last."""
    return {p.name: load_model(p, device) for p in family_members(folder)}
