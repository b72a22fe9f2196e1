"""topgap/variants.py: arms that vary one option on the recipe a finished prior study chose (the poolings study)."""
import json
import shlex

import pytest

from topgap import study
from topgap.cli import build_parser, main
from topgap.train import plan
from topgap.variants import load_variants, variant_cells

from test_study import GRID


def fake_measure(scores):
    """A measurement that writes the record the real one would, with accuracy and l1 from `scores(cell name)`."""
    def fake(grid, cell, fold, runs, records):
        accuracy, l1 = scores(cell["name"])
        rec = {"cell": cell["name"], "fold": fold, "options": study.cell_options(grid, cell), "flag": None,
               "metrics": {"accuracy": accuracy, "l1_paper": l1, "iou_paper": 0.4, "test_accuracy": 0.5}}
        (records / cell["name"]).mkdir(parents=True, exist_ok=True)
        (records / cell["name"] / f"fold{fold}.json").write_text(json.dumps(rec))
        return rec
    return fake


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("variants-data")
    assert main(["synth", str(root / "data"), "--n-train", "24", "--n-val", "4", "--n-test", "8", "--size", "32"]) == 0
    return str(root / "data")


@pytest.fixture
def finished_prior(tmp_path, monkeypatch, tiny_data):
    """A prior study run to the end (fake measurements): it judges its family by k8, SGD lr 0.01, lam 0.1, ce-first."""
    (tmp_path / "prior.json").write_text(json.dumps(GRID | {"data": tiny_data}))
    monkeypatch.setattr(study, "measure", fake_measure(lambda name: (0.9 if "lr0.01" in name else 0.85,
                                                                     0.2 if "lam0.1-ce-first" in name else 0.3)))
    study.run_study(study.load_grid(tmp_path / "prior.json"), tmp_path / "runs", tmp_path / "prior")
    return tmp_path


def write_variants(folder, arms=None, **change):
    spec = {"kind": "variants", "title": "poolings", "recipe_from": str(folder / "prior.json"),
            "arms": arms or {"topgap": {"vary": {"k": [4, 8]}},
                             "lse-nol1": {"options": {"pooling": "lse", "k": ["none"], "lam": 0.0},
                                          "vary": {"pool_r": [1.0, 20.0]}},
                             "gmp": {"options": {"pooling": "gmp", "k": ["none"]}}}} | change
    (folder / "variants.json").write_text(json.dumps(spec))
    return folder / "variants.json"


def test_the_recipe_is_the_cell_the_prior_study_judged_its_family_by(finished_prior, tiny_data):
    grid = load_variants(write_variants(finished_prior))
    assert grid["recipe"]["cell"] == "k8-sgd-lr0.01-lam0.1-ce-first"
    assert {k: grid["train"][k] for k in ("optimizer", "lr", "lam", "l1_start", "lam_warmup", "epochs")} == \
        {"optimizer": "sgd", "lr": 0.01, "lam": 0.1, "l1_start": 0.5, "lam_warmup": 0.5, "epochs": 1}
    assert grid["data"] == tiny_data and grid["folds"] == 2 and grid["tolerance"] == GRID["tolerance"]
    cells = variant_cells(grid)
    assert [c["name"] for c in cells] == ["topgap-k4", "topgap-k8", "lse-nol1-r1", "lse-nol1-r20", "gmp"]
    assert cells[1]["options"] == {"k": [8]} and cells[3]["options"]["pool_r"] == 20.0
    assert [c["lam"] for c in cells] == [0.1, 0.1, 0.0, 0.0, 0.1]
    folders = [list(plan(study._train_args(grid, c, finished_prior / "x"))["configs"]) for c in cells]
    assert folders == [["k4"], ["k8"], ["lse-r1-nol1"], ["lse-r20-nol1"], ["gmp"]]  # one model per cell


@pytest.mark.parametrize("arms, message", [
    ({"lse": {"vary": {"pool_r": [1.0], "k": [4]}}}, "at most one varied option"),
    ({"lse": {"vary": {"pool_r": []}}}, "at least one value"),
    ({"lse": {"options": {}, "grid": {}}}, "arm 'lse' must be"),
])
def test_a_bad_arm_is_refused_with_its_shape(finished_prior, arms, message):
    with pytest.raises(ValueError, match=message):
        load_variants(write_variants(finished_prior, arms))


