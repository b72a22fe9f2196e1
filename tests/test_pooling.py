import math

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


# ---- the poolings Top-GAP is compared with (topgap.pooling): hand-computed values and their limits

from topgap import ModelConfig  # noqa: E402
from topgap.pooling import GlobalPool, gmp, gwrp, lse, make_pool, pool, wildcat  # noqa: E402

X = torch.tensor([[[[1.0, 5.0], [3.0, -2.0]]]])  # one channel: cells 5, 3, 1, -2 in descending order


def test_each_pooling_against_hand_computed_values():
    assert_close(gmp(X), torch.tensor([[5.0]]))
    assert_close(pool(X, "gap"), torch.tensor([[7.0 / 4]]))
    expected = torch.log(torch.tensor((math.exp(1) + math.exp(5) + math.exp(3) + math.exp(-2)) / 4))
    assert_close(lse(X, 1.0), expected.view(1, 1))
    assert_close(wildcat(X, k_max=2, k_min=1, alpha=0.5), torch.tensor([[(5 + 3) / 2 + 0.5 * -2.0]]))
    assert_close(gwrp(X, 0.5), torch.tensor([[(5 + 0.5 * 3 + 0.25 * 1 + 0.125 * -2) / (1 + 0.5 + 0.25 + 0.125)]]))


def test_the_limits_each_pooling_is_known_by():
    x = torch.randn(3, 4, 6, 5)
    assert_close(lse(x.double(), 1e-6), x.double().mean((2, 3)), atol=1e-5, rtol=0)  # r -> 0: GAP
    assert_close(lse(x, 1e4), x.amax((2, 3)), atol=1e-3, rtol=0)  # r -> inf: GMP
    assert_close(wildcat(x, 7, 7, 0.0), top_gap(x, 7))  # alpha = 0: the k-max mean, Top-GAP
    assert_close(wildcat(x, 7, 0, 0.7), top_gap(x, 7))  # no lowest cells
    assert_close(wildcat(x, 1, 1, 1.0), x.amax((2, 3)) + x.amin((2, 3)))  # WELDON with k = 1
    assert_close(gwrp(x, 1.0), x.mean((2, 3)))  # d = 1: GAP
    assert_close(gwrp(x, 1e-6), x.amax((2, 3)), atol=1e-4, rtol=0)  # d -> 0: GMP


@pytest.mark.parametrize("call, message", [
    (lambda: lse(X, 0.0), "LSE needs r > 0"), (lambda: gwrp(X, 1.5), "GWRP needs 0 < d <= 1"),
    (lambda: pool(X, "max"), "unknown pooling 'max'"), (lambda: gmp(X[0]), "gmp expects a \\(B, C, H, W\\)"),
])
def test_bad_pooling_parameters_say_what_is_allowed(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_the_model_config_records_and_checks_the_pooling():
    cfg = ModelConfig("resnet18", ["a", "b"], k=None, pooling="lse", pooling_params={"r": 2})
    assert cfg.pooling_params == {"r": 2.0} and not cfg.topgap and not cfg.control
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg  # round trip through config.json
    assert ModelConfig("resnet18", ["a"], k=8, pooling="wildcat").pooling_params == {"alpha": 0.7, "k_min": 8}
    assert ModelConfig("resnet18", ["a"], k=None).pooling == "gap"  # topgap without k is plain GAP, stored as such
    old = {k: v for k, v in ModelConfig("resnet18", ["a"], k=None).to_dict().items() if not k.startswith("pooling")}
    assert ModelConfig.from_dict(old).control  # a config from before the poolings: k None was the GAP control
    for bad, message in ((dict(k=4, pooling="lse"), "pooling lse pools every cell and takes no k"),
                         (dict(k=None, pooling="wildcat"), "pooling wildcat needs k"),
                         (dict(k=None, pooling="gwrp", pooling_params={"r": 1}), r"has no parameter \['r'\]"),
                         (dict(k=None, pooling="gwrp", pooling_params={"d": 0}), "out of range")):
        with pytest.raises(ValueError, match=message):
            ModelConfig("resnet18", ["a"], **bad)


def test_the_net_pools_with_the_configured_module():
    from topgap import build_model

    net = build_model(ModelConfig("resnet18", ["a", "b"], k=None, pooling="gwrp", pooling_params={"d": 0.5},
                                  fpn_channels=8))
    assert isinstance(net.pool, GlobalPool) and "gwrp, d=0.5" in repr(net.pool) and net.k is None
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert_close(net.eval()(x), gwrp(net.class_maps(x), 0.5))
    assert isinstance(make_pool("gap"), TopGAP) and make_pool("gap").k is None
