"""The claims renderer: every comparison, in one fixed order, with protocol, target and interval; words that only
restate the verdicts; the paper's claims that do not reproduce."""
from topgap.eval.claims import comparisons, render_claims


def ci(diff, low, high, verdict):
    return {"diff": diff, "low": low, "high": high, "n": 50, "verdict": verdict}


def results(selection="k16", verdicts=None):
    """A results.json of this version: map metrics per protocol, a control, a collapsed-free family, FGSM."""
    v = verdicts or {}
    top = {
        "k16": {"fgsm_correct": ci(0.04, -0.02, 0.10, "no clear difference"),
                "l1_relu": ci(-0.03, -0.05, -0.01, "better"), "l1_paper": ci(0.02, 0.01, 0.03, "worse"),
                "accuracy": ci(0.01, -0.02, 0.04, v.get("accuracy", "no clear difference")),
                "iou_paper": ci(0.05, 0.02, 0.08, "better"), "iou_relu": ci(0.06, 0.03, 0.09, "better"),
                "l1_gradcam": ci(0.5, 0.4, 0.6, "worse")},  # GradCAM on a Top-GAP model: not a claim
        "k4": {"accuracy": ci(-0.10, -0.15, -0.05, "worse")},
        "fpn-gap": {"accuracy": ci(0.0, -0.03, 0.03, "no clear difference")},
    }
    models = {"fpn-gap": {"kind": "topgap", "k": None}, "k16": {"kind": "topgap", "k": 16},
              "baseline": {"kind": "baseline", "k": None}, "k4": {"kind": "topgap", "k": 4}}
    for n, cmp in top.items():
        models[n]["comparisons"] = {"baseline": cmp, "fpn-gap": {"accuracy": ci(9, 9, 9, "better")}}
    sel = {"split": "val", "by": {"accuracy, then IOU": {"model": selection, "value": 0.9}}} if selection else None
    return {"dataset": "pets", "split": "test", "n_images": 298, "cam_target": "label", "shifts": {},
            "selection": sel, "models": models}


def test_every_comparison_with_the_baseline_in_the_fixed_order():
    rows = comparisons(results())
    keys = [(r["metric"], r["protocol"], r["model"]) for r in rows]
    assert keys == [("accuracy", None, "k4"), ("accuracy", None, "k16"), ("accuracy", None, "fpn-gap"),
                    ("l1", "paper", "k16"), ("l1", "relu", "k16"), ("iou", "paper", "k16"), ("iou", "relu", "k16"),
                    ("fgsm_correct", None, "k16")]  # by k, control last; no GradCAM row; no comparison with fpn-gap
    l1 = rows[3]
    assert (l1["diff"], l1["low"], l1["high"], l1["verdict"], l1["target"], l1["chosen"]) == \
        (0.02, 0.01, 0.03, "worse", "label", True)
    assert rows[0]["target"] is None and rows[0]["chosen"] is False


def test_the_table_shows_worse_as_plainly_as_better():
    text = render_claims(results())
    assert "| metric | protocol | k4 | k16 (chosen) | fpn-gap |" in text
    assert "| l1 ↓ | paper | – | +0.020 [+0.010, +0.030] **worse** | – |" in text
    assert "| l1 ↓ | relu | – | -0.030 [-0.050, -0.010] **better** | – |" in text
    assert "| accuracy ↑ | – | -0.100 [-0.150, -0.050] **worse** |" in text
    assert "CAMs for the ground-truth class" in text and "298 images: 95% paired bootstrap interval" in text


def test_words_restate_the_verdicts_per_protocol():
    text = render_claims(results())
    assert "- **k16**: better on l1 (under relu, not under paper), IOU (both protocols); worse on l1 (under " \
           "paper, not under relu)." in text
    assert "- **k4**: better on nothing; worse on accuracy." in text


def test_what_does_not_reproduce_is_judged_on_the_chosen_model():
    text = render_claims(results())
    tail = text.split("does not reproduce here (the chosen model):", 1)[1].split("The promise")[0]
    assert "- a sparser CAM than GradCAM on the baseline (Table 2): **k16** (paper) +0.020 [+0.010, +0.030] " \
           "**worse**." in tail
    assert "- more images survive FGSM (Table 3; judged here on 'still correct', the paper counts 'unchanged'): " \
           "**k16** +0.040 [-0.020, +0.100] no clear difference." in tail
    assert "IOU" not in tail and "accuracy" not in tail  # IOU better; accuracy "no clear difference" is comparable
    assert "**k4**" not in tail  # not chosen
    worse = render_claims(results(verdicts={"accuracy": "worse"})).split("does not reproduce", 1)[1]
    assert "- comparable clean accuracy (Table 3): **k16**" in worse
    every = render_claims(results(selection=None)).split("does not reproduce", 1)[1]
    assert "(every Top-GAP model)" in every and "comparable clean accuracy (Table 3): **k4**" in every
    assert "fpn-gap" not in every  # the control is not Top-GAP