def test_a_prior_study_that_has_not_chosen_is_refused(tmp_path):
    (tmp_path / "prior.json").write_text(json.dumps(GRID))
    with pytest.raises(ValueError, match=r"prior/study.json, which has not chosen yet; finish that study first"):
        load_variants(write_variants(tmp_path))


def test_each_arm_gets_its_cell_by_the_rule_and_trains_with_commands_the_cli_reads_back(finished_prior, monkeypatch,
                                                                                         capsys):
    path = write_variants(finished_prior)
    calls = []
    scores = {"topgap-k4": (0.95, 0.3), "topgap-k8": (0.948, 0.2), "lse-nol1-r1": (0.9, 0.1),
              "lse-nol1-r20": (0.95, 0.4), "gmp": (0.7, 0.5)}
    fake = fake_measure(lambda name: (calls.append(name), scores[name])[1])
    monkeypatch.setattr(study, "measure", fake)
    report = finished_prior / "poolings"
    assert main(["study", str(path), "--runs", str(finished_prior / "vruns"), "--report", str(report)]) == 0
    out = json.loads(capsys.readouterr().out)
    # k8 is within 0.01 of k4 and sparser; lse r1 is 0.05 below r20: the sparser map does not buy it
    assert out["stages"]["variants"]["chosen"] == {"topgap": "topgap-k8", "lse-nol1": "lse-nol1-r20", "gmp": "gmp"}
    assert len(calls) == 10 and calls[:5] == list(scores)  # fold 0 of every cell first
    done = json.loads((report / "study.json").read_text())
    assert done["recipe"]["cell"] == "k8-sgd-lr0.01-lam0.1-ce-first" and done["runs_measured"] == 10
    assert "**lse-nol1-r20**" in (report / "study.md").read_text()
    assert (report / "variants.png").stat().st_size > 10_000
    assert main(["study", str(path), "--report", str(report), "--train-commands", "fam/seed{seed}", "--seeds",
                 "3"]) == 0
    commands = json.loads(capsys.readouterr().out)["commands"]
    k8, lse, gmp = (build_parser().parse_args(shlex.split(c)[1:]) for c in commands)
    assert k8.k == [8] and k8.lam == 0.1 and k8.l1_start == 0.5 and k8.lr == 0.01 and k8.seed == 3
    assert lse.pooling == "lse" and lse.pool_r == 20.0 and lse.lam == 0.0 and lse.out == "fam/seed3"
    assert gmp.pooling == "gmp" and gmp.k == ["none"] and gmp.val_split == ""
    calls.clear()
    assert main(["study", str(path), "--runs", str(finished_prior / "elsewhere"), "--report", str(report)]) == 0
    assert not calls  # the committed records are enough on a fresh checkout


def test_train_commands_before_the_study_ends_say_what_to_do(finished_prior, capsys):
    path = write_variants(finished_prior)
    assert main(["study", str(path), "--report", str(finished_prior / "none"), "--train-commands", "x"]) == 2
    assert "the study has not chosen every arm yet; run it to the end" in capsys.readouterr().err


def test_a_pooling_cell_trains_and_measures_a_model_of_that_pooling(finished_prior, monkeypatch):
    monkeypatch.undo()  # the real measurement this time
    root = finished_prior
    grid = load_variants(write_variants(finished_prior))
    cell = variant_cells(grid)[3]  # lse r 20 without l1
    rec = study.measure(grid, cell, 0, root / "runs", root / "folds")
    config = json.loads((root / "runs" / "lse-nol1-r20" / "fold0" / "lse-r20-nol1" / "config.json").read_text())
    assert config["pooling"] == "lse" and config["pooling_params"] == {"r": 20.0} and config["lam"] == 0.0
    assert rec["options"]["train"]["pool_r"] == 20.0
    assert {"accuracy", "l1_paper", "test_accuracy"} <= set(rec["metrics"])
