"""The README's command-line flow on tiny data: topgap synth -> train (with --config) -> evaluate -> card -> info."""
import json

import pytest

from topgap.cli import main


@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    data, fam, report = root / "data", root / "family", root / "report"
    assert main(["synth", str(data), "--n-train", "16", "--n-val", "8", "--n-test", "8", "--size", "32"]) == 0
    (root / "recipe.json").write_text(json.dumps({"epochs": 1, "batch_size": 8, "workers": 0, "fpn_channels": 8}))
    assert main(["train", "--config", str(root / "recipe.json"), "--data", str(data), "--out", str(fam),
                 "--backbone", "regnetx_002", "--image-size", "32", "--k", "2", "8", "--baseline",
                 "--augment", "none", "--half"]) == 0
    assert main(["evaluate", str(fam), "--data", str(data), "--split", "test", "--shift-splits", "test_shifted",
                 "--attacks", "fgsm", "pgd", "--pgd-steps", "1", "2", "--eps", "8/255", "--eps-curve", "none",
                 "--faithfulness-images", "4", "--bootstrap", "50", "--out", str(report)]) == 0
    return root, data, fam, report


def test_train_writes_the_family_with_resolved_options(flow):
    _, _, fam, _ = flow
    assert sorted(p.name for p in fam.iterdir() if p.is_dir()) == ["baseline", "k2", "k8"]
    args = json.loads((fam / "train_args.json").read_text())
    assert args["epochs"] == 1 and args["fpn_channels"] == 8 and args["augment"] == "none"  # from the config file
    cfg = json.loads((fam / "k8" / "config.json").read_text())
    assert cfg["k"] == 8 and cfg["fpn_channels"] == 8 and cfg["recipe"]["epochs"] == 1
    assert cfg["class_names"] == ["circle", "square", "star", "triangle"]  # sorted class folders


def test_evaluate_and_card(flow, capsys):
    root, _, fam, report = flow
    results = json.loads((report / "results.json").read_text())
    assert set(results["models"]) == {"k2", "k8", "baseline"} and results["models"]["k8"]["shifts"]["test_shifted"]["n"] == 8
    assert {"pgd1", "pgd2"} <= set(results["models"]["k8"]["attacks"]) and (report / "plots" / "iou.png").exists()
    assert (report / "plots" / "pgd_steps.png").exists()  # robust accuracy against steps (Figure A2)
    assert main(["card", str(fam), "--report", str(report), "--title", "Tiny", "--data-note", "synthetic",
                 "--command", "topgap train ..."]) == 0
    assert json.loads((fam / "card.json").read_text())["evaluation"] == results
    capsys.readouterr()
    assert main(["info", str(fam / "k2")]) == 0
    assert json.loads(capsys.readouterr().out)["k"] == 2


def test_bad_input_is_one_clear_line(flow, tmp_path, capsys):
    root, data, _, _ = flow
    (tmp_path / "bad.json").write_text(json.dumps({"epochz": 1}))
    assert main(["train", "--config", str(tmp_path / "bad.json"), "--data", str(data), "--out", str(tmp_path)]) == 2
    assert "unknown options ['epochz']" in capsys.readouterr().err
    assert main(["train", "--data", str(data)]) == 2
    assert "--out are required" in capsys.readouterr().err
    assert main(["describe", "resnet81"]) == 2
    assert "unknown backbone 'resnet81'" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--attacks", "--eps-curve", "--shift-splits"])
def test_a_list_flag_without_values_is_an_error_that_names_it(flow, flag, capsys):
    _, data, fam, _ = flow
    with pytest.raises(SystemExit):
        main(["evaluate", str(fam), "--data", str(data), flag])
    assert f"argument {flag}: expected at least one argument" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--data", str(data), "--out", str(fam), "--k"])
    assert "argument --k: expected at least one argument" in capsys.readouterr().err
    assert main(["evaluate", str(fam), "--data", str(data), "--attacks", "fgsm", "none"]) == 2
    assert "--attacks: 'none' cannot be combined with other values (got fgsm none)" in capsys.readouterr().err


@pytest.mark.parametrize("split, message", [
    ("test", "--select-split test is the split being reported"),
    ("./Test/", "is the split being reported"),
    ("test_shifted", "--select-split test_shifted is a test split"),
    ("TEST_shifted", "is a test split"),
    ("holdout", "has no such split (it has "),
])
def test_k_is_never_chosen_on_a_test_split(flow, split, message, capsys):
    _, data, fam, _ = flow
    assert main(["evaluate", str(fam), "--data", str(data), "--split", "test", "--select-split", split]) == 2
    assert message in capsys.readouterr().err
    assert main(["evaluate", str(fam), "--data", str(data), "--split", "val", "--select-split", "test"]) == 2
    assert "is a test split" in capsys.readouterr().err


