import json

from topgap import ModelConfig, build_model, save_model
from topgap.eval.card import verdicts, write_card
from topgap.io import write_json


def ci(diff, low, high, word):
    return {"diff": diff, "low": low, "high": high, "n": 10, "samples": 100, "level": 0.95, "verdict": word}


def model_result(kind, k, acc, iou, l1, converged=True, comparisons=None):
    m = {"kind": kind, "backbone": "resnet18", "k": k, "cam_size": [16, 16] if k else None,
         "k_fraction": k / 256 if k else None, "converged": converged,
         "convergence": None if converged else "final train loss at chance level",
         "clean": {"n": 10, "correct": int(acc * 10), "accuracy": acc}, "n_masks": 10, "n_road": 0, "attacks": {},
         "eps_curve": [], "eps_curve_reaches_zero": None, "white_box_rate": None, "black_box_rate": None,
         "gradient_masking_suspected": None, "shifts": {}}
    for key, v in (("l1", l1), ("iou", iou), ("mass_in_mask", None), ("pxap", None), ("maxboxacc_v2", None),
                   ("road", None)):
        m[key] = m[f"{key}_gradcam"] = v
    if comparisons is not None:
        m["comparisons"] = {"baseline": comparisons}
    return m


RESULTS = {"dataset": "fake", "split": "test", "n_images": 10, "eps": 1 / 255, "pgd_steps": [40], "pgd_rule": "foolbox",
           "attacks": [], "attack_images": 0, "square_queries": 1000, "eps_curve": [], "cam_method": "gradcam",
           "postprocessing": "relu-minmax", "l1_resolution": [16, 16], "localisation_resolution": [64, 64],
           "faithfulness": {"metric": "ROAD", "imputer": "blur", "percentiles": [20, 40], "images": 0},
           "surrogate": None, "bootstrap": {"samples": 100, "level": 0.95, "seed": 0}, "shifts": {},
           "selection": {"split": "val", "dataset": "fake", "by": {"accuracy": {"model": "k16", "value": 0.8}}},
           "models": {
               "k4": model_result("topgap", 4, 0.7, 0.6, 0.1, comparisons={"iou": ci(0.2, 0.05, 0.3, "better")}),
               "k16": model_result("topgap", 16, 0.8, 0.5, 0.2, comparisons={
                   "accuracy": ci(-0.1, -0.3, 0.1, "no clear difference"), "l1": ci(-0.1, -0.2, -0.01, "better")}),
               "k64": model_result("topgap", 64, 0.3, 0.1, 0.9, converged=False, comparisons={
                   "accuracy": ci(-0.6, -0.8, -0.4, "not converged: no verdict")}),
               "baseline": model_result("baseline", None, 0.9, 0.4, 0.3)}}


def test_verdicts_list_the_model_chosen_on_validation_with_its_intervals():
    rows = verdicts(RESULTS)
    assert {r["model"] for r in rows} == {"k16"}  # the selection, not the best on test
    acc = next(r for r in rows if r["metric"] == "accuracy")
    assert (acc["diff"], acc["low"], acc["high"], acc["verdict"]) == (-0.1, -0.3, 0.1, "no clear difference")
    unselected = {**RESULTS, "selection": None}
    assert {r["model"] for r in verdicts(unselected)} == {"k4", "k16", "k64"}


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
    assert "**k16** (chosen on val by accuracy) minus baseline" in text and "topgap train ..." in text
    assert "accuracy: -0.100 [-0.300, +0.100] no clear difference" in text
    assert "**k64** did not converge (final train loss at chance level)" in text
    assert "![iou](plots/iou.png)" in text and (fam / "plots" / "iou.png").exists()
    card = json.loads((fam / "card.json").read_text())
    assert card["evaluation"] == RESULTS and set(card["training"]) == {"k4", "k16", "baseline"}
