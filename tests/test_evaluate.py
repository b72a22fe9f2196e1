import json
import math
from argparse import ArgumentParser, Namespace

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from topgap import TopGapNet, create_baseline
from topgap.checkpoint import load_family, save_model
from topgap.config import ModelConfig
from topgap.eval.evaluate import aggregate_folds, evaluate_family, parse_eps, register, run, write_report

pytestmark = pytest.mark.usefixtures("one_thread")


CLASSES = ["a", "b", "c"]
SIZE = (32, 32)
FAST = dict(eps=8 / 255, pgd_steps=(2,), square_queries=5, batch_size=8, progress=False)


class FakeSet(Dataset):
    """12 seeded images; a bright square is the object; image 5 has no mask, image 6 an all-ignore mask."""

    def __init__(self, n: int = 12, seed: int = 0, masks: bool = True):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.rand(n, 3, *SIZE, generator=g) * 0.5
        self.labels = [i % 3 for i in range(n)]
        self.class_names = CLASSES
        self.masks = np.zeros((n, *SIZE), np.uint8)
        for i in range(n):
            r, c = 4 + i % 12, 4 + (3 * i) % 12
            self.images[i, :, r:r + 12, c:c + 12] += 0.5
            self.masks[i, r:r + 12, c:c + 12] = 1
            self.masks[i, r - 1, c:c + 12] = 255  # an ignored border row
        if n > 6:
            self.masks[6] = 255
        self.has = [masks and i != 5 for i in range(n)]

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"image": self.images[i], "label": self.labels[i], "mask": torch.from_numpy(self.masks[i]),
                "has_mask": self.has[i], "index": i}


def family() -> dict:
    out = {}
    for k in (4, 32):
        torch.manual_seed(k)
        cfg = ModelConfig("resnet18", CLASSES, k=k, fpn_channels=16, input_size=SIZE)
        out[f"k{k}"] = (TopGapNet("resnet18", 3, k=k, fpn_channels=16).eval(), cfg)
    torch.manual_seed(1)
    out["baseline"] = (create_baseline("resnet18", 3).eval(), ModelConfig("resnet18", CLASSES, kind="baseline",
                                                                            input_size=SIZE))
    return out


@pytest.fixture(scope="module")
def results():
    return evaluate_family(family(), FakeSet(), shifted=FakeSet(6, seed=1), attack_images=5, **FAST)


def test_structure_and_values(results):
    json.dumps(results, allow_nan=False)  # strictly JSON-serialisable
    assert results["n_images"] == 12 and results["attack_images"] == 5 and results["eps"] == 8 / 255
    assert list(results["models"]) == ["k4", "k32", "baseline"]
    data, models = FakeSet(), family()
    for name, m in results["models"].items():
        model, cfg = models[name]
        with torch.no_grad():
            x = (data.images - torch.tensor(cfg.mean).view(1, 3, 1, 1)) / torch.tensor(cfg.std).view(1, 3, 1, 1)
            pred = model(x).argmax(1)
        assert m["clean"] == {"n": 12, "correct": int((pred == torch.tensor(data.labels)).sum()),
                              "accuracy": m["clean"]["correct"] / 12}
        assert m["n_masks"] == 10  # image 5 has none, image 6 marks no object pixel
        for key in ("iou", "iou_gradcam", "l1", "l1_gradcam"):
            assert 0 <= m[key] <= 1
        for key, l1 in (("mass_in_mask", "l1"), ("mass_in_mask_gradcam", "l1_gradcam")):
            # an all-zero CAM has no mass to place: None (the untrained baseline's 1x1 final map at 32x32)
            assert (m[key] is None) == (m[l1] == 0) and (m[key] is None or 0 <= m[key] <= 1)
        assert set(m["attacks"]) == {"fgsm", "pgd2", "square", "transfer"}
        assert m["attacks"]["fgsm"]["n"] == 12 and m["attacks"]["square"]["n"] == 5
        assert m["attacks"]["fgsm"]["clean_correct"] == m["clean"]["correct"]
        assert m["shifted"]["n"] == 6
        assert isinstance(m["gradient_masking_suspected"], bool)
    k4 = results["models"]["k4"]
    assert k4["cam_size"] == [8, 8] and k4["k"] == 4 and k4["k_fraction"] == 4 / 64
    assert results["models"]["k32"]["k_fraction"] == 0.5
    base = results["models"]["baseline"]
    assert base["k"] is None and base["cam_size"] is None and base["l1"] == base["l1_gradcam"]


def test_no_masks_and_limits():
    models = {n: v for n, v in family().items() if n != "baseline"}
    r = evaluate_family(models, FakeSet(masks=False), attacks=("fgsm",), max_images=5, **FAST)
    m = r["models"]["k4"]
    assert r["n_images"] == 5 and m["clean"]["n"] == 5 and m["n_masks"] == 0 and m["iou"] is None
    assert set(m["attacks"]) == {"fgsm"} and m["gradient_masking_suspected"] is None and r["shifted"] is None
    with pytest.raises(ValueError, match="baseline"):
        evaluate_family(models, FakeSet(), attacks=("transfer",), **FAST)
    with pytest.raises(ValueError, match="unknown attacks"):
        evaluate_family(models, FakeSet(), attacks=("cw",), **FAST)


