import copy
import functools
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
from topgap.cam import PROTOCOLS, postprocess, topgap_cam
from topgap.eval.evaluate import (aggregate_folds, collapse, draw_samples, evaluate_family, parse_eps, register, run,
                                   select_models)
from topgap.eval.report import write_report

pytestmark = pytest.mark.usefixtures("one_thread")


CLASSES = ["a", "b", "c"]
SIZE = (32, 32)
FAST = dict(eps=8 / 255, pgd_steps=(2,), square_queries=5, batch_size=8, progress=False, bootstrap_samples=200,
            eps_curve=(8 / 255, 1.0), curve_steps=3, faithfulness_images=3, sanity_images=0)


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


class SortedSet(FakeSet):
    """FakeSet with labels sorted by class, as the loaders return splits: 0 0 0 0 1 1 1 1 2 2 2 2 (n = 12)."""

    def __init__(self, n: int = 12, seed: int = 0):
        super().__init__(n, seed)
        self.labels = [3 * i // n for i in range(n)]


def fit_last_layer(model, cfg, data=None, steps: int = 60) -> None:
    """A linear probe: the last layer alone fitted to `data` (cached features), so that a fixture model classifies
    its images and does not count as collapsed (:func:`topgap.eval.evaluate.collapse`)."""
    data = data or FakeSet()
    x = (data.images - torch.tensor(cfg.mean).view(1, 3, 1, 1)) / torch.tensor(cfg.std).view(1, 3, 1, 1)
    last = model.head.classifier if isinstance(model, TopGapNet) else model.get_classifier()
    seen = {}
    hook = last.register_forward_pre_hook(lambda _m, inputs: seen.update(x=inputs[0].detach()))
    with torch.no_grad():
        model(x)
    hook.remove()
    opt = torch.optim.Adam(last.parameters(), lr=0.05)
    for _ in range(steps):
        out = last(seen["x"])
        loss = torch.nn.functional.cross_entropy(model.pool(out) if isinstance(model, TopGapNet) else out,
                                                 torch.tensor(data.labels))
        opt.zero_grad()
        loss.backward()
        opt.step()
    last.zero_grad(set_to_none=True)


def family() -> dict:
    """Two Top-GAP models and a baseline whose last layers fit FakeSet (a fresh copy per call)."""
    return copy.deepcopy(_family())


@functools.cache
def _family() -> dict:
    out = {}
    for k in (4, 32):
        torch.manual_seed(k)
        cfg = ModelConfig("resnet18", CLASSES, k=k, fpn_channels=16, input_size=SIZE)
        out[f"k{k}"] = (TopGapNet("resnet18", 3, k=k, fpn_channels=16).eval(), cfg)
    torch.manual_seed(1)
    out["baseline"] = (create_baseline("resnet18", 3).eval(), ModelConfig("resnet18", CLASSES, kind="baseline",
                                                                            input_size=SIZE))
    for model, cfg in out.values():
        fit_last_layer(model, cfg)
    return out


def surrogate():
    torch.manual_seed(2)
    return create_baseline("resnet18", 3).eval(), ModelConfig("resnet18", CLASSES, kind="baseline", input_size=SIZE)


@pytest.fixture(scope="module")
def results():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the one_thread fixture does for each test: tiny models stall on shared cores
    yield evaluate_family(family(), FakeSet(), shifts={"shifted": FakeSet(6, seed=1)}, surrogate=surrogate(),
                           attack_images=5, attacks=("fgsm", "pgd", "square", "transfer"),
                           convergence={"k32": (False, "final train loss at chance level")},
                           **{**FAST, "sanity_images": 2})
    torch.set_num_threads(threads)


def test_structure_and_values(results):
    json.dumps(results, allow_nan=False)  # strictly JSON-serialisable
    assert results["n_images"] == 12 and results["attack_images"] == 5 and results["eps"] == 8 / 255
    assert set(results["protocols"]) == {"paper", "relu"} and results["cam_target"] == "label"
    assert results["pgd_rule"] == "2.5eps/steps" and "postprocessing" not in results
    assert [results["samples"][p]["n"] for p in ("images", "attacks", "road", "sanity")] == [12, 5, 3, 2]
    assert results["l1_resolution"] == [8, 8] and results["localisation_resolution"] == [32, 32]
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
        assert m["n_road"] == 3
        for key in ("iou", "l1", "pxap", "maxboxacc_v2", "mass_in_mask"):
            assert all(0 <= m[key + s] <= 1 for s in ("_paper", "_relu", "_gradcam"))
        assert m["collapsed"]["flag"] is False and set(m["sanity"]) == {"paper", "relu"}
        assert all(isinstance(v["flagged"]["gradcam"], bool) and v["n"] == 2 for v in m["sanity"].values())
        assert set(m["attacks"]) == {"fgsm", "pgd2", "square", "transfer"}
        assert m["attacks"]["fgsm"]["n"] == m["attacks"]["square"]["n"] == m["attacks"]["transfer"]["n"] == 5
        assert m["attacks"]["pgd2"]["clean_correct"] <= m["clean"]["correct"]
        assert m["shifts"]["shifted"]["n"] == 6
        assert isinstance(m["gradient_masking_suspected"], bool)
        curve = [c["accuracy"] for c in m["eps_curve"]]
        assert [c["eps"] for c in m["eps_curve"]] == [8 / 255, 1.0] and curve == sorted(curve, reverse=True)
        assert m["eps_curve_reaches_zero"] is True  # eps = 1 covers the whole image range
    k4 = results["models"]["k4"]
    assert k4["cam_size"] == [8, 8] and k4["k"] == 4 and k4["k_fraction"] == 4 / 64
    assert results["models"]["k32"]["k_fraction"] == 0.5
    base = results["models"]["baseline"]
    assert base["k"] is None and base["cam_size"] is None
    assert base["l1_paper"] == base["l1_relu"] == base["l1_gradcam"]  # GradCAM: the standard map under both


def test_protocols_by_hand():
    """A raw map with a negative background: paper = min-max of X, relu = min-max of ReLU(X)."""
    raw = torch.tensor([[[-2.0, -1.0], [0.0, 2.0]]])
    paper, relu = (postprocess(raw, None, PROTOCOLS[p]) for p in ("paper", "relu"))
    assert paper.tolist() == [[[0.0, 0.25], [0.5, 1.0]]] and relu.tolist() == [[[0.0, 0.0], [0.0, 1.0]]]
    assert paper.mean().item() == 0.4375 and relu.mean().item() == 0.25  # l1 under each protocol


def test_l1_is_the_postprocessed_map_at_the_class_map_resolution(results):
    """Recompute the own CAM's l1 by hand under both protocols: (ReLU,) min-max, mean at 8x8, ground-truth class."""
    model, cfg = family()["k4"]
    x = (FakeSet().images - torch.tensor(cfg.mean).view(1, 3, 1, 1)) / torch.tensor(cfg.std).view(1, 3, 1, 1)
    raw, _ = topgap_cam(model, x, targets=FakeSet().labels, postprocessing=None)
    paper, relu = (postprocess(raw, None, mode).mean().item() for mode in ("minmax", "relu-minmax"))
    assert math.isclose(results["models"]["k4"]["l1_paper"], paper, rel_tol=1e-5)
    assert math.isclose(results["models"]["k4"]["l1_relu"], relu, rel_tol=1e-5) and paper != relu


def test_ground_truth_target_changes_the_map_of_a_misclassified_image():
    """One image the model gets wrong: its l1 is the map of the label by default and of the prediction on request."""
    model, cfg = family()["k4"]
    data = FakeSet()
    x = (data.images - torch.tensor(cfg.mean).view(1, 3, 1, 1)) / torch.tensor(cfg.std).view(1, 3, 1, 1)
    raw_all, pred = topgap_cam(model, x, postprocessing=None)
    wrong = next(i for i in range(len(data)) if pred[i] != data.labels[i])
    one = torch.utils.data.Subset(data, [wrong])
    fast = {**FAST, "faithfulness_images": 0, "eps_curve": (), "bootstrap_samples": 0}
    for target, cls in (("label", data.labels[wrong]), ("predicted", int(pred[wrong]))):
        r = evaluate_family({"k4": (model, cfg)}, one, attacks=(), cam_target=target, **fast)
        raw, _ = topgap_cam(model, x[wrong:wrong + 1], targets=cls, postprocessing=None)
        assert r["cam_target"] == target and r["models"]["k4"]["clean"]["correct"] == 0
        assert math.isclose(r["models"]["k4"]["l1_paper"], postprocess(raw, None, "minmax").mean().item(),
                            rel_tol=1e-5)
    with pytest.raises(ValueError, match="CAM target"):
        evaluate_family({"k4": (model, cfg)}, one, attacks=(), cam_target="guess", **fast)


def test_samples_are_stratified_nested_and_shared():
    """On a class-sorted split: per-class counts within one of each other, each sample inside the larger ones, and
    two families (or two seeds' reports) of the split evaluated on the same ids."""
    data = SortedSet()
    s = draw_samples(data, max_images=9, attack_images=6, faithfulness_images=3, sanity_images=2)
    assert [len(s[p]) for p in ("images", "attacks", "road", "sanity")] == [9, 6, 3, 2]
    for idx in s.values():
        counts = np.bincount([data.labels[i] for i in idx], minlength=3)
        assert counts.max() - counts.min() <= 1
    assert set(s["sanity"]) <= set(s["road"]) <= set(s["attacks"]) <= set(s["images"])
    assert s["attacks"] != list(range(6))  # not the first images (two classes only)
    models = family()
    fast = {**FAST, "eps_curve": (), "bootstrap_samples": 0, "max_images": 9, "attack_images": 6}
    a = evaluate_family({n: models[n] for n in ("k4", "baseline")}, data, attacks=("fgsm",), **fast)
    b = evaluate_family({"k32": models["k32"]}, data, attacks=("fgsm",), **fast)
    assert a["samples"] == b["samples"] and a["samples"]["attacks"]["per_class"] == {"a": 2, "b": 2, "c": 2}
    assert a["samples"]["road"]["ids"] == [str(i) for i in s["road"]]
    assert a["models"]["k4"]["attacks"]["fgsm"]["n"] == b["models"]["k32"]["attacks"]["fgsm"]["n"] == 6
    from topgap.eval.seeds import combine_seeds

    other = json.loads(json.dumps(a))
    assert combine_seeds([a, other], reference="baseline")["n_seeds"] == 2  # the same samples: paired
    other["samples"]["attacks"]["ids"][0] = "11"
    with pytest.raises(ValueError, match="'attacks' samples differ"):
        combine_seeds([a, other], reference="baseline")


def test_a_collapsed_model_is_flagged_and_gets_no_verdict():
    assert collapse([0] * 19 + [1], [True] * 20, CLASSES)["flag"]  # 95% one class, however accurate
    ok = collapse([0] * 9 + [1], [True] * 9 + [False], CLASSES)  # 90% is not more than 90%
    assert not ok["flag"] and ok["majority_share"] == 0.9
    near_chance = collapse([0, 1, 2] * 4, [True] * 4 + [False] * 8, CLASSES)  # 0.333 <= 1/3 + 0.05
    assert near_chance["flag"] and "chance" in near_chance["reason"]
    models = family()
    dead = models["k4"][0]
    torch.nn.init.zeros_(dead.head.classifier.weight)
    with torch.no_grad():
        dead.head.classifier.bias.copy_(torch.tensor([5.0, 0.0, 0.0]))  # every class map constant, class a wins
    r = evaluate_family(models, FakeSet(), attacks=("fgsm",), **{**FAST, "eps_curve": ()})
    c = r["models"]["k4"]["collapsed"]
    assert c == {"flag": True, "reason": "predicts a for 100% of the images (> 90%)", "majority_share": 1.0,
                 "majority_class": "a"}
    assert {v["verdict"] for v in r["models"]["k4"]["comparisons"]["baseline"].values()} == {
        "collapsed predictions: no verdict"}
    assert r["models"]["k4"]["attacks"]["fgsm"]["robust_paper_rate"] == 1.0  # "unchanged": why it is never alone
    from topgap.eval.report import markdown_report
    from topgap.eval.seeds import combine_seeds

    md = markdown_report(r)
    assert "## Collapsed predictions" in md and "k4 ⚠ collapsed" in md
    assert "- **k4**: no verdicts (collapsed predictions: no verdict)." in md  # the claims: no verdict, said why
    combined = combine_seeds([r, json.loads(json.dumps(r))], reference="baseline")
    assert combined["models"]["k4"]["seeds"] == [] and combined["models"]["k4"]["flagged"]


def test_comparisons_have_intervals_and_skip_models_that_did_not_converge(results):
    k4, k32 = results["models"]["k4"], results["models"]["k32"]
    cmp = k4["comparisons"]["baseline"]
    maps = {f"{k}_{p}" for k in ("l1", "iou", "mass_in_mask", "pxap", "maxboxacc_v2") for p in ("paper", "relu")}
    assert maps | {"accuracy", "road", "fgsm_correct", "pgd2_correct", "square_correct", "transfer_correct",
                   "shifted_accuracy"} == set(cmp)
    assert cmp["l1_paper"]["diff"] != cmp["l1_relu"]["diff"]
    for c in cmp.values():
        assert c["diff"] is None or c["low"] <= c["diff"] + 1e-9 and c["diff"] <= c["high"] + 1e-9
        assert c["verdict"] in ("better", "worse", "no clear difference", "n/a")
    acc = cmp["accuracy"]
    assert math.isclose(acc["diff"], k4["clean"]["accuracy"] - results["models"]["baseline"]["clean"]["accuracy"])
    assert k32["converged"] is False and k32["convergence"] == "final train loss at chance level"
    assert all(c["verdict"].startswith("not converged") for c in k32["comparisons"]["baseline"].values())
    assert "comparisons" not in results["models"]["baseline"]


def test_selection_uses_the_given_split_and_never_a_model_that_did_not_converge(results):
    val = json.loads(json.dumps(results))
    val["split"] = "val"
    val["models"]["k32"]["clean"]["accuracy"] = 1.0  # best, but did not converge
    val["models"]["k4"]["iou_paper"] = 0.9
    s = select_models(val)
    assert s["split"] == "val" and s["by"]["accuracy, then IOU"]["model"] == "k4"
    val["models"]["k32"]["converged"] = True
    assert select_models(val)["by"]["accuracy, then IOU"]["model"] == "k32"


def test_no_masks_and_limits():
    models = {n: v for n, v in family().items() if n != "baseline"}
    r = evaluate_family(models, FakeSet(masks=False), attacks=("fgsm",), max_images=5, **FAST)
    m = r["models"]["k4"]
    assert r["n_images"] == 5 and m["clean"]["n"] == 5 and m["n_masks"] == 0 and m["iou_paper"] is None
    assert m["pxap_relu"] is None and m["maxboxacc_v2_paper"] is None and r["samples"]["images"]["n"] == 5
    assert set(m["attacks"]) == {"fgsm"} and m["gradient_masking_suspected"] is None and r["shifts"] == {}
    with pytest.raises(ValueError, match="surrogate"):
        evaluate_family(models, FakeSet(), attacks=("transfer",), **FAST)
    with pytest.raises(ValueError, match="unknown attacks"):
        evaluate_family(models, FakeSet(), attacks=("cw",), **FAST)


def test_write_report(results, tmp_path):
    paths = write_report(results, tmp_path / "report", title="Fake family")
    names = {p.relative_to(tmp_path / "report").as_posix() for p in paths}
    assert names == {"results.json", "results.md", "plots/l1.png", "plots/iou.png", "plots/accuracy.png",
                     "plots/robustness.png", "plots/eps_curve.png"}
    assert not [p for p in (tmp_path / "report").rglob("*") if p.name.endswith(".tmp")]
    assert json.loads((tmp_path / "report" / "results.json").read_text()) == results
    for png in (tmp_path / "report" / "plots").iterdir():
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "report" / "results.md").read_text()
    assert md.startswith("# Fake family") and "the ground-truth class (GT-known)" in md and "**2.5eps/steps**" in md
    assert "**paper**: own CAM: min-max of the raw class map" in md and "class-stratified sample of 5 images" in md
    for heading in ("## Not converged", "## Verdicts", "## Table 2", "## Table 3", "## Table 5", "## Table 7",
                    "## Faithfulness", "## Sanity", "## Accuracy against eps", "## All models"):
        assert heading in md
    k4 = results["models"]["k4"]
    ci = lambda c: f"{c['diff']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}] {c['verdict']}"  # noqa: E731
    cmp = k4["comparisons"]["baseline"]
    assert (f"| k4 | 4 | 0.062 | {k4['l1_paper']:.3f} | {ci(cmp['l1_paper'])} | {k4['l1_relu']:.3f} | "
            f"{ci(cmp['l1_relu'])} | {k4['l1_gradcam']:.3f} |") in md.splitlines()
    assert "l1 ↓ paper | Δ vs baseline, paper [95% CI] | l1 ↓ relu" in md and "IOU ↑ paper" in md
    assert "k32 ⚠ not converged" in md and "## Not converged (no verdicts)" in md
    assert "- **k32**: no verdicts (not converged: no verdict)." in md  # the claims say why there is none


