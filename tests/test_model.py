import pytest
import torch
from torch.testing import assert_close

from topgap import ModelConfig, TopGapNet, build_model, create_baseline, top_gap, topgap_loss
from topgap.config import ablation_configs


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_table1_efficientnet_b0_parameter_counts():
    # Table 1: EfficientNet-B0 with 53 classes (COCO subset), 4.08M unmodified, 4.75M with the FPN head.
    assert round(n_params(create_baseline("efficientnet_b0", 53)) / 1e6, 2) == 4.08
    ours = TopGapNet("efficientnet_b0", 53, k=64, num_maps=4)
    assert round(n_params(ours) / 1e6, 2) == 4.75
    # the head by hand: 3x3 convs (with bias) on channels 24, 40, 112, 320 plus the 1x1 conv to 53 classes
    head = sum(256 * c * 9 + 256 for c in (24, 40, 112, 320)) + 256 * 53 + 53
    assert n_params(ours.head) == head


@pytest.mark.parametrize("backbone", ["resnet18", "efficientnet_b0", "convnext_tiny", "vgg11_bn", "densenet121"])
def test_paper_backbones_give_56x56_maps_at_224(backbone):
    net = TopGapNet(backbone, num_classes=5, k=64, fpn_channels=16).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        maps = net.class_maps(x)
        assert maps.shape == (1, 5, 56, 56)
        assert_close(net(x), top_gap(maps, 64))


def test_preact_resnet18_on_cifar_sized_inputs():
    net = TopGapNet("preact_resnet18", num_classes=10, k=16)
    assert net.cam(torch.randn(2, 3, 32, 32)).shape == (2, 10, 32, 32)
    base = create_baseline("preact_resnet18", 10)
    assert round(n_params(base) / 1e6, 2) == 11.17  # the usual PreAct-ResNet-18 size
    assert base(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    narrow = create_baseline("preact_resnet18_w16", 10)  # a quarter of the width: about 1/16 of the weights
    assert 0.05 < n_params(narrow) / n_params(base) < 0.08
    assert TopGapNet("preact_resnet18_w16", 10, k=8, num_maps=3).cam(torch.randn(1, 3, 32, 32)).shape == (1, 10, 16, 16)


def test_logits_are_top_gap_of_class_maps(tiny_net, device):
    tiny_net.eval()
    x = torch.randn(3, 3, 64, 64, device=device)
    with torch.no_grad():
        logits, maps = tiny_net.forward_with_maps(x)
        assert maps.shape == (3, 3, 16, 16)
        assert_close(logits, top_gap(maps, 8))
        assert_close(tiny_net(x), logits)


def test_cam_is_minmax_scaled_per_image_and_class(tiny_net, device):
    cam = tiny_net.cam(torch.randn(2, 3, 64, 64, device=device))
    assert cam.shape == (2, 3, 16, 16)
    assert cam.min() >= 0 and cam.max() <= 1
    assert_close(cam.amax((2, 3)), torch.ones(2, 3, device=device))
    assert_close(cam.amin((2, 3)), torch.zeros(2, 3, device=device))


def test_cam_mode_disables_dropout_and_freezes_bn_then_restores_training():
    torch.manual_seed(0)
    net = TopGapNet("resnet18", 3, k=4, fpn_channels=16, dropout=0.5).train()
    x = torch.randn(2, 3, 64, 64)
    running_mean = net.backbone.bn1.running_mean.clone()
    a, b = net.cam(x), net.cam(x)
    assert_close(a, b)  # no dropout noise
    assert_close(net.backbone.bn1.running_mean, running_mean)  # BN statistics untouched
    assert net.training
    net.eval()
    with torch.no_grad():
        expected = net.class_maps(x)
    lo, hi = expected.amin((2, 3), keepdim=True), expected.amax((2, 3), keepdim=True)
    assert_close(a, (expected - lo) / (hi - lo))


def test_every_parameter_gets_a_finite_gradient(tiny_net, device):
    tiny_net.train()
    x, y = torch.randn(4, 3, 64, 64, device=device), torch.tensor([0, 1, 2, 0], device=device)
    logits, maps = tiny_net.forward_with_maps(x)
    loss = topgap_loss(logits, maps, y)
    assert torch.isfinite(loss)
    loss.backward()
    for name, p in tiny_net.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
    assert any(p.grad.abs().sum() > 0 for p in tiny_net.head.parameters())


def test_all_eight_ablations_build_and_train():
    cfg = ModelConfig("resnet18", ["a", "b"], k=64, fpn_channels=8, input_size=(64, 64))
    configs = ablation_configs(cfg)
    assert len(configs) == 8
    assert configs["fpn+l1+topgap"].k == 64 and configs["l1+topgap"].k == 1  # 64 / 4**3 pixels on the 2x2 map
    assert configs["plain"].k is None and configs["plain"].lam == 0 and not configs["plain"].fpn
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([0, 1])
    for name, c in configs.items():
        net = build_model(c)
        logits, maps = net.forward_with_maps(x)
        assert maps.shape[-1] == (16 if c.fpn else 2), name
        topgap_loss(logits, maps, y, lam=c.lam).backward()


def test_without_fpn_and_topgap_equals_gap_plus_linear():
    # 1x1 conv then GAP == GAP then linear: the "plain" ablation is the unmodified model's head.
    net = TopGapNet("resnet18", 4, k=None, fpn=False).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = net.forward_features(x)[-1].mean((2, 3))
        conv = net.head[1]
        assert_close(net(x), feats @ conv.weight[:, :, 0, 0].T + conv.bias)


def test_clear_errors():
    with pytest.raises(ValueError, match="unknown backbone 'resnet81'.*resnet18"):
        TopGapNet("resnet81", 3, k=4)
    with pytest.raises(ValueError, match="num_maps=9"):
        TopGapNet("resnet18", 3, k=4, num_maps=9)
    with pytest.raises(ValueError, match="k must be >= 1"):
        TopGapNet("resnet18", 3, k=0)
    with pytest.raises(ValueError, match="num_classes"):
        TopGapNet("resnet18", 0, k=4)
