"""topgap seeds: mean ± std over seeds, paired t-intervals of the differences, exclusions, refusals, CLI, card."""
import json
import math

import pytest
from test_card import RESULTS, model_result

from topgap import ModelConfig, build_model, save_model
from topgap.cli import main
from topgap.eval.seeds import combine_seeds, forest_rows, write_seeds_report
from topgap.eval.stats import mean_std, t_interval
from topgap.io import write_json

T2, T1 = 4.302652729911275, 12.706204736174707  # Student t 0.975 quantiles, df = 2 and df = 1 (any t table)


def seed_results(acc: dict, iou: dict | None = None, l1: dict | None = None, converged: dict | None = None,
                 bg: dict | None = None, **top) -> dict:
    """One seed's results: {model: value} per metric; `bg` = {model: (mixed_same acc, mixed_rand acc)}."""
    models = {}
    for n, a in acc.items():
        m = model_result("baseline" if n == "baseline" else "topgap", None if n == "baseline" else int(n[1:]), a,
                         (iou or {}).get(n, 0.4), (l1 or {}).get(n, 0.3), converged=(converged or {}).get(n, True))
        if bg:
            m["shifts"] = {s: {"n": 10, "correct": 0, "accuracy": v, "iou": None, "mass_in_mask": None}
                           for s, v in zip(("mixed_same", "mixed_rand"), bg[n])}
            m["bg_gap"] = bg[n][0] - bg[n][1]
        models[n] = m
    shifts = {s: {"dataset": "fake", "split": s, "n_images": 10} for s in ("mixed_same", "mixed_rand")} if bg else {}
    selection = {"dataset": "fake", "split": "val", "by": {"accuracy, then IOU": {"model": "k16", "value": 0.9}}}
    return {**RESULTS, "selection": selection, "shifts": shifts, "models": models, **top}


def three_seeds() -> list[dict]:
    return [seed_results({"baseline": b, "k16": k}, iou={"k16": i}, l1={"k16": l}, n_images=n)
            for b, k, i, l, n in ((0.90, 0.91, 0.30, 0.10, 10), (0.92, 0.94, 0.31, 0.12, 11),
                                  (0.94, 0.97, 0.32, 0.14, 12))]


def test_t_interval_and_sample_std_by_hand():
    ci = t_interval([0.01, 0.02, 0.03])
    half = T2 * 0.01 / math.sqrt(3)
    assert ci["diff"] == pytest.approx(0.02) and ci["n"] == 3
    assert (ci["low"], ci["high"]) == (pytest.approx(0.02 - half), pytest.approx(0.02 + half))
    assert t_interval([0.5]) == {"diff": 0.5, "low": None, "high": None, "n": 1, "level": 0.95}  # no interval
    assert mean_std([0.90, 0.92, 0.94], ddof=1)["std"] == pytest.approx(0.02)
    assert mean_std([0.9], ddof=1) == {"mean": 0.9, "std": None, "n": 1}


def test_means_stds_and_paired_intervals_by_hand():
    c = combine_seeds(three_seeds())
    base, k16 = c["models"]["baseline"]["metrics"], c["models"]["k16"]["metrics"]
    assert base["accuracy"]["mean"] == pytest.approx(0.92) and base["accuracy"]["std"] == pytest.approx(0.02)
    assert base["accuracy"]["values"] == [0.90, 0.92, 0.94] and base["accuracy"]["n"] == 3
    assert k16["l1"]["mean"] == pytest.approx(0.12) and k16["l1"]["std"] == pytest.approx(0.02)
    assert c["n_images"] == [10, 11, 12] and (c["dataset"], c["split"], c["n_seeds"]) == ("fake", "test", 3)
    d = c["differences"]["k16"]
    assert list(c["differences"]) == ["k16"]  # the reference is not compared with itself
    acc = d["accuracy"]  # diffs 0.01, 0.02, 0.03: mean 0.02, s 0.01
    assert acc["values"] == pytest.approx([0.01, 0.02, 0.03]) and acc["seeds"] == [0, 1, 2]
    assert acc["low"] == pytest.approx(0.02 - T2 * 0.01 / math.sqrt(3)) and acc["verdict"] == "no clear difference"
    l1 = d["l1"]  # diffs -0.20, -0.18, -0.16: s 0.02, interval below 0, and lower l1 is better
    assert l1["diff"] == pytest.approx(-0.18) and l1["high"] == pytest.approx(-0.18 + T2 * 0.02 / math.sqrt(3))
    assert l1["verdict"] == "better"
    iou = d["iou"]  # diffs -0.10, -0.09, -0.08 -> [-0.1148, -0.0652]
    assert iou["high"] == pytest.approx(-0.09 + T2 * 0.01 / math.sqrt(3)) and iou["verdict"] == "worse"