def test_report_arrows_follow_the_split(results):
    """A split without the object (only_bg) is lower-is-better: its Table 5 column says so, test_shifted's does not."""
    from topgap.eval.report import markdown_report

    r = json.loads(json.dumps(results))
    r["shifts"] = {"test_shifted": r["shifts"]["shifted"], "only_bg": r["shifts"]["shifted"]}
    for m in r["models"].values():
        m["shifts"] = {"test_shifted": m["shifts"]["shifted"], "only_bg": m["shifts"]["shifted"]}
    header = next(line for line in markdown_report(r).splitlines() if line.startswith("| model | k | test_shifted"))
    assert "test_shifted acc ↑" in header and "only_bg acc ↓ (background alone)" in header


def test_aggregate_folds(results):
    other = json.loads(json.dumps(results))
    other["models"]["k4"]["clean"]["accuracy"] = results["models"]["k4"]["clean"]["accuracy"] + 0.2
    agg = aggregate_folds([results, other])
    acc = agg["models"]["k4"]["accuracy"]
    assert agg["n_folds"] == 2
    assert math.isclose(acc["mean"], results["models"]["k4"]["clean"]["accuracy"] + 0.1)
    assert math.isclose(acc["std"], 0.1)  # population std over the two folds
    assert set(agg["models"]["baseline"]) >= {"accuracy", "fgsm_correct", "fgsm_unchanged", "pgd2_correct", "l1_paper",
                                              "l1_relu", "iou_paper", "pxap_relu", "road", "shifted_accuracy"}
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
    defaults = sub.choices["evaluate"].parse_args(["fam", "--data", "d"])
    assert defaults.eps == 1 / 255 and defaults.pgd_rule == "2.5eps/steps" and defaults.square_queries >= 1000
    assert defaults.pgd_steps == [10] and defaults.cam_target == "label" and not hasattr(defaults, "postprocessing")
    assert (defaults.attack_images, defaults.faithfulness_images, defaults.sanity_images) == (30, 20, 6)


