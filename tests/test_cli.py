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
                 "--attacks", "fgsm", "pgd", "--pgd-steps", "1", "2", "--eps", "8/255", "--eps-curve",
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
