"""bench/bias_table.py: k per role, the CLI calls it makes (checked against topgap's own parser), and the table."""
import importlib.util
import json
from pathlib import Path

import pytest

from topgap.cli import build_parser

_spec = importlib.util.spec_from_file_location("bias_table", Path(__file__).parents[1] / "bench" / "bias_table.py")
bias_table = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bias_table)


def _meta(train_px: float, size: int = 96, all_px: float | None = None) -> dict:
    """synth.json's fields that set k: the train split's mean object pixels (and another mean over all splits)."""
    return {"size": size, "splits": {"train": {"object_pixels_mean": train_px}},
            "object_area_fraction_mean": (all_px or train_px) / size ** 2}


def test_k_per_role_comes_from_the_train_split(tmp_path):
    assert bias_table.ks_for(_meta(0.035 * 96 ** 2, all_px=0.09 * 96 ** 2), 576, 8) == {
        "topgap_matched": 20, "topgap_mismatched": 160, "fpn_only": 576}  # 0.035 * 576 = 20.2; test areas unused
    assert bias_table.ks_for(_meta(0.2 * 96 ** 2), 576, 8)["topgap_mismatched"] == 288  # half the map
    assert bias_table.ks_for(_meta(0.0001 * 96 ** 2), 64, 8)["topgap_matched"] == 1
    ks = bias_table.ks_for(_meta(0.035 * 96 ** 2), 576, 8)
    assert bias_table.trained_ks(tmp_path, ks) == ks  # nothing trained yet
    (tmp_path / "family").mkdir()
    (tmp_path / "family" / "train_args.json").write_text(json.dumps({"k": [21, 168]}))
    assert bias_table.trained_ks(tmp_path, ks) == {"topgap_matched": 21, "topgap_mismatched": 168, "fpn_only": 576}


def test_direction_of_each_column_is_topgaps_rule():
    assert [bias_table.higher_is_better(m) for m in ("clean", "shifted", "only_bg", "iou", "mass_in_mask")] == [
        True, True, False, True, True]


def test_class_map_pixels():
    assert bias_table.class_map_pixels("regnetx_002", 4, 8, 96) == 24 * 24  # stride 4
    assert bias_table.class_map_pixels("tf_efficientnet_lite0", 3, 8, 96) == 12 * 12  # stages 2-4: stride 8
    assert bias_table.class_map_pixels("tf_efficientnet_lite0", 3, 8, 96, last_stage=3) == 24 * 24  # stages 1-3


def test_commands_use_the_current_cli(tmp_path):
    args = bias_table.build_parser().parse_args(["--epochs", "3", "--last-stage", "3",
                                                 "--train-extra", "--augment none"])
    run = tmp_path / "p0.9-seed1"
    ks = {"topgap_matched": 20, "topgap_mismatched": 160, "fpn_only": 576}
    cmds = bias_table.commands(args, 0.9, 1, run, ks)
    parser = build_parser()
    synth = parser.parse_args(cmds["synth"][3:])
    assert (synth.bg_agreement, synth.seed, synth.object_area, synth.size) == (0.9, 1, [0.04, 0.10], 96)
    train = parser.parse_args(cmds["train"][3:])
    assert train.k == [20, 160] and train.baseline and train.seed == 1 and train.epochs == 3
    assert train.augment == "none" and train.out == str(run / "family") and train.lam == 1.0
    control = parser.parse_args(cmds["train_control"][3:])
    assert control.k == [576] and control.lam == 0.0 and not control.baseline and control.out == str(run / "control")
    assert train.last_stage == control.last_stage == 3
    for fam in ("family", "control"):  # --shift-splits is the flag the extended topgap evaluate takes
        cmd = cmds[f"evaluate_{fam}"]
        assert cmd[cmd.index("--shift-splits") + 1] == "test_shifted,only_bg" and str(run / fam) in cmd
    assert set(bias_table.commands(args, 0.9, 1, run, None)) == {"synth"}


