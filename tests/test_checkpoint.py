import json

import pytest
import torch
from safetensors.torch import load_file

from topgap import CheckpointError, ModelConfig, build_model, load_model, save_model

CLASSES = ["cat", "dog", "bird"]


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig("resnet18", CLASSES, k=8, fpn_channels=16, input_size=(64, 64), recipe={"epochs": 1},
                      metrics={"accuracy": 0.5})
    model = build_model(cfg)
    with torch.no_grad():  # non-default BN statistics, so the round trip has to carry buffers too
        model.backbone.bn1.running_mean.uniform_()
    return model, cfg, save_model(model, cfg, tmp_path / "k8")


def test_round_trip_is_exact(saved):
    model, cfg, folder = saved
    loaded, cfg2 = load_model(folder)
    assert cfg2 == cfg and cfg2.class_names == CLASSES and cfg2.input_size == (64, 64)
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
    x = torch.randn(1, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]  # no temp files left


def test_baseline_round_trip(tmp_path):
    cfg = ModelConfig("resnet18", CLASSES, kind="baseline", k=None)
    model = build_model(cfg)
    loaded, _ = load_model(save_model(model, cfg, tmp_path / "base"))
    assert all(torch.equal(t, loaded.state_dict()[n]) for n, t in model.state_dict().items())


def test_fp16_storage_upcasts_on_load(saved, tmp_path):
    model, cfg, _ = saved
    folder = save_model(model, cfg, tmp_path / "half", dtype=torch.float16)
    assert load_file(folder / "model.safetensors")["head.classifier.weight"].dtype == torch.float16
    loaded, _ = load_model(folder)
    w = loaded.head.classifier.weight
    assert w.dtype == torch.float32
    torch.testing.assert_close(w, model.head.classifier.weight, atol=1e-3, rtol=1e-3)


def test_truncated_weights(saved):
    _, _, folder = saved
    w = folder / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_model(folder)


def test_unreadable_weights_without_checksum(saved):
    _, _, folder = saved
    cfg = json.loads((folder / "config.json").read_text())
    del cfg["weights_sha256"]
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_model(folder)


def edit_config(folder, **changes):
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


def test_unknown_backbone(saved):
    _, _, folder = saved
    edit_config(folder, backbone="resnet81")
    with pytest.raises(CheckpointError, match="unknown backbone 'resnet81'"):
        load_model(folder)


def test_class_count_mismatch(saved):
    _, _, folder = saved
    edit_config(folder, class_names=["a", "b", "c", "d", "e"])
    with pytest.raises(CheckpointError, match="5 classes.*class_names and the weights disagree"):
        load_model(folder)


def test_wrong_architecture(saved):
    _, _, folder = saved
    edit_config(folder, fpn=False)
    with pytest.raises(CheckpointError, match="does not fit"):
        load_model(folder)


def test_missing_and_corrupt_config(tmp_path, saved):
    with pytest.raises(CheckpointError, match="config.json not found"):
        load_model(tmp_path / "nowhere")
    _, _, folder = saved
    (folder / "config.json").write_text("{ broken")
    with pytest.raises(CheckpointError, match="not a valid topgap config"):
        load_model(folder)
    (folder / "config.json").write_text(json.dumps({"backbone": "resnet18", "class_names": ["a"], "colour": 1}))
    with pytest.raises(CheckpointError, match="unknown fields"):
        load_model(folder)


def test_missing_weights(saved):
    _, _, folder = saved
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors not found"):
        load_model(folder)