def _write_folder_dataset(root, split, data):
    from PIL import Image

    for i in range(len(data)):
        cls = CLASSES[data.labels[i]]
        for folder, array in ((root / split / cls, (data.images[i].permute(1, 2, 0).numpy() * 255).astype(np.uint8)),
                              (root / "masks" / split / cls, (data.masks[i] == 1).astype(np.uint8) * 255)):
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(folder / f"img{i}.png")


def test_cli_run_end_to_end(tmp_path):
    fam = tmp_path / "family"
    for name, (model, cfg) in family().items():
        save_model(model, cfg, fam / name)
    (fam / "k32" / "train_log.json").write_text(json.dumps([{"epoch": 1, "loss": 1.1, "train_accuracy": 0.33}]))
    (fam / "k4" / "train_log.json").write_text(json.dumps([{"epoch": 1, "loss": 0.2, "train_accuracy": 0.9}]))
    sur = surrogate()
    save_model(*sur, tmp_path / "surrogate")
    root = tmp_path / "data"
    _write_folder_dataset(root, "test", FakeSet(6))
    _write_folder_dataset(root, "val", FakeSet(6))  # the same pictures under val/: k4 is chosen as on test
    _write_folder_dataset(root, "test_shifted", FakeSet(6, seed=4))
    sub = ArgumentParser().add_subparsers()
    register(sub)
    args = sub.choices["evaluate"].parse_args([
        str(fam), "--data", str(root), "--eps", "8/255", "--pgd-steps", "2", "--attacks", "fgsm", "pgd",
        "--surrogate", str(tmp_path / "surrogate"), "--attack-images", "3", "--eps-curve", "8/255",
        "--faithfulness-images", "2", "--bootstrap", "100", "--batch-size", "4", "--out", str(tmp_path / "out"),
        "--select-split", "val", "--shift-splits", "test_shifted"])
    summary = args.func(args)
    assert summary["n_images"] == 6 and set(summary["models"]) == {"k4", "k32", "baseline"}
    assert summary["models"]["k32"]["converged"] is False and summary["models"]["k4"]["converged"] is True
    assert summary["models"]["baseline"]["converged"] is None  # no training record: unknown, not assumed
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["dataset"] == "data" and results["split"] == "test" and "transfer" in results["attacks"]
    assert results["selection"]["split"] == "val" and results["selection"]["by"]["accuracy, then IOU"]["model"] == "k4"
    assert results["models"]["k4"]["shifts"]["test_shifted"]["n"] == 6
    assert (tmp_path / "out" / "plots" / "robustness.png").is_file()
    bad = sub.choices["evaluate"].parse_args([str(fam), "--data", str(root), "--select-split", "test"])
    with pytest.raises(ValueError, match="--select-split test is the split being reported"):
        bad.func(bad)


