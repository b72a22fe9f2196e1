import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from topgap import topgap_loss


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
