import json

from topgap import ModelConfig, build_model, save_model
from topgap.eval.card import verdicts, write_card
from topgap.io import write_json


def model_result(kind, k, acc, iou, l1):
    return {"kind": kind, "backbone": "resnet18", "k": k, "cam_size": [16, 16] if k else None,
            "k_fraction": k / 256 if k else None, "clean": {"n": 10, "correct": int(acc * 10), "accuracy": acc},
            "l1": l1, "l1_gradcam": l1, "n_masks": 10, "iou": iou, "iou_gradcam": iou, "mass_in_mask": None,
            "mass_in_mask_gradcam": None, "attacks": {}, "white_box_rate": None, "black_box_rate": None,
            "gradient_masking_suspected": None, "shifted": None}


RESULTS = {"dataset": "fake", "split": "test", "n_images": 10, "eps": 1 / 255, "pgd_steps": [40], "attacks": [],
           "attack_images": 0, "square_queries": 0, "cam_method": "gradcam", "shifted": None,
           "models": {"k4": model_result("topgap", 4, 0.7, 0.6, 0.1), "k16": model_result("topgap", 16, 0.8, 0.5, 0.2),
                      "baseline": model_result("baseline", None, 0.9, 0.4, 0.3)}}


def test_verdicts_pick_the_best_k_and_say_when_topgap_loses():
    v = {x["metric"]: x for x in verdicts(RESULTS)}
    acc = v["clean accuracy"]
    assert (acc["best_topgap"], acc["topgap"], acc["baseline"], acc["topgap_better"]) == ("k16", 0.8, 0.9, False)
    iou = v["IOU with the masks (own CAM vs GradCAM on the baseline)"]
    assert (iou["best_topgap"], iou["topgap_better"]) == ("k4", True)
    assert v["l1 of the CAM (sparsity)"]["best_topgap"] == "k4"  # lower is better
    assert "accuracy on the shifted split" not in v  # not measured, not claimed


def test_card_files(tmp_path):
    fam = tmp_path / "fam"
    for name, kind, k in (("k4", "topgap", 4), ("k16", "topgap", 16), ("baseline", "baseline", None)):
        cfg = ModelConfig("resnet18", ["a", "b"], kind=kind, k=k, fpn_channels=8, metrics={"train_seconds": 60.0})
        save_model(build_model(cfg), cfg, fam / name)
    report = tmp_path / "report"
    write_json(report / "results.json", RESULTS)
    (report / "plots").mkdir()
    (report / "plots" / "iou.png").write_bytes(b"\x89PNG fake")
    write_card(fam, report, title="Fake zoo", data_note="Made up.", commands=["topgap train ..."])
    text = (fam / "README.md").read_text()
    assert "does **not** beat the baseline: 0.800 vs 0.900" in text and "topgap train ..." in text
    assert "![iou](plots/iou.png)" in text and (fam / "plots" / "iou.png").exists()
    card = json.loads((fam / "card.json").read_text())
    assert card["evaluation"] == RESULTS and set(card["training"]) == {"k4", "k16", "baseline"}