def test_the_same_difference_in_every_seed_gets_no_verdict():
    # one image of 60 better in each seed: floats 59/60 - 58/60 etc. differ in their last bits, the spread is 0
    seeds = [seed_results({"baseline": b / 60, "k16": (b + 1) / 60}) for b in (50, 53, 58)]
    acc = combine_seeds(seeds)["differences"]["k16"]["accuracy"]
    assert acc["diff"] == pytest.approx(1 / 60) and acc["high"] - acc["low"] < 1e-9
    assert acc["verdict"] == "no verdict (zero spread)"
    same = combine_seeds([seed_results({"baseline": 0.9, "k16": 0.9})] * 3)["differences"]["k16"]["accuracy"]
    assert same["verdict"] == "no clear difference"  # no difference at all is still just that


def test_shift_accuracies_and_bg_gap_lower_is_better(tmp_path):
    seeds = [seed_results({"baseline": 0.9, "k16": 0.9}, bg={"baseline": (0.9, 0.8), "k16": (s, s - g)})
             for s, g in ((0.90, 0.00), (0.91, 0.01), (0.92, 0.02))]
    c = combine_seeds(seeds)
    gap = c["differences"]["k16"]["bg_gap"]  # k16 gaps 0, 0.01, 0.02 minus 0.1: mean -0.09, s 0.01
    assert gap["diff"] == pytest.approx(-0.09) and gap["verdict"] == "better"
    assert c["models"]["k16"]["metrics"]["mixed_same_accuracy"]["mean"] == pytest.approx(0.91)
    # +0.1 in every seed: a zero-width [0.1, 0.1], no spread estimated, so no verdict
    assert c["differences"]["k16"]["mixed_rand_accuracy"]["verdict"].startswith("no verdict")
    md = (write_seeds_report(c, tmp_path, "Bg")[1]).read_text()
    header = next(line for line in md.splitlines() if line.startswith("| model | seeds"))
    assert header == ("| model | seeds | accuracy ↑ | l1 ↓ | iou ↑ | mixed_same_accuracy ↑ "
                      "| mixed_rand_accuracy ↑ | bg_gap ↓ |")
    assert ("| k16 | 3 | 0.900 ± 0.000 | 0.300 ± 0.000 | 0.400 ± 0.000 | 0.910 ± 0.010 | 0.900 ± 0.000 "
            "| 0.010 ± 0.010 |") in md
    assert "| k16 | bg_gap ↓ | 3 | -0.090 | [-0.115, -0.065] | better |" in md


def test_a_non_converged_model_is_left_out_of_that_seed_and_flagged(tmp_path):
    seeds = three_seeds()
    seeds[1]["models"]["k16"].update(converged=False, convergence="final train loss at chance level")
    c = combine_seeds(seeds)
    k16 = c["models"]["k16"]
    assert k16["excluded"] == [{"seed_index": 1, "reason": "final train loss at chance level"}] and k16["flagged"]
    assert k16["seeds"] == [0, 2] and k16["metrics"]["accuracy"]["values"] == [0.91, 0.97]
    assert k16["metrics"]["accuracy"]["std"] == pytest.approx(math.sqrt(2) * 0.03)  # sample std of two values
    assert not c["models"]["baseline"]["flagged"] and c["models"]["baseline"]["metrics"]["accuracy"]["n"] == 3
    acc = c["differences"]["k16"]["accuracy"]  # diffs 0.01 and 0.03 only
    assert acc["seeds"] == [0, 2] and acc["n"] == 2 and acc["diff"] == pytest.approx(0.02)
    assert acc["low"] == pytest.approx(0.02 - T1 * math.sqrt(2) * 0.01 / math.sqrt(2))
    md = write_seeds_report(c, tmp_path, "T")[1].read_text()
    assert "| k16 ⚠ 1 seed(s) excluded | 2 |" in md and "- k16, seed 1: final train loss at chance level" in md
    seeds[0]["models"]["baseline"]["converged"] = False  # a non-converged reference drops the seed from every diff
    assert combine_seeds(seeds)["differences"]["k16"]["accuracy"]["seeds"] == [2]
    assert combine_seeds(seeds)["differences"]["k16"]["accuracy"]["verdict"] == "n/a"


@pytest.mark.parametrize("change, message", [
    (lambda s: s[:1], "at least 2 seeds are needed for a std"),
    (lambda s: [s[0], {**s[1], "dataset": "other"}], "seed 1 was evaluated on dataset 'other' but seed 0 on 'fake'"),
    (lambda s: [s[0], {**s[1], "split": "val"}], "seed 1 was evaluated on split 'val'"),
    (lambda s: [s[0], {**s[1], "models": {"baseline": s[1]["models"]["baseline"]}}],
     "model 'k16' is missing from seed 1's report"),
    (lambda s: [s[0], {**s[1], "shifts": {"only_bg": {}}}], "evaluate every seed with the same --shift-splits"),
])
def test_refusals(change, message):
    with pytest.raises(ValueError, match=message):
        combine_seeds(change(three_seeds()))
    with pytest.raises(ValueError, match="reference model 'k4' is not in the reports; choose one of baseline, k16"):
        combine_seeds(three_seeds(), reference="k4")