def test_cross_validation_is_evaluated_fold_by_fold_and_aggregated(tmp_path):
    fam = tmp_path / "cv"
    for i in range(2):
        for name, (model, cfg) in family().items():
            save_model(model, cfg, fam / f"fold{i}" / name)
    (fam / "cv.json").write_text(json.dumps({"folds": 2, "seed": 0, "train_split": "train",
                                             "held_out": [[0, 2, 4], [1, 3, 5]]}))
    root = tmp_path / "data"
    _write_folder_dataset(root, "train", FakeSet(6))
    sub = ArgumentParser().add_subparsers()
    register(sub)
    args = sub.choices["evaluate"].parse_args([str(fam), "--data", str(root), "--attacks", "fgsm", "--eps-curve", "none",
                                               "--faithfulness-images", "0", "--bootstrap", "50", "--out",
                                               str(tmp_path / "out")])
    summary = args.func(args)
    assert summary["folds"] == 2
    cv = json.loads((tmp_path / "out" / "cv.json").read_text())
    assert [f["n_images"] for f in cv["folds"]] == [3, 3]
    acc = cv["aggregate"]["models"]["k4"]["accuracy"]
    assert acc["values"] == [f["models"]["k4"]["clean"]["accuracy"] for f in cv["folds"]]
    assert {"l1_paper", "iou_relu", "fgsm_correct"} <= set(cv["aggregate"]["models"]["k4"])
    assert "± " in (tmp_path / "out" / "cv.md").read_text()
    (fam / "cv.json").write_text(json.dumps({"folds": 2}))
    with pytest.raises(ValueError, match="held-out"):
        args.func(args)


