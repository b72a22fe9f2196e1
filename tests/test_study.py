"""topgap study: the rule on hand-made summaries, the stages' cells, the fold-0-first loop, and a tiny real study."""
import json
import shlex

import pytest

from topgap import study
from topgap.cli import build_parser, main
from topgap.eval.evaluate import adopted_selection
from topgap.study import choose, load_grid, rank, run_study, stage_cells, summarise


def summary(name, accuracy, l1, iou=0.5, flag=None, arm="k8", lam=1.0, optimizer="sgd", lr=0.1, test=0.5):
    return {"name": name, "arm": arm, "optimizer": optimizer, "lr": lr, "lam": lam, "schedule": "ramp",
            "flag": flag, "mean": {"accuracy": accuracy, "l1_paper": l1, "iou_paper": iou, "test_accuracy": test},
            "std": {}, "folds": [0, 1, 2], "measured": [0, 1, 2]}


def test_the_rule_takes_the_sparsest_map_within_one_point_of_the_best_accuracy():
    cells = [summary("best", 0.900, 0.40), summary("sparse", 0.891, 0.20), summary("sparser", 0.889, 0.10),
             summary("collapsed", 0.95, 0.01, flag="fold 0: collapsed"), summary("test", 0.80, 0.05, test=0.99)]
    pick = choose(cells, 0.01)
    assert pick["chosen"]["name"] == "sparse" and pick["within"] == ["best", "sparse"] and pick["best_accuracy"] == 0.9
    # test accuracy never chooses; a flagged cell neither sets the best accuracy nor is chosen
    assert [s["name"] for s in rank(cells, 0.01)] == ["sparse", "best", "sparser", "test"]


def test_the_rule_breaks_ties_on_iou_then_grid_order_and_may_choose_nothing():
    assert choose([summary("a", 0.9, 0.2, iou=0.4), summary("b", 0.9, 0.2, iou=0.6)], 0.01)["chosen"]["name"] == "b"
    assert choose([summary("a", 0.9, 0.2), summary("b", 0.9, 0.2)], 0.01)["chosen"]["name"] == "a"
    assert choose([summary("a", 0.9, 0.2, flag="folds [2] not run")], 0.01)["chosen"] is None


def record(fold, accuracy, l1, flag=None):
    return {"fold": fold, "flag": flag, "metrics": {"accuracy": accuracy, "l1_paper": l1, "test_accuracy": 1.0}}


def test_summarise_averages_the_folds_and_names_what_flags_a_cell():
    cell = {"name": "c", "arm": "k8", "optimizer": "sgd", "lr": 0.1, "lam": 1.0, "schedule": "ramp"}
    s = summarise(cell, [0, 1, 2], {0: record(0, 0.8, 0.3), 1: record(1, 0.9, 0.1), 2: record(2, 1.0, 0.2)})
    assert s["flag"] is None and s["mean"]["accuracy"] == pytest.approx(0.9) and s["mean"]["l1_paper"] == pytest.approx(0.2)
    assert s["std"]["accuracy"] == pytest.approx((2 / 3 * 0.01) ** 0.5)  # population std over the 3 folds
    assert summarise(cell, [0, 1, 2], {0: record(0, 0.8, 0.3)})["flag"] == "folds [1, 2] not run"
    pilot = summarise(cell, [0], {0: record(0, 0.8, 0.3), 1: record(1, 0.9, 0.1), 2: record(2, 1.0, 0.2)})
    assert pilot["measured"] == [0] and pilot["mean"]["accuracy"] == pytest.approx(0.8)  # later stages' folds: not its
    bad = summarise(cell, [0, 1, 2], {0: record(0, 0.3, 0.3, flag="collapsed (one class)")})
    assert bad["flag"] == "fold 0: collapsed (one class)" and bad["collapsed"]


