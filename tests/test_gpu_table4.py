"""bench/gpu_table4.py at toy scale on CPU (so the GPU run cannot rot between loans), and the two pieces it shares
with the CPU trainer: the device-side CIFAR augmentation and the optimisation step."""
import importlib.util
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from topgap.config import ModelConfig
from topgap.data import open_dataset, pad_crop_flip
from topgap.data.datasets import PAD, _randint
from topgap.train import DivergedError, Recipe, Trainable, make_accelerator, make_optimizer, optimisation_step
from topgap.checkpoint import build_model

_spec = importlib.util.spec_from_file_location("gpu_table4", Path(__file__).parents[1] / "bench" / "gpu_table4.py")
table4 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(table4)


def _cifar_like(root: Path, per_class: dict[str, int]) -> Path:
    """train.tar.gz / test.tar.gz of 32x32 JPEGs in 10 classes, each class a colour plus noise."""
    rng = np.random.default_rng(0)
    src = root / "src"
    for split, n in per_class.items():
        for c in range(10):
            (src / split / f"c{c}").mkdir(parents=True)
            for i in range(n):
                a = np.clip(rng.normal(25 * c, 30, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(a).save(src / split / f"c{c}" / f"{i:04d}.jpg")
    data = root / "cifar"
    data.mkdir()
    for split in per_class:
        with tarfile.open(data / f"{split}.tar.gz", "w:gz") as tf:
            tf.add(src / split, arcname=split)
    return data


def test_the_device_augmentation_equals_the_dataloaders_for_the_same_draws(tmp_path):
    data = _cifar_like(tmp_path, {"train": 1})
    ds = open_dataset(data, "train", input_size=(32, 32), train=True)
    for i, seed in enumerate(range(10)):
        torch.manual_seed(seed)  # the draws ImageDataset._transform makes, in its order
        dy, dx, flip = _randint(2 * PAD + 1), _randint(2 * PAD + 1), torch.rand(()).item() < 0.5
        torch.manual_seed(seed)
        expected = ds[i]["image"]
        raw = torch.from_numpy(ds.load(i)[0]).permute(2, 0, 1)[None]
        got = pad_crop_flip(raw, torch.tensor([dy]), torch.tensor([dx]), torch.tensor([flip]))[0].float() / 255
        assert torch.equal(got, expected), (seed, dy, dx, flip)


def test_pad_crop_flip_by_hand_and_its_refusals():
    x = torch.arange(2 * 1 * 2 * 3).reshape(2, 1, 2, 3)
    out = pad_crop_flip(x, torch.tensor([PAD, PAD + 1]), torch.tensor([PAD, PAD - 1]), torch.tensor([False, True]))
    assert torch.equal(out[0], x[0])  # the centre crop without flip is the image
    assert out[1, 0].tolist() == [[10, 9, 0], [0, 0, 0]]  # one row down, one column left, then mirrored
    with pytest.raises(ValueError, match="one dy, dx and flip per image"):
        pad_crop_flip(x, torch.tensor([0]), torch.tensor([0, 0]), torch.tensor([True, False]))
    with pytest.raises(ValueError, match=f"offsets must lie in 0..{2 * PAD}"):
        pad_crop_flip(x, torch.tensor([0, 2 * PAD + 1]), torch.tensor([0, 0]), torch.tensor([True, False]))


def test_the_shared_step_refuses_a_non_finite_loss_before_any_weight_moves():
    cfg = ModelConfig(backbone="preact_resnet18_w16", class_names=list("ab"), k=4, num_maps=2, fpn_channels=8,
                      input_size=(32, 32))
    torch.manual_seed(0)
    net = Trainable(build_model(cfg), cfg)
    recipe, acc = Recipe(epochs=1, batch_size=2, lr=0.1), make_accelerator()
    opt = make_optimizer(net, recipe)
    before = [p.detach().clone() for p in net.parameters()]
    x, y = torch.rand(2, 3, 32, 32), torch.tensor([0, 1])
    sums = optimisation_step(acc, net, opt, x, y, cfg, recipe, 0, 10)
    # (loss * n, CE * n, correct, n); at step 0 the l1 ramp is at 0, so the loss is the cross-entropy
    assert sums[3].item() == 2 and 0 <= sums[2].item() <= 2 and sums[0].item() == sums[1].item() > 0
    moved = [p.detach().clone() for p in net.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(before, moved))
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(DivergedError, match=r"training diverged: the loss is nan at step 2 of 10"):
        optimisation_step(acc, net, opt, x, y, cfg, recipe, 1, 10)
    assert all(torch.equal(a, p) for a, p in zip(moved, net.parameters()))


def test_k_is_chosen_by_held_out_accuracy_ties_to_the_smaller_k():
    assert table4.choose_k({"k8": 0.90, "k64": 0.92}) == "k64"
    assert table4.choose_k({"k64": 0.92, "k8": 0.92}) == "k8"
    assert table4.peak_tflops("cuda (NVIDIA H200)") == 989.0 and table4.peak_tflops("x86_64") is None


def test_the_toy_run_writes_the_report_a_gpu_run_writes(tmp_path):
    data = _cifar_like(tmp_path, {"train": 10, "test": 5})
    out = tmp_path / "out"
    results = table4.main(["--data", str(data), "--out", str(out), "--toy", "--epochs", "1", "--k", "4", "16"])
    saved = json.loads((out / "results.json").read_text())
    assert saved["chosen"] == results["chosen"] in ("k4", "k16") and set(saved["models"]) == {"baseline", "k4", "k16"}
    assert saved["finished"] and list(saved["models"])[:2] == [saved["chosen"], "baseline"]
    assert saved["n_train"] == 64 and saved["held_out"]["n"] == 32 and saved["test_subset"]["n"] == 40
    assert not set(saved["held_out"]["ids"]) & set(saved["test_subset"]["ids"])
    assert len({i.split("/")[1] for i in saved["test_subset"]["ids"]}) == 10  # every class in the subset
    m = saved["models"]["k4"]
    assert {"pgd2 foolbox", "pgd2 2.5eps/steps", "fgsm", "eps_curve", "autoattack"} <= set(m)
    assert m["pgd2 foolbox"]["alpha"] == pytest.approx(8 / 255 / 30) and not m["pgd2 foolbox"]["reaches_boundary"]
    assert m["pgd2 2.5eps/steps"]["reaches_boundary"] and "skipped" in m["autoattack"]
    assert all(0 <= m[k]["robust_correct_rate"] <= m[k]["clean_accuracy"] + 1e-9 for k in ("fgsm", "pgd2 foolbox"))
    curve = [c["robust_correct"] for c in m["eps_curve"]]
    assert curve == sorted(curve, reverse=True) and len(curve) == 5
    log = json.loads((out / "train_log.json").read_text())
    assert log["models"]["k4"]["flops_per_step"] > log["models"]["baseline"]["flops_per_step"] > 0
    assert log["models"]["k4"]["epochs"][0]["images_per_second"] > 0 and log["peak_bf16_tflops"] is None
    text = (out / "README.md").read_text()
    assert "| k4" in text and "paper, topgap | 0.951" in text and "--toy" in text
    assert saved["configs"]["k4"]["lam"] == 1.0 and saved["configs"]["k4"]["l1_norm"] == "mean"
