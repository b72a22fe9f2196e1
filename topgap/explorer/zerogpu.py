"""ZeroGPU on Hugging Face Spaces: `gpu(fn)` is ``spaces.GPU(fn)`` when the `spaces` package is importable (it is
preinstalled on Spaces; outside ZeroGPU hardware spaces.GPU returns fn itself), and `fn` unchanged without it."""
from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

__all__ = ["gpu"]

F = TypeVar("F", bound=Callable)


def gpu(fn: F) -> F:
    """Run `fn` with a ZeroGPU slot when `spaces` is present; identity otherwise."""
    try:
        import spaces
    except ImportError:
        return fn
    return spaces.GPU(fn)