GRID = {"title": "Tiny study", "data": "DATA", "test_split": "test", "folds": 2, "tolerance": 0.01,
        "train": {"backbone": "regnetx_002", "image_size": "32", "epochs": 1, "batch_size": 8, "workers": 0,
                  "fpn_channels": 8, "augment": "none", "keep": "last", "val_split": "", "warmup_epochs": 0},
        "evaluate": {"attacks": ["fgsm"], "eps": "8/255", "attack_images": 4, "eps_curve": ["none"],
                     "faithfulness_images": 0, "sanity_images": 0, "bootstrap": 0},
        "pilot": {"arm": "k8", "lam": 1.0, "schedule": "ramp", "folds": [0], "lr": {"sgd": [0.05, 0.01]}},
        "prior": {"arm": "k8", "lam": [0.1, 10.0], "schedules": {"ramp": {"l1_start": 0.0, "lam_warmup": 1.0},
                                                                "ce-first": {"l1_start": 0.5, "lam_warmup": 0.5}}},
        "tuned": {"arms": {"baseline": {"k": ["none"], "baseline": True}, "k8": {"k": [8]}}}}


def write_grid(path, **change):
    path.write_text(json.dumps({**GRID, **change}))
    return path


def test_the_stages_cells_follow_the_earlier_choices(tmp_path):
    grid = load_grid(write_grid(tmp_path / "g.json"))
    assert [c["name"] for c in stage_cells(grid, "pilot", {})] == ["k8-sgd-lr0.05-lam1-ramp", "k8-sgd-lr0.01-lam1-ramp"]
    choices = {"pilot": {"lr": {"sgd": [0.01, 0.05]}}}
    prior = stage_cells(grid, "prior", choices)
    assert [c["name"] for c in prior] == ["k8-sgd-lr0.01-lam0.1-ramp", "k8-sgd-lr0.01-lam10-ramp",
                                          "k8-sgd-lr0.01-lam0.1-ce-first", "k8-sgd-lr0.01-lam10-ce-first"]
    assert prior[2]["options"] == {"k": [8], "optimizer": "sgd", "lr": 0.01, "lam": 0.1, "l1_start": 0.5,
                                   "lam_warmup": 0.5}
    choices["prior"] = {"chosen": {"lam": 10.0, "schedule": "ce-first"}}
    tuned = [c["name"] for c in stage_cells(grid, "tuned", choices)]
    assert tuned == ["baseline-sgd-lr0.01", "baseline-sgd-lr0.05", "k8-sgd-lr0.01-lam10-ce-first",
                     "k8-sgd-lr0.05-lam10-ce-first"]  # the third is a prior cell: its runs are reused


