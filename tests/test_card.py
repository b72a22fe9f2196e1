import json

from topgap import ModelConfig, build_model, save_model
from topgap.eval.card import card_markdown, write_card
from topgap.eval.claims import comparisons, render_claims
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


def save_members(fam):
    """k4, k16 and the baseline into `fam`: the baseline tuned apart (AdamW), only k4 with a validation accuracy."""
    for name, kind, k in (("k4", "topgap", 4), ("k16", "topgap", 16), ("baseline", "baseline", None)):
        recipe = {"optimizer": "adamw", "lr": 3e-4} if kind == "baseline" else {}
        metrics = {"train_seconds": 60.0, **({"val_accuracy": 0.875} if k == 4 else {})}  # the others: no val split
        cfg = ModelConfig("resnet18", ["a", "b"], kind=kind, k=k, fpn_channels=8, metrics=metrics, recipe=recipe)
        save_model(build_model(cfg), cfg, fam / name)
    return fam


def test_card_files(tmp_path):
    fam = save_members(tmp_path / "fam")
    report = tmp_path / "report"
    write_json(report / "results.json", RESULTS)
    (report / "plots").mkdir()
    (report / "plots" / "iou.png").write_bytes(b"\x89PNG fake")
    write_card(fam, report, title="Fake zoo", data_note="Made up.", commands=["topgap train ..."])
    text = (fam / "README.md").read_text()
    card = json.loads((fam / "card.json").read_text())
    assert card_markdown(card) == text  # the README is a function of card.json alone: topgap claims checks it
    assert f"<!-- claims: card.json#/evaluation -->\n{render_claims(RESULTS)}\n<!-- /claims -->" in text
    assert "| k4 | k16 (chosen) | k64 |" in text and "not converged: no verdict" in text
    assert "topgap train ..." in text and "Total training time 3.0 min." in text
    assert "| baseline | baseline | – | adamw 0.0003 | – | – | 60 |" in text  # a member's own optimizer and lr
    assert "| k4 | topgap | 4 | – | – | 0.875 |" in text  # '–' for what a member does not record
    assert "![iou](plots/iou.png)" in text and (fam / "plots" / "iou.png").exists()
    assert card["evaluation"] == RESULTS and set(card["training"]) == {"k4", "k16", "baseline"}
    assert card["verdicts"] == comparisons(RESULTS) and card["training_minutes"] == 3.0


def test_a_card_of_both_protocols_shows_them_side_by_side_and_flags_a_collapsed_model(tmp_path):
    """results.json of this version (map metrics per CAM protocol, `collapsed`): the card and the app's view show
    both protocols, and a collapsed model is marked and never judged; older reports (above) still read."""
    from topgap.explorer.card_view import card_figures, render_card

    new = json.loads(json.dumps(RESULTS))
    del new["postprocessing"]
    new |= {"protocols": {"paper": "own CAM: min-max", "relu": "own CAM: ReLU, min-max"}, "cam_target": "label"}
    for n, m in new["models"].items():
        for key in ("l1", "iou", "mass_in_mask", "pxap", "maxboxacc_v2"):
            v = m.pop(key)
            m[f"{key}_paper"], m[f"{key}_relu"] = v, None if v is None else v / 2
        m["collapsed"] = {"flag": n == "k4", "reason": "predicts a for 100% of the images (> 90%)" if n == "k4" else
                          None, "majority_share": 1.0 if n == "k4" else 0.5, "majority_class": "a"}
    fam = save_members(tmp_path / "fam")
    write_json(tmp_path / "report" / "results.json", new)
    write_card(fam, tmp_path / "report", title="Fake zoo", data_note="Made up.", commands=["topgap train ..."])
    readme = (fam / "README.md").read_text()
    assert "| l1 ↓ paper | Δ vs baseline, paper [95% CI] | l1 ↓ relu |" in readme
    assert "## Collapsed predictions" in readme and "k4 ⚠ collapsed" in readme
    text, _ = render_card(fam)
    assert "CAM protocols paper and relu" in text and "| IOU paper | IOU relu |" in text
    assert "| k4 ⚠ collapsed | 4 | 0.700 | 0.600 | 0.300 |" in text
    figures = card_figures(json.loads((fam / "card.json").read_text()))["models"]["k16"]
    assert (figures["iou_paper"], figures["iou_relu"], figures["iou"], figures["collapsed"]) == (0.5, 0.25, None, False)