def test_write_report(results, tmp_path):
    paths = write_report(results, tmp_path / "report", title="Fake family")
    names = {p.relative_to(tmp_path / "report").as_posix() for p in paths}
    assert names == {"results.json", "results.md", "plots/l1.png", "plots/iou.png", "plots/accuracy.png",
                     "plots/robustness.png"}
    assert all(p.stat().st_size > 0 for p in paths)
    assert not [p for p in (tmp_path / "report").rglob("*") if p.name.endswith(".tmp")]
    assert json.loads((tmp_path / "report" / "results.json").read_text()) == results
    for png in (tmp_path / "report" / "plots").iterdir():
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "report" / "results.md").read_text()
    assert md.startswith("# Fake family")
    for heading in ("## Table 2", "## Table 3", "## Table 5", "## Table 7", "## All models"):
        assert heading in md
    lines = md.splitlines()
    assert "| model | k | k/(h*w) | l1 ↓ (GradCAM, baseline) | l1 ↓ (ours) |" in lines
    assert any(line.startswith("| model | k | FGSM ↑ unchanged | FGSM ↑ correct | FGSM ↑ (ours) unchanged")
               for line in lines)
    assert "| model | k | IOU ↑ (GradCAM, baseline) | IOU ↑ (ours) |" in lines
    base, k4 = results["models"]["baseline"], results["models"]["k4"]
    assert f"| k4 | 4 | 0.062 | {base['l1']:.3f} | {k4['l1']:.3f} |" in lines
    assert f"| k4 | 4 | {base['iou']:.3f} | {k4['iou']:.3f} |" in lines
    table3_k4 = next(line for line in lines if line.startswith("| k4 | 4 | ") and line.count("|") > 10)
    assert table3_k4.endswith(f"| {base['clean']['accuracy']:.3f} | {k4['clean']['accuracy']:.3f} |")
    full = [line for line in lines if line.startswith("| baseline | baseline |")]
    assert len(full) == 1


def test_aggregate_folds(results):
    other = json.loads(json.dumps(results))
    other["models"]["k4"]["clean"]["accuracy"] = results["models"]["k4"]["clean"]["accuracy"] + 0.2
    agg = aggregate_folds([results, other])
    acc = agg["models"]["k4"]["accuracy"]
    assert agg["n_folds"] == 2
    assert math.isclose(acc["mean"], results["models"]["k4"]["clean"]["accuracy"] + 0.1)
    assert math.isclose(acc["std"], 0.2 / math.sqrt(2))
    assert set(agg["models"]["baseline"]) >= {"accuracy", "fgsm_paper", "fgsm_correct", "pgd2_paper", "l1", "iou"}
    assert aggregate_folds([results])["models"]["k4"]["accuracy"]["std"] == 0.0


def test_parse_eps():
    assert parse_eps("1/255") == 1 / 255 and parse_eps("8/255") == 8 / 255 and parse_eps("0.5") == 0.5
    for bad in ("abc", "2", "1/0"):
        with pytest.raises(ValueError):
            parse_eps(bad)
    sub = ArgumentParser().add_subparsers()
    register(sub)
    args = sub.choices["evaluate"].parse_args(["fam", "--data", "d", "--eps", "8/255", "--pgd-steps", "20", "50"])
    assert args.eps == 8 / 255 and args.pgd_steps == [20, 50] and args.func is run
    assert sub.choices["evaluate"].parse_args(["fam", "--data", "d"]).eps == 1 / 255


def test_cli_run_end_to_end(tmp_path):
    pytest.importorskip("topgap.data")
    from PIL import Image

    fam = tmp_path / "family"
    for name, (model, cfg) in family().items():
        save_model(model, cfg, fam / name)
    assert list(load_family(fam)) == ["k4", "k32", "baseline"]
    data = FakeSet(6)
    root = tmp_path / "data"
    for i in range(len(data)):
        cls = CLASSES[data.labels[i]]
        for folder, array in ((root / "test" / cls, (data.images[i].permute(1, 2, 0).numpy() * 255).astype(np.uint8)),
                              (root / "masks" / "test" / cls, (data.masks[i] == 1).astype(np.uint8) * 255)):


            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(folder / f"img{i}.png")
    args = Namespace(family=str(fam), data=str(root), split="test", shifted_split=None, fmt="auto", eps=8 / 255,
                     pgd_steps=[2], attacks=["fgsm", "pgd", "square", "transfer"], square_queries=5,
                     attack_images=3, cam_method="gradcam", batch_size=4, max_images=None, out=str(tmp_path / "out"),
                     device="cpu")
    summary = run(args)
    assert summary["n_images"] == 6 and set(summary["models"]) == {"k4", "k32", "baseline"}
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["dataset"] == "data" and results["split"] == "test"
    assert all(m["n_masks"] > 0 for m in results["models"].values())
    assert (tmp_path / "out" / "plots" / "robustness.png").is_file()
