import os

import pytest
import torch

DEVICE = torch.device(os.environ.get("TORCH_DEVICE", "cpu"))


@pytest.fixture
def device():
    return DEVICE


@pytest.fixture
def tiny_net():
    """A seeded resnet18 Top-GAP net with 3 classes; 64x64 inputs give 16x16 class maps."""
    from topgap import TopGapNet

    torch.manual_seed(0)
    return TopGapNet("resnet18", num_classes=3, k=8, fpn_channels=32).to(DEVICE)


@pytest.fixture
def one_thread():
    """Tiny models run faster on one thread, and do not stall when other processes share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
