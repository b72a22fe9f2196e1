import numpy as np
import pytest
import torch
from torch import nn

from topgap.eval.faithfulness import BlurImputer, road_scores


class LeftHalf(nn.Module):
    """Class 0's logit is the left half's mean brightness: only those pixels matter."""

    def forward(self, x):
        left = x[:, :, :, :8].mean((1, 2, 3)) * 20
        return torch.stack([left, torch.zeros_like(left)], 1)


def test_a_map_on_the_pixels_that_matter_scores_higher_than_one_elsewhere():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 16, 16) * 0.2
    x[:, :, 2:14:3, 1:7:2] = 1.0  # fine bright structure on the left, which blurring removes
    right = torch.zeros(2, 16, 16)
    right[:, :, 8:] = torch.rand(2, 16, 8) + 1
    left = torch.zeros(2, 16, 16)
    left[:, :, :8] = x[:, 0, :, :8] + 1
    good = road_scores(LeftHalf(), x, left / left.amax(), [0, 0])
    bad = road_scores(LeftHalf(), x, right / right.amax(), [0, 0])
    assert good.shape == (2,) and (good > bad).all()


def test_blur_imputer_keeps_what_it_does_not_remove():
    img = torch.rand(3, 16, 16)
    mask = torch.zeros(16, 16)
    mask[:, :8] = 1  # keep the left half
    out = BlurImputer()(img, mask)
    assert torch.equal(out[:, :, :8], img[:, :, :8]) and not torch.equal(out[:, :, 8:], img[:, :, 8:])


def test_bad_arguments():
    x = torch.rand(1, 3, 16, 16)
    with pytest.raises(ValueError, match="input size"):
        road_scores(LeftHalf(), x, np.zeros((1, 8, 8)), [0])
    with pytest.raises(ValueError, match="imputer"):
        road_scores(LeftHalf(), x, np.zeros((1, 16, 16)), [0], imputer="zeros")
