"""Tiny in-memory datasets with the item layout of topgap.data, for tests that must not need real data."""
import os
import time

import torch
from torch.utils.data import Dataset


class SquaresDataset(Dataset):
    """Class c = a bright square in quadrant c on noise; the mask marks the square.

    With SQUARES_DELAY set (seconds), each item sleeps that long: lets a test kill a run mid-epoch.
    """

    def __init__(self, n: int = 16, size: int = 32, num_classes: int = 2, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.class_names = [f"quadrant{c}" for c in range(num_classes)]
        self.labels = [i % num_classes for i in range(n)]
        self.images = torch.rand(n, 3, size, size, generator=g) * 0.3
        self.masks = torch.zeros(n, size, size, dtype=torch.uint8)
        s = size // 4
        for i, c in enumerate(self.labels):
            y, x = (c // 2) * size // 2 + s // 2, (c % 2) * size // 2 + s // 2
            self.images[i, :, y:y + s, x:x + s] = 1.0
            self.masks[i, y:y + s, x:x + s] = 1
        self.has_masks = True

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        if os.environ.get("SQUARES_DELAY"):
            time.sleep(float(os.environ["SQUARES_DELAY"]))
        return {"image": self.images[i], "label": self.labels[i], "mask": self.masks[i], "has_mask": True, "index": i}