def _report(path: Path, models: dict) -> None:
    path.mkdir(parents=True)
    path.joinpath("results.json").write_text(json.dumps({"split": "test", "models": models}))


def _model(k, clean, shifted, only_bg, iou):
    return {"k": k, "clean": {"accuracy": clean}, "iou": iou, "mass_in_mask": iou / 2,
            "shifts": {"test_shifted": {"accuracy": shifted}, "only_bg": {"accuracy": only_bg}}}


def test_measure_summarise_and_plot(tmp_path):
    ks = {"topgap_matched": 20, "topgap_mismatched": 160, "fpn_only": 576}
    runs = []
    for seed, shifted in enumerate([0.2, 0.4, 0.6]):
        run = tmp_path / f"s{seed}"
        _report(run / "report-family", {"baseline": _model(None, 0.9, shifted, 0.8, 0.3),
                                        "k20": _model(20, 0.9, shifted + 0.1, 0.5, 0.5),
                                        "k160": _model(160, 0.9, shifted, 0.7, 0.2)})
        _report(run / "report-control", {"k576-nol1": _model(576, 0.9, shifted, 0.9, 0.1)})
        runs.append({"p": 0.9, "seed": seed, "ks": ks, "metrics": bias_table.measure(run, ks)})
    summary = bias_table.summarise(runs)
    assert summary[0.9]["baseline"]["shifted"] == pytest.approx([0.4, 0.2, 3])  # mean, std (ddof 1), seeds
    assert summary[0.9]["topgap_matched"]["shifted"] == pytest.approx([0.5, 0.2, 3])
    assert summary[0.9]["fpn_only"]["only_bg"] == pytest.approx([0.9, 0.0, 3])
    assert summary[0.9]["topgap_mismatched"]["mass_in_mask"] == pytest.approx([0.1, 0.0, 3])
    table = bias_table.markdown(summary)
    assert "| 0.9 | Top-GAP, k matched | 0.900 ± 0.000 | 0.500 ± 0.200 | 0.500 ± 0.000 |" in table
    assert "| 0.9 | baseline | 0.900 ± 0.000 | 0.400 ± 0.200 | 0.800 ± 0.000 | 0.300 ± 0.000 | 0.150 ± 0.000 | 3 |" in table
    path = bias_table.plot(summary, tmp_path / "plot.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_split_accuracy_reads_old_reports_and_says_what_is_missing():
    results = {"split": "test", "shifted": {"split": "test_shifted"}}
    model = {"clean": {"accuracy": 0.9}, "shifted": {"accuracy": 0.3}}
    assert bias_table.split_accuracy(results, model, "test") == 0.9
    assert bias_table.split_accuracy(results, model, "test_shifted") == 0.3
    with pytest.raises(KeyError, match="evaluate with --shift-splits test_shifted,only_bg"):
        bias_table.split_accuracy(results, model, "only_bg")


def test_differences_are_paired_by_seed_with_t_intervals_and_skip_unconverged(tmp_path):
    def metrics(base, matched, control, converged=True):
        row = lambda shifted, only_bg: {"clean": 0.9, "shifted": shifted, "only_bg": only_bg, "iou": 0.5,  # noqa: E731
                                        "mass_in_mask": 0.5, "k": 1, "converged": True}
        out = {"baseline": row(*base), "topgap_matched": row(*matched), "topgap_mismatched": row(*base),
               "fpn_only": row(*control)}
        out["topgap_matched"]["converged"] = converged
        return out
    runs = [{"p": 0.9, "seed": s, "metrics": metrics((b, 0.8), (b + d, 0.5), (b, 0.9))}
            for s, (b, d) in enumerate([(0.2, 0.01), (0.4, 0.02), (0.6, 0.03)])]
    rows = {(r["model"], r["reference"], r["metric"]): r for r in bias_table.differences(runs)}
    shifted = rows[("topgap_matched", "baseline", "shifted")]  # diffs 0.01, 0.02, 0.03: 0.02 ± 4.303 * 0.01 / sqrt 3
    assert shifted["diff"] == pytest.approx(0.02) and shifted["n"] == 3
    assert shifted["low"] == pytest.approx(0.02 - 4.3027 * 0.01 / 3 ** 0.5, abs=1e-4)
    assert shifted["verdict"] == "no clear difference"  # the interval [-0.0048, 0.0448] holds 0
    only_bg = rows[("topgap_matched", "fpn_only", "only_bg")]  # -0.4 in every seed: lower is better
    assert only_bg["diff"] == pytest.approx(-0.4) and only_bg["verdict"] == "better"
    assert rows[("fpn_only", "baseline", "only_bg")]["verdict"] == "worse"  # +0.1 every seed
    runs[1]["metrics"] = metrics((0.4, 0.8), (0.9, 0.5), (0.4, 0.9), converged=False)
    rows = {(r["model"], r["reference"], r["metric"]): r for r in bias_table.differences(runs)}
    assert rows[("topgap_matched", "baseline", "shifted")]["n"] == 2  # seed 1's Top-GAP left out, not averaged in
    seeds, diffs = zip(*bias_table.paired(runs, "topgap_matched", "baseline", "shifted", 0.9))
    assert seeds == (0, 2) and diffs == pytest.approx([0.01, 0.03])
    assert bias_table.paired(runs, "topgap_matched", "baseline", "shifted", 0.5) == []
    png = bias_table.plot_differences(runs, bias_table.differences(runs), tmp_path / "differences.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert rows[("topgap_mismatched", "baseline", "shifted")]["n"] == 3
    assert bias_table.summarise(runs)[0.9]["topgap_matched"]["shifted"][2] == 2
    assert "| 0.9 | Top-GAP, k matched − baseline | shifted |" in bias_table.markdown_differences(
        bias_table.differences(runs))


def test_default_recipe_and_table_only(tmp_path, monkeypatch, capsys):
    args = bias_table.build_parser().parse_args([])
    train = build_parser().parse_args(bias_table.commands(args, 0.9, 0, tmp_path, {
        "topgap_matched": 41, "topgap_mismatched": 288, "fpn_only": 576})["train"][3:])
    assert train.pretrained is True and train.last_stage == 3 and train.num_maps == 3 and train.lam_warmup == 1
    assert train.augment == "none" and train.backbone == "tf_efficientnet_lite0" and train.epochs == 3
    done = tmp_path / "p0.9-seed0"  # evaluated; p0.9-seed1 has only its data: left out, nothing runs
    (done / "data").mkdir(parents=True)
    (done / "data" / "synth.json").write_text(json.dumps(_meta(0.0712 * 96 ** 2)))  # * 576 = 41
    _report(done / "report-family", {"baseline": _model(None, 1.0, 0.96, 0.7, 0.46),
                                     "k41": _model(41, 1.0, 0.98, 0.4, 0.41), "k288": _model(288, 1.0, 0.94, 0.7, 0.6)})
    _report(done / "report-control", {"k576-nol1": _model(576, 1.0, 0.97, 0.8, 0.43)})
    (tmp_path / "p0.9-seed1" / "data").mkdir(parents=True)
    monkeypatch.setattr("sys.argv", ["bias_table.py", "--work", str(tmp_path), "--ps", "0.9", "--seeds", "0", "1",
                                     "--table-only"])
    monkeypatch.setattr(bias_table.subprocess, "run", lambda *a, **k: pytest.fail("--table-only must run nothing"))
    bias_table.main()
    out = capsys.readouterr().out
    assert "not run yet, left out of the table: p = 0.9, seed 1" in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [r["seed"] for r in summary["runs"]] == [0] and summary["runs"][0]["ks"]["topgap_matched"] == 41
    assert (tmp_path / "differences.png").is_file() and (tmp_path / "shifted_vs_p.png").is_file()
    assert "| 0.9 | Top-GAP, k matched | 1.000 ± 0.000 | 0.980 ± 0.000 | 0.400 ± 0.000 |" in (
        tmp_path / "bias_table.md").read_text()