def test_without_a_choice_on_validation_there_is_no_verdict():
    r = results(selection=None)
    for m in r["models"].values():
        for c in (m.get("comparisons") or {}).get("baseline", {}).values():
            c["verdict"] = "descriptive"
    text = render_claims(r)
    assert "'descriptive': no k was chosen on validation data" in text
    assert "- no verdicts: no k was chosen on validation data.\n\nThe promise" in text
    assert text.endswith("- not answered: no k was chosen on validation data.")
    assert "- **k16**: no verdicts (descriptive)." in text


def test_seeds_are_rendered_from_their_paired_differences():
    seeds = {"dataset": "pets", "split": "test", "n_seeds": 3, "n_images": [298] * 3, "cam_target": "label",
             "shifts": ["mixed_rand", "only_bg_t"], "selected": ["k16", "k16", "k16"], "reference": "baseline",
             "models": {"baseline": {"kind": "baseline", "k": None}, "k16": {"kind": "topgap", "k": 16}},
             "differences": {"k16": {"mixed_rand_accuracy": ci(-0.05, -0.09, -0.01, "worse"),
                                     "only_bg_t_accuracy": ci(0.2, 0.1, 0.3, "worse"),
                                     "pgd10_unchanged": ci(0.1, 0.0, 0.2, "no clear difference"),
                                     "accuracy": ci(0.02, -0.01, 0.05, "no clear difference")}}}
    text = render_claims(seeds)
    assert "3 seeds: mean of the per-seed differences, 95% Student-t interval over seeds" in text
    assert [r["metric"] for r in comparisons(seeds)] == ["accuracy", "mixed_rand_accuracy", "only_bg_t_accuracy"]
    assert "| only_bg_t accuracy ↓ |" in text  # the background alone: lower is better
    tail = text.split("does not reproduce here (the chosen model):", 1)[1].split("The promise")[0]
    assert "- higher accuracy under distribution shift (Table 5): **k16** (mixed_rand accuracy) -0.050" in tail
    assert "only_bg_t" not in tail  # the paper claims nothing about the background alone


def test_a_report_without_a_target_does_not_invent_one():
    r = results()
    del r["cam_target"]
    text = render_claims(r)
    assert "CAMs for the class the report names, the baseline's by GradCAM." in text and "None" not in text


def test_seeds_that_chose_differently_say_so():
    seeds = {"dataset": "pets", "split": "test", "n_seeds": 3, "n_images": [298] * 3, "cam_target": "label",
             "shifts": [], "selected": ["k16", "k16", "k4"], "reference": "baseline",
             "models": {"baseline": {"kind": "baseline", "k": None}, "k4": {"kind": "topgap", "k": 4},
                        "k16": {"kind": "topgap", "k": 16}},
             "differences": {"k4": {"accuracy": ci(-0.1, -0.2, -0.05, "worse")},
                             "k16": {"accuracy": ci(-0.1, -0.2, -0.05, "worse")}}}
    text = render_claims(seeds)
    assert "Chosen on validation data: k16 in 2 of 3 seeds, k4 in 1 of 3 seeds." in text
    assert "| metric | protocol | k4 (chosen) | k16 (chosen) |" in text
    assert "(the models chosen in some seed)" in text and "**k4**" in text.split("does not reproduce")[1]
    seeds["selected"] = ["k16"] * 3
    assert "Chosen on validation data: k16 in every seed." in render_claims(seeds)


def test_the_promise_needs_l1_and_iou_both_better_per_protocol():
    text = render_claims(results())
    # k16: IOU better under both protocols, l1 worse under paper and better under relu
    assert "- **k16**, paper protocol (min-max of the raw map): **no** (l1 +0.020 [+0.010, +0.030] **worse**; IOU " \
           "+0.050 [+0.020, +0.080] **better**)." in text
    assert "- **k16**, ReLU-first: **yes** (l1 -0.030 [-0.050, -0.010] **better**; IOU +0.060 [+0.030, +0.090] " \
           "**better**)." in text
    assert "k4**, paper" not in text  # only the chosen model answers it
    assert "- not answered: no k was chosen on validation data." in render_claims(results(selection=None))