@pytest.mark.parametrize("change, message", [
    (dict(folds="3"), "'folds' must be a int"),
    (dict(pilot={"arm": "k8", "lam": 1.0, "schedule": "ramp", "folds": [0]}), r"'pilot' lacks \['lr'\]"),
    (dict(pilot={**GRID["pilot"], "schedule": "slow"}), "pilot.schedule 'slow' is not one of prior.schedules"),
    (dict(pilot={**GRID["pilot"], "lr": {"adam": [0.1]}}), "pilot.lr must map sgd and/or adamw"),
])
def test_a_bad_grid_is_refused_with_what_to_fix(tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        load_grid(write_grid(tmp_path / "g.json", **change))


def test_fold_zero_runs_first_and_a_cell_flagged_there_goes_no_further(tmp_path, monkeypatch):
    """The real loop with a fake measurement: lam 10 collapses on fold 0, so its fold 1 never runs."""
    grid, calls = load_grid(write_grid(tmp_path / "g.json")), []

    def fake(grid, cell, fold, runs, records):
        calls.append((cell["name"], fold))
        bad = "lam10" in cell["name"] and fold == 0
        accuracy = 0.9 if "lr0.01" in cell["name"] or cell["arm"] == "baseline" else 0.85
        rec = {"cell": cell["name"], "fold": fold, "options": study.cell_options(grid, cell),
               "flag": "collapsed (one class)" if bad else None,
               "metrics": {"accuracy": accuracy, "l1_paper": 0.2 if "ce-first" in cell["name"] else 0.3,
                           "test_accuracy": 0.5}}
        (records / cell["name"]).mkdir(parents=True, exist_ok=True)
        (records / cell["name"] / f"fold{fold}.json").write_text(json.dumps(rec))
        return rec

    monkeypatch.setattr(study, "measure", fake)
    out = run_study(grid, tmp_path / "runs", tmp_path / "report")
    prior = [c for c in calls if "lam1-" not in c[0] and not c[0].startswith("baseline")][:8]
    assert [f for _, f in prior[:4]] == [0, 0, 0, 0] and ("k8-sgd-lr0.01-lam10-ramp", 1) not in calls
    assert out["stages"]["pilot"]["choice"]["lr"] == {"sgd": [0.01, 0.05]}
    assert out["stages"]["prior"]["choice"]["chosen"]["name"] == "k8-sgd-lr0.01-lam0.1-ce-first"
    assert out["stages"]["tuned"]["choice"]["family"]["chosen"]["name"] == "k8-sgd-lr0.01-lam0.1-ce-first"
    assert calls.count(("k8-sgd-lr0.01-lam0.1-ce-first", 0)) == 1  # measured once, reused by the tuned stage
    assert (tmp_path / "report" / "prior.png").stat().st_size > 10_000
    assert "**k8-sgd-lr0.01-lam0.1-ce-first**" in (tmp_path / "report" / "study.md").read_text()
    calls.clear()  # a fresh checkout: the checkpoints are gone, the committed records are enough
    again = run_study(grid, tmp_path / "elsewhere", tmp_path / "report")
    assert again["runs_trained"] == 0 and not calls and again["runs_measured"] == out["runs_measured"] > 0
    assert out["models"] == {"baseline": "baseline-sgd-lr0.01", "k8": "k8-sgd-lr0.01-lam0.1-ce-first"}
    assert out["selection"]["split"] == "2 folds of train" and out["selection"]["by"]["prior study"]["model"] == "k8"
    # the shipped family is judged by the study's choice
    chosen = adopted_selection(tmp_path / "report" / "study.json", ["k8", "baseline"], "test")
    assert chosen["by"]["prior study"]["model"] == "k8" and chosen["from"].endswith("study.json")


def test_the_chosen_family_trains_with_commands_the_cli_reads_back(tmp_path, monkeypatch, capsys):
    write_grid(tmp_path / "g.json")

    def fake(grid, cell, fold, runs, records):
        (records / cell["name"]).mkdir(parents=True, exist_ok=True)
        l1 = 0.1 if "lam10-ramp" in cell["name"] else 0.2
        (records / cell["name"] / f"fold{fold}.json").write_text(json.dumps(
            {"fold": fold, "options": study.cell_options(grid, cell), "flag": None,
             "metrics": {"accuracy": 0.9, "l1_paper": l1}}))

    monkeypatch.setattr(study, "measure", fake)
    assert main(["study", str(tmp_path / "g.json"), "--runs", str(tmp_path / "runs"), "--report",
                 str(tmp_path / "r")]) == 0
    capsys.readouterr()
    assert main(["study", str(tmp_path / "g.json"), "--report", str(tmp_path / "r"), "--train-commands",
                 "fam/seed{seed}", "--seeds", "1", "2"]) == 0
    commands = json.loads(capsys.readouterr().out)["commands"]
    assert len(commands) == 4 and all(c.startswith("topgap train ") for c in commands)
    base, k8 = (build_parser().parse_args(shlex.split(c)[1:]) for c in commands[2:])
    assert base.baseline and base.k == ["none"] and base.seed == 2 and base.out == "fam/seed2" and base.lr == 0.05
    assert k8.k == [8] and k8.lam == 10.0 and k8.l1_start == 0.0 and k8.lr == 0.05 and k8.val_split == ""
    assert k8.epochs == 1 and k8.fpn_channels == 8 and k8.backbone == "regnetx_002" and k8.keep == "last"


def test_a_measurement_of_other_options_is_refused(tmp_path, monkeypatch):
    grid = load_grid(write_grid(tmp_path / "g.json"))
    cell = stage_cells(grid, "pilot", {})[0]
    folder = tmp_path / "report" / "folds" / cell["name"]
    folder.mkdir(parents=True)
    options = study.cell_options(grid, cell)
    options["train"]["epochs"] = 2
    (folder / "fold0.json").write_text(json.dumps({"fold": 0, "options": options}))
    with pytest.raises(ValueError, match=r"options\.train\.epochs: 2 in the folder, 1 asked.*another --report"):
        study.measure(grid, cell, 0, tmp_path / "runs", tmp_path / "report" / "folds")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    assert main(["synth", str(root / "data"), "--n-train", "24", "--n-val", "4", "--n-test", "8", "--size", "32"]) == 0
    return root, load_grid(write_grid(root / "tiny.json", data=str(root / "data")))


def test_measure_trains_the_fold_measures_it_once_and_records_its_options(tiny):
    root, grid = tiny
    cell = stage_cells(grid, "prior", {"pilot": {"lr": {"sgd": [0.05]}}})[2]  # lam 0.1, ce-first
    rec = study.measure(grid, cell, 1, root / "runs", root / "folds")
    folder = root / "runs" / "k8-sgd-lr0.05-lam0.1-ce-first" / "fold1"
    record = root / "folds" / cell["name"] / "fold1.json"
    assert rec == json.loads(record.read_text()) and rec["options"]["train"]["l1_start"] == 0.5
    assert rec["n_held_out"] == 12 and rec["n_test"] == 8 and rec["options"]["train"]["data"] == grid["data"]
    assert {"accuracy", "l1_paper", "l1_relu", "iou_paper", "iou_relu", "pxap_paper", "fgsm_correct",
            "test_accuracy"} <= set(rec["metrics"])
    log = json.loads((folder / "k8" / "train_log.json").read_text())
    assert log["data"]["train"]["n"] == 12 and log["data"]["val"]["n"] == 12  # the fold's two halves
    config = json.loads((folder / "k8" / "config.json").read_text())
    assert config["lam"] == 0.1 and config["recipe"]["l1_start_epochs"] == 0.5 and config["recipe"]["lr"] == 0.05
    stamp = record.stat().st_mtime_ns
    assert study.measure(grid, cell, 1, root / "runs", root / "folds") == rec and record.stat().st_mtime_ns == stamp


def test_a_pilot_without_a_usable_model_stops_with_what_to_do(tiny, capsys):
    root, grid = tiny
    path = write_grid(root / "stuck.json", data=grid["data"], pilot={**GRID["pilot"], "lr": {"sgd": [1e-7]}})
    assert main(["study", str(path), "--runs", str(root / "stuck"), "--report", str(root / "report")]) == 2
    assert "pilot: no learning rate of ['sgd'] trained a usable model; widen pilot.lr" in capsys.readouterr().err
    rec = json.loads((root / "report" / "folds" / "k8-sgd-lr1e-07-lam1-ramp" / "fold0.json").read_text())
    assert rec["flag"].startswith("did not converge") and not (root / "stuck" / "k8-sgd-lr1e-07-lam1-ramp" / "fold1").exists()
    assert json.loads((root / "report" / "study.json").read_text())["runs_trained"] == 1


def test_a_diverging_setting_is_a_flagged_result_not_a_crash(tiny, monkeypatch):
    import topgap.train

    root, grid = tiny

    def diverge(*args, **kwargs):
        raise topgap.train.DivergedError("training diverged: the loss is nan at epoch 1, step 2; lower --lr")

    monkeypatch.setattr(topgap.train, "train_model", diverge)
    cell = stage_cells(grid, "pilot", {})[0]
    rec = study.measure(grid, cell, 0, root / "diverged", root / "diverged-folds")
    assert rec["flag"].startswith("diverged (training diverged: the loss is nan") and rec["metrics"] == {}
    assert summarise(cell, [0], {0: rec})["flag"].startswith("fold 0: diverged")