def test_bg_gap_is_mixed_same_minus_mixed_rand_with_an_interval(tmp_path):
    models = family()
    r = evaluate_family(models, FakeSet(6), shifts={"mixed_same": FakeSet(6, seed=1), "mixed_rand": FakeSet(6, seed=2)},
                        attacks=(), **{**FAST, "faithfulness_images": 0, "eps_curve": ()})
    for m in r["models"].values():
        assert m["bg_gap"] == pytest.approx(m["shifts"]["mixed_same"]["accuracy"] - m["shifts"]["mixed_rand"]["accuracy"])
    gap = r["models"]["k4"]["comparisons"]["baseline"]["bg_gap"]
    assert gap["diff"] == pytest.approx(r["models"]["k4"]["bg_gap"] - r["models"]["baseline"]["bg_gap"])
    write_report(r, tmp_path)
    assert "## Backgrounds: BG-Gap" in (tmp_path / "results.md").read_text()


def test_attacks_print_an_estimate_after_the_first_image(capsys):
    model, cfg = family()["k4"]
    evaluate_family({"k4": (model, cfg)}, FakeSet(), attacks=("fgsm",), attack_images=3,
                    **{**FAST, "eps_curve": (), "faithfulness_images": 0, "bootstrap_samples": 0, "progress": True})
    err = capsys.readouterr().err
    assert "attacks (fgsm) x 1 models:" in err and "s on the first image -> about" in err and "for the other 2" in err


