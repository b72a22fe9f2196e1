import pytest
import torch
from torch.testing import assert_close

from topgap import TopGAP, top_gap


def test_hand_computed_mean_of_top_k():
    x = torch.tensor([[[[1.0, 5.0], [3.0, -2.0]], [[0.0, 0.0], [7.0, 1.0]]]])  # (1, 2, 2, 2)
    assert_close(top_gap(x, 1), torch.tensor([[5.0, 7.0]]))
    assert_close(top_gap(x, 2), torch.tensor([[4.0, 4.0]]))  # (5+3)/2, (7+1)/2
    assert_close(top_gap(x, 3), torch.tensor([[3.0, 8.0 / 3.0]]))  # (5+3+1)/3, (7+1+0)/3


def test_k1_is_global_max_and_full_k_is_global_mean():
    x = torch.randn(4, 5, 7, 9)
    assert_close(top_gap(x, 1), x.amax((2, 3)))
    assert_close(top_gap(x, 63), x.mean((2, 3)))
    assert_close(top_gap(x, 1000), x.mean((2, 3)))
    assert_close(top_gap(x, None), x.mean((2, 3)))


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_k_raises_with_fix(bad):
    with pytest.raises(ValueError, match="k"):
        top_gap(torch.randn(1, 1, 2, 2), bad)
    with pytest.raises(ValueError):
        TopGAP(bad)


def test_wrong_rank_raises():
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        top_gap(torch.randn(3, 4), 1)


def test_gradient_reaches_exactly_the_top_k_positions():
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    k = 5
    top_gap(x, k).sum().backward()
    flat_x, flat_g = x.detach().flatten(2), x.grad.flatten(2)
    top_idx = flat_x.topk(k, dim=-1).indices
    expected = torch.zeros_like(flat_g).scatter_(-1, top_idx, 1.0 / k)
    assert_close(flat_g, expected)
    assert ((flat_g != 0).sum(-1) == k).all()


def test_module_matches_function_and_reports_k():
    x = torch.randn(2, 3, 4, 4)
    assert_close(TopGAP(3)(x), top_gap(x, 3))
    assert "k=3" in repr(TopGAP(3))


def test_module_warns_once_when_k_covers_the_whole_map():
    pool = TopGAP(16)
    with pytest.warns(UserWarning, match="k=16 >= 4x4 = 16 pixels"):
        pool(torch.randn(1, 2, 4, 4))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pool(torch.randn(1, 2, 4, 4))  # once is enough
        TopGAP(15)(torch.randn(1, 2, 4, 4))  # below H*W: no warning
