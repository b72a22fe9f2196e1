import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from topgap import topgap_loss
from topgap.config import ModelConfig
from topgap.loss import loss_terms


def test_lam_zero_is_cross_entropy():
    logits, maps, y = torch.randn(4, 3), torch.randn(4, 3, 5, 5), torch.tensor([0, 2, 1, 1])
    assert_close(topgap_loss(logits, maps, y, lam=0.0), F.cross_entropy(logits, y))


def test_hand_computed_l1_term():
    logits = torch.zeros(1, 2)  # CE = log 2
    maps = torch.tensor([[[[1.0, -3.0]], [[0.0, 4.0]]]])  # mean |X| = 8 / 4 = 2
    y = torch.tensor([1])
    assert_close(topgap_loss(logits, maps, y, lam=0.5), torch.tensor(0.6931472 + 0.5 * 2.0))


def test_gradient_of_l1_term_is_sign_over_count():
    maps = torch.tensor([[[[2.0, -1.0]]]], requires_grad=True)
    topgap_loss(torch.zeros(1, 1), maps, torch.tensor([0]), lam=1.0).backward()
    assert_close(maps.grad, torch.tensor([[[[0.5, -0.5]]]]))


def test_bad_arguments():
    with pytest.raises(ValueError, match="lam"):
        topgap_loss(torch.zeros(1, 2), torch.zeros(1, 2, 1, 1), torch.tensor([0]), lam=-1)
    with pytest.raises(ValueError, match="disagree"):
        topgap_loss(torch.zeros(1, 2), torch.zeros(1, 3, 1, 1), torch.tensor([0]))


def test_label_smoothing_is_the_same_for_baseline_and_topgap():
    # logits (2, 0), label 0, smoothing 0.2 over 2 classes: target (0.9, 0.1), L = ln(1 + e^2);
    # CE = -(0.9 (2 - L) + 0.1 (-L)) = L - 1.8
    logits, y = torch.tensor([[2.0, 0.0]]), torch.tensor([0])
    ce = math.log(1 + math.e ** 2) - 1.8
    maps = torch.full((1, 2, 3, 3), -0.5)  # mean |X| = 0.5
    assert float(topgap_loss(logits, None, y, lam=0.0, label_smoothing=0.2)) == pytest.approx(ce)  # the baseline
    assert float(topgap_loss(logits, maps, y, lam=0.4, label_smoothing=0.2)) == pytest.approx(ce + 0.4 * 0.5)
    assert float(topgap_loss(logits, maps, y, lam=0.4)) == pytest.approx(ce - 0.2 + 0.4 * 0.5)  # no smoothing: L - 2
    assert [float(t) for t in loss_terms(logits, maps, y, 0.2)] == pytest.approx([ce, 0.5])
    assert float(loss_terms(logits, None, y)[1]) == 0.0


def test_loss_is_float32_under_bfloat16():
    logits, maps = torch.randn(2, 3).bfloat16(), torch.randn(2, 3, 4, 4).bfloat16()
    ce, l1 = loss_terms(logits, maps, torch.tensor([0, 1]))
    assert ce.dtype == l1.dtype == torch.float32
    assert_close(l1, maps.float().abs().mean())


def test_label_smoothing_out_of_range():
    with pytest.raises(ValueError, match=r"label_smoothing must lie in \[0, 1\) \(got 1.0\)"):
        topgap_loss(torch.zeros(1, 2), None, torch.tensor([0]), lam=0.0, label_smoothing=1.0)


def test_what_lam_multiplies_is_the_configured_l1_norm():
    """"mean": mean|X| over batch, classes and cells; "sum": ||X||_1 of each image, averaged over the batch (eq. 3
    read literally), so mean = sum / (C*h*w)."""
    maps = torch.tensor([[[[1.0, -1.0], [0.0, 2.0]], [[0.0, 0.0], [0.0, -4.0]]],      # image 0: |X| sums to 8
                         [[[0.5, 0.5], [0.5, 0.5]], [[0.0, 0.0], [0.0, 0.0]]]])      # image 1: 2
    logits, y = torch.zeros(2, 2), torch.tensor([0, 1])
    _, mean = loss_terms(logits, maps, y)
    _, total = loss_terms(logits, maps, y, l1_norm="sum")
    assert mean.item() == pytest.approx(10 / 16) and total.item() == pytest.approx((8 + 2) / 2)
    assert total.item() == pytest.approx(mean.item() * 2 * 2 * 2)  # C*h*w = 8
    assert topgap_loss(logits, maps, y, lam=0.5, l1_norm="sum").item() == pytest.approx(math.log(2) + 0.5 * 5)
    with pytest.raises(ValueError, match="l1_norm must be one of mean, sum"):
        loss_terms(logits, maps, y, l1_norm="max")
    with pytest.raises(ValueError, match="l1_norm must be 'mean' or 'sum'"):
        ModelConfig("resnet18", ["a", "b"], l1_norm="l2")