def test_a_benchmark_without_val_takes_the_choice_made_on_val(tmp_path):
    """--selection-from: the backgrounds benchmark (no val split) is judged by the k its family chose on val."""
    from topgap.eval.evaluate import adopted_selection
    from topgap.io import write_json

    chosen = {"split": "val", "dataset": "pets", "rule": "r", "by": {"accuracy, then IOU": {"model": "k4"}}}
    write_json(tmp_path / "a" / "results.json", {"selection": chosen, "models": {"k4": {}, "baseline": {}}})
    assert adopted_selection(tmp_path / "a", ["baseline", "k4"], "original") == {
        **chosen, "from": str(tmp_path / "a" / "results.json")}
    with pytest.raises(ValueError, match="are not this family's"):
        adopted_selection(tmp_path / "a", ["baseline", "k8"], "original")
    write_json(tmp_path / "b" / "results.json", {"selection": None, "models": {}})
    with pytest.raises(ValueError, match="chose no k"):
        adopted_selection(tmp_path / "b", [], "original")
    write_json(tmp_path / "c" / "results.json", {"selection": {**chosen, "split": "test"}, "models": {}})
    with pytest.raises(ValueError, match="is a test split"):
        adopted_selection(tmp_path / "c", [], "original")
    with pytest.raises(ValueError, match="cannot read a results.json"):
        adopted_selection(tmp_path / "missing", [], "original")


def test_the_selection_takes_any_pooling_but_never_the_gap_control():
    from topgap.eval.evaluate import select_models

    def m(kind, k, pooling, accuracy):
        return {"kind": kind, "k": k, "pooling": pooling, "clean": {"accuracy": accuracy}, "iou_paper": 0.5,
                "converged": True, "collapsed": {"flag": False}}

    results = {"split": "val", "dataset": "d", "models": {
        "fpn-gap": m("topgap", None, "gap", 0.99), "baseline": m("baseline", None, "gap", 0.99),
        "lse-r3": m("topgap", None, "lse", 0.9), "k8": m("topgap", 8, "topgap", 0.8)}}
    assert select_models(results)["by"]["accuracy, then IOU"]["model"] == "lse-r3"
    old = {"kind": "topgap", "k": None, "clean": {"accuracy": 1.0}}  # written before the poolings: k None was GAP
    results["models"]["old-gap"] = old
    assert select_models(results)["by"]["accuracy, then IOU"]["model"] == "lse-r3"
