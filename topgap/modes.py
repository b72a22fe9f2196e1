"""One way to run a model in eval mode without disturbing its owner (paper 3.1: prediction and CAM modes)."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

__all__ = ["eval_mode"]


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode inside the block; afterwards every submodule gets back its *own* training flag.

    ``model.train(was_training)`` would unfreeze a batch norm that its owner froze on purpose; this
    restores each flag one by one. Parameter gradients are left as the caller had them: whatever a
    CAM or an attack accumulates inside the block is discarded, a caller's accumulated ``.grad`` kept.

    Example:
        >>> with eval_mode(net):
        ...     logits = net(x)
    """
    flags = [(m, m.training) for m in model.modules()]
    grads = [(p, None if p.grad is None else p.grad.detach().clone()) for p in model.parameters()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag
        for p, g in grads:
            p.grad = g