def test_without_a_selection_no_verdict_is_printed(flow, tmp_path):
    _, data, fam, _ = flow
    out = tmp_path / "report"
    assert main(["evaluate", str(fam), "--data", str(data), "--split", "test", "--select-split", "none", "--attacks",
                 "none", "--eps-curve", "none", "--faithfulness-images", "0", "--bootstrap", "20", "--out",
                 str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["selection"] is None
    verdicts = {c["verdict"] for m in results["models"].values() for ref in (m.get("comparisons") or {}).values()
                for c in ref.values()}
    assert verdicts == {"descriptive"}
    report = (out / "results.md").read_text()
    assert "'descriptive': no k was chosen on validation data, so no verdict." in report
    assert "- no verdicts: no k was chosen on validation data." in report
    assert not any(f"] {word}" in report for word in ("better", "worse", "no clear difference"))


def test_k_is_chosen_on_val_by_one_rule(flow):
    from topgap.eval.evaluate import SELECTION_RULE, select_models

    _, _, _, report = flow
    selection = json.loads((report / "results.json").read_text())["selection"]
    assert selection["split"] == "val" and selection["rule"] == SELECTION_RULE[1]  # the default --select-split

    def model(k, accuracy, iou, **kw):
        return {"kind": "topgap", "k": k, "clean": {"accuracy": accuracy}, "iou_paper": iou, **kw}

    results = {"split": "val", "dataset": "d", "models": {
        "baseline": {"kind": "baseline", "k": None, "clean": {"accuracy": 0.99}, "iou": 0.9},
        "k8": model(8, 0.90, 0.50), "k16": model(16, 0.90, 0.60), "k32": model(32, 0.85, 0.90),
        "k64": model(64, 0.95, 0.70, converged=False), "k128": model(128, 0.97, 0.70, collapsed={"flag": True}),
        "fpn-gap": model(None, 0.99, 0.99)}}
    assert select_models(results)["by"] == {"accuracy, then IOU": {"model": "k16", "value": 0.90, "iou": 0.60}}
    results["models"]["k16"]["iou_paper"] = 0.50  # a full tie: the smaller k
    assert select_models(results)["by"]["accuracy, then IOU"]["model"] == "k8"


def _tiny_oxford(root):
    """The Oxford-IIIT Pet layout with 2 breeds x 5 images: trainval holds all, val every 5th of each breed."""
    from PIL import Image

    (root / "images").mkdir(parents=True)
    (root / "annotations" / "trimaps").mkdir(parents=True)
    rows = []
    for cid, breed in enumerate(("Abyssinian", "beagle"), 1):
        for i in range(1, 6):
            Image.new("RGB", (40, 30), (cid * 60, i * 20, 90)).save(root / "images" / f"{breed}_{i}.jpg")
            Image.new("L", (40, 30), 1).save(root / "annotations" / "trimaps" / f"{breed}_{i}.png")
            rows.append(f"{breed}_{i} {cid} {1 if breed[0].isupper() else 2} {cid}")
    (root / "annotations" / "trainval.txt").write_text("\n".join(rows) + "\n")
    return root


def test_training_on_the_validation_images_is_refused(tmp_path, capsys):
    data = _tiny_oxford(tmp_path / "pets")
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "fam"), "--train-split", "trainval",
                 "--val-split", "val", "--image-size", "32", "--epochs", "1", "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert "the training and validation sets share 2 images (e.g. images/" in err and "--train-split train" in err
    assert not (tmp_path / "fam" / "k64").exists()


def test_a_family_of_another_pooling_trains_and_evaluates(flow, tmp_path, capsys):
    _, data, _, _ = flow
    fam, report = tmp_path / "lse", tmp_path / "report"
    assert main(["train", "--data", str(data), "--out", str(fam), "--backbone", "regnetx_002", "--image-size", "32",
                 "--pooling", "lse", "--pool-r", "3", "--baseline", "--control", "--epochs", "1", "--batch-size", "8",
                 "--workers", "0", "--fpn-channels", "8", "--augment", "none"]) == 0
    cfg = json.loads((fam / "lse-r3" / "config.json").read_text())
    assert (cfg["pooling"], cfg["pooling_params"], cfg["k"]) == ("lse", {"r": 3.0}, None)
    assert main(["evaluate", str(fam), "--data", str(data), "--split", "test", "--attacks", "none", "--eps-curve",
                 "none", "--faithfulness-images", "0", "--sanity-images", "0", "--bootstrap", "50", "--out",
                 str(report)]) == 0
    results = json.loads((report / "results.json").read_text())
    lse = results["models"]["lse-r3"]
    assert lse["pooling"] == "lse" and set(lse["comparisons"]) == {"baseline", "fpn-gap"}  # the control is a reference
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "{gap,gmp,topgap,lse,wildcat,gwrp}" in text
    assert "LSE sharpness r > 0 (default 10.0) --pool-d" in text  # its default once, not "(default: None)" after it