def test_cli_round_trip_and_messages(tmp_path, capsys):
    folders = []
    for i, r in enumerate(three_seeds()):
        folders.append(str(tmp_path / f"seed{i}"))
        write_json(tmp_path / f"seed{i}" / "results.json", r)
    out = tmp_path / "seeds"
    assert main(["seeds", *folders, "--out", str(out), "--title", "Three seeds"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["models"]["baseline"]["accuracy"] == "0.920 ± 0.020"
    saved = json.loads((out / "seeds.json").read_text())
    assert saved["reports"] == folders
    assert saved["models"]["baseline"]["metrics"]["accuracy"]["mean"] == pytest.approx(0.92)
    assert (out / "seeds.md").read_text().startswith("# Three seeds\n")
    assert "![model − reference](seeds.png)" in (out / "seeds.md").read_text()
    assert (out / "seeds.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / "seeds.png").stat().st_size > 5000
    assert main(["seeds", folders[0], "--out", str(out), "--title", "T"]) == 2
    assert "at least 2 seeds are needed for a std" in capsys.readouterr().err
    assert main(["seeds", folders[0], folders[1], folders[0], "--out", str(out), "--title", "T"]) == 2
    assert f"{folders[0]} is given twice; give one report folder per seed" in capsys.readouterr().err
    assert main(["seeds", folders[0], str(tmp_path / "nothing"), "--out", str(out), "--title", "T"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'nothing'} has no results.json; run topgap evaluate" in err and err.count("\n") == 1


def test_card_gets_the_seeds_section_only_when_asked(tmp_path, capsys):
    fam, report, seeds = tmp_path / "fam", tmp_path / "report", tmp_path / "seeds"
    for name, kind, k in (("k16", "topgap", 16), ("baseline", "baseline", None)):
        cfg = ModelConfig("resnet18", ["a", "b"], kind=kind, k=k, fpn_channels=8)
        save_model(build_model(cfg), cfg, fam / name)
    write_json(report / "results.json", RESULTS)
    combined = combine_seeds(three_seeds())
    write_seeds_report(combined, seeds, "Seeds")
    card = ["card", str(fam), "--report", str(report), "--title", "Fake", "--data-note", "Made up."]
    assert main([*card, "--seeds-report", str(tmp_path)]) == 2
    assert f"{tmp_path} has no seeds.json; run topgap seeds" in capsys.readouterr().err
    assert main([*card, "--seeds-report", str(seeds)]) == 0
    text = (fam / "README.md").read_text()
    assert "## Data\n\nMade up.\n\n## Across seeds (mean ± std)\n\nDataset **fake** (split test), 3 seeds" in text
    assert text.index("## Across seeds") < text.index("## How Top-GAP compares with the baseline")
    assert "| baseline | 3 | 0.920 ± 0.020 |" in text
    assert "| l1 ↓ | – | -0.180 [-0.230, -0.130] **better** |" in text  # the differences, as claims
    assert "<!-- claims: card.json#/seeds/0 -->" in text and "| k16 | l1 ↓ | 3 |" not in text  # not twice
    assert json.loads((fam / "card.json").read_text())["seeds"] == [combined]
    bg = combine_seeds([seed_results({"baseline": 0.9, "k16": 0.9}, bg={"baseline": (0.9, 0.8), "k16": (x, x)})
                        for x in (0.90, 0.91, 0.92)])
    write_seeds_report(bg, tmp_path / "bg-seeds", "Backgrounds")
    assert main([*card, "--seeds-report", str(seeds), str(tmp_path / "bg-seeds")]) == 0  # test split, then a benchmark
    text = (fam / "README.md").read_text()
    assert text.count("## Across seeds") == 1 and text.count("Dataset **fake** (split test), 3 seeds") == 2
    assert "No seed was excluded.\n\nAgainst the baseline:" in text and "| BG-Gap ↓ | – | -0.100 [" in text
    assert json.loads((fam / "card.json").read_text())["seeds"] == [combined, bg]
    assert main(card) == 0
    assert "Across seeds" not in (fam / "README.md").read_text()
    assert "seeds" not in json.loads((fam / "card.json").read_text())


def test_the_seeds_record_their_choice_and_without_one_no_verdict():
    seeds = three_seeds()
    c = combine_seeds(seeds)
    assert c["selected"] == ["k16", "k16", "k16"] and c["cam_target"] == seeds[0].get("cam_target")
    for r in seeds:
        r["selection"] = None  # topgap evaluate --select-split none
    c = combine_seeds(seeds)
    assert c["selected"] == [None] * 3
    assert {d["verdict"] for d in c["differences"]["k16"].values()} == {"descriptive"}


def test_seeds_of_different_cam_targets_are_not_combined():
    seeds = three_seeds()
    seeds[1]["cam_target"] = "predicted"
    with pytest.raises(ValueError, match="cam_target"):
        combine_seeds(seeds)


def test_the_forest_plot_draws_each_models_interval_and_verdict():
    c = combine_seeds(three_seeds())
    (name, diff, low, high, verdict), = forest_rows(c, "accuracy")
    acc = c["differences"]["k16"]["accuracy"]
    assert (name, diff, low, high, verdict) == ("k16", acc["diff"], acc["low"], acc["high"], acc["verdict"])
    assert forest_rows(c, "no_such_metric") == []
