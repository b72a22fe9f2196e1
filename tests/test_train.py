import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from fakes import SquaresDataset

from topgap import ModelConfig, load_model
from topgap.train import (KEEP_RULES, Recipe, _check_global_batch, _check_launch, _resume_meta, check_disjoint,
                          convergence, family_configs, family_ks, select_epoch, train_family, train_model, training_record)

TESTS = Path(__file__).parent


def tiny_cfg(**kw):
    return ModelConfig("resnet18", ["quadrant0", "quadrant1"], k=4, fpn_channels=8, input_size=(32, 32), **kw)


RECIPE = Recipe(epochs=3, batch_size=8, lr=0.01, workers=0, warmup_epochs=0, keep="last")


def weights(folder):
    return load_model(folder)[0].state_dict()


def test_lr_schedule_warmup_then_cosine():
    r = Recipe(epochs=10, lr=1.0, warmup_epochs=1)
    assert r.lr_at(0, 100) == pytest.approx(0.1)
    assert r.lr_at(9, 100) == pytest.approx(1.0)
    assert r.lr_at(10, 100) == pytest.approx(1.0)
    assert r.lr_at(55, 100) == pytest.approx(0.5)
    assert Recipe(epochs=10, lr=1.0, schedule="constant", warmup_epochs=0).lr_at(99, 100) == 1.0


def test_train_writes_a_loadable_model_folder_with_log(tmp_path):
    data, val = SquaresDataset(), SquaresDataset(8, seed=1)
    metrics = train_model(tiny_cfg(), RECIPE, data, tmp_path / "k4", val_set=val)
    names = sorted(p.name for p in (tmp_path / "k4").iterdir())
    assert names == ["config.json", "model.safetensors", "train_log.json"]  # resume files removed at the end
    model, cfg = load_model(tmp_path / "k4")
    assert cfg.recipe["epochs"] == 3 and cfg.metrics["val_accuracy"] == metrics["val_accuracy"]
    record = json.loads((tmp_path / "k4" / "train_log.json").read_text())
    log = record["epochs"]
    assert [e["epoch"] for e in log] == [1, 2, 3] and all(e["loss"] > e["ce_loss"] > 0 for e in log)  # + l1 term
    assert record["num_classes"] == 2 and (record["converged"], record["reason"]) == convergence(record)
    assert record["environment"]["device"].startswith("cpu (") and record["environment"]["processes"] == 1
    assert record["environment"]["torch"] == torch.__version__
    assert cfg.recipe["lam_warmup_epochs"] == 1.0 and [e["lam"] for e in log] == [0.5, 1.0, 1.0]  # 2 steps/epoch
    assert record["selection"] == {"rule": KEEP_RULES["last"], "epoch": 3} and metrics["kept_epoch"] == 3
    assert all(0.5 <= e["val_majority_share"] <= 1 for e in log)
    # a second identical call skips, a different recipe refuses and names the field
    assert train_model(tiny_cfg(), RECIPE, data, tmp_path / "k4", val_set=val) == cfg.metrics
    with pytest.raises(ValueError, match=r"recipe\.epochs: 3 in the folder, 4 asked"):
        train_model(tiny_cfg(), Recipe(epochs=4, batch_size=8, workers=0, keep="last"), data, tmp_path / "k4",
                    val_set=val)


def test_training_learns_the_squares(tmp_path):
    data = SquaresDataset(32)
    recipe = Recipe(epochs=8, batch_size=8, lr=0.02, workers=0, warmup_epochs=0, keep="last")
    metrics = train_model(tiny_cfg(), recipe, data, tmp_path / "k4", val_set=data)
    assert metrics["val_accuracy"] >= 0.9


def test_same_seed_same_weights(tmp_path):
    train_model(tiny_cfg(), RECIPE, SquaresDataset(), tmp_path / "a")
    train_model(tiny_cfg(), RECIPE, SquaresDataset(), tmp_path / "b")
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert all(torch.equal(a[n], b[n]) for n in a)


KILL_SCRIPT = """
import sys; sys.path.insert(0, {tests!r})
from fakes import SquaresDataset
from test_train import tiny_cfg, RECIPE
from topgap.train import train_model
train_model(tiny_cfg(), RECIPE, SquaresDataset(), {out!r})
"""


def test_killed_run_resumes_to_the_same_weights(tmp_path):
    reference = tmp_path / "reference"
    train_model(tiny_cfg(), RECIPE, SquaresDataset(), reference)
    out = tmp_path / "killed"
    env = dict(os.environ, SQUARES_DELAY="0.15")
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT.format(tests=str(TESTS), out=str(out))], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "resume.safetensors").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _resume_meta(out)["epoch"] < RECIPE.epochs - 1 and not (out / "config.json").exists()  # stopped mid-run
    train_model(tiny_cfg(), RECIPE, SquaresDataset(), out)
    a, b = weights(reference), weights(out)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert len(training_record(out)["epochs"]) == RECIPE.epochs


def test_family_with_baseline_and_cross_validation(tmp_path):
    configs = family_configs(tiny_cfg(), [2, 4], baseline=True)
    assert list(configs) == ["k2", "k4", "baseline"] and configs["baseline"].kind == "baseline"
    recipe = Recipe(epochs=1, batch_size=8, lr=0.01, workers=0, warmup_epochs=0)  # best-val on the held-out fold
    summary = train_family(configs, recipe, SquaresDataset(12), tmp_path, folds=3)
    cv = json.loads((tmp_path / "cv.json").read_text())
    assert cv["folds"] == 3 and set(cv["models"]) == {"k2", "k4", "baseline"}
    assert sorted(i for fold in cv["held_out"] for i in fold) == list(range(12))  # a partition, for evaluate
    assert len(summary["k2"]["folds"]) == 3
    assert (tmp_path / "fold2" / "baseline" / "model.safetensors").exists()
    assert "±" in (tmp_path / "cv.md").read_text()
    with pytest.raises(ValueError, match="images per class"):
        train_family(configs, recipe, SquaresDataset(4), tmp_path / "x", folds=3)


def test_control_is_the_same_head_with_gap_and_no_l1():
    c = family_configs(tiny_cfg(), [4], control=True)["fpn-gap"]
    assert (c.kind, c.k, c.lam, c.fpn, c.fpn_channels) == ("topgap", None, 0.0, True, tiny_cfg().fpn_channels)


def test_another_pooling_names_its_models_by_its_parameters():
    lse = family_configs(tiny_cfg(), [], pooling="lse", pooling_params={"r": 5}, control=True)
    assert list(lse) == ["lse-r5", "fpn-gap"] and lse["lse-r5"].pooling_params == {"r": 5.0}
    assert lse["fpn-gap"].pooling == "gap" and lse["fpn-gap"].pooling_params == {}
    assert list(family_configs(tiny_cfg(), [4, 8], pooling="wildcat")) == ["wildcat-k4-m4-a0.7", "wildcat-k8-m8-a0.7"]
    assert list(family_configs(tiny_cfg(), [], pooling="gwrp")) == ["gwrp-d0.996"]
    no_l1 = dataclasses.replace(tiny_cfg(), lam=0.0)
    assert list(family_configs(no_l1, [4], control=True)) == ["k4-nol1", "fpn-gap"]
    assert list(family_configs(no_l1, [], pooling="lse", pooling_params={"r": 5})) == ["lse-r5-nol1"]
    with pytest.raises(ValueError, match=r"--pooling gmp pools every cell and takes no --k \(got \[4\]\)"):
        family_configs(tiny_cfg(), [4], pooling="gmp")


def test_k_none_trains_no_topgap_model():
    from topgap.cli import build_parser
    from topgap.eval.evaluate import none_means_empty

    args = build_parser().parse_args(["train", "--data", "d", "--k", "none", "--control"])
    ks = none_means_empty(args.k, "--k")
    assert ks == [] and list(family_configs(tiny_cfg(), ks, control=args.control)) == ["fpn-gap"]
    assert family_ks(build_parser().parse_args(["train", "--data", "d"]).k) == [64]
    assert family_ks(None, "lse") == [] and family_ks([8, 16], "wildcat") == [8, 16]
    with pytest.raises(ValueError, match="'none' cannot be combined"):
        none_means_empty(build_parser().parse_args(["train", "--data", "d", "--k", "4", "none"]).k, "--k")


def test_ablation_family_names():
    configs = family_configs(tiny_cfg(), [16], ablation=True)  # fpn+l1+topgap is k16 itself: trained once
    assert list(configs) == ["k16"] + [f"ablation-{n}" for n in ("plain", "topgap", "l1", "l1+topgap", "fpn",
                                                                  "fpn+topgap", "fpn+l1")]
    assert configs["ablation-plain"].k is None and configs["ablation-topgap"].k == 1  # 16 / 4^3 on the 8x smaller map
    alone = family_configs(tiny_cfg(), [], ablation=True)  # no --k: the config's k; nothing to share, all 8 arms
    assert len(alone) == 8 and alone["ablation-fpn+l1+topgap"].k == tiny_cfg().k
    with pytest.raises(ValueError, match="nothing to train: give --k values, --baseline, --control"):
        family_configs(tiny_cfg(), [])


def test_lam_warms_up_linearly_per_step():
    # 4 epochs of 2 steps; warm-up over 1.5 epochs = 3 steps: lam * step / 3, then lam
    r = Recipe(epochs=4, lam_warmup_epochs=1.5)
    assert [r.lam_at(2.0, s, 8) for s in range(5)] == pytest.approx([0.0, 2 / 3, 4 / 3, 2.0, 2.0])
    assert [Recipe(epochs=4, lam_warmup_epochs=0).lam_at(2.0, s, 8) for s in (0, 7)] == [2.0, 2.0]
    with pytest.raises(ValueError, match="lam-warmup"):
        Recipe(lam_warmup_epochs=-1)


def test_a_cross_entropy_only_start_delays_the_ramp():
    # 4 epochs of 2 steps; CE only for 1 epoch (2 steps), then lam * (step - 2) / 2 over 1 epoch, then lam
    r = Recipe(epochs=4, l1_start_epochs=1, lam_warmup_epochs=1)
    assert [r.lam_at(2.0, s, 8) for s in range(6)] == pytest.approx([0.0, 0.0, 0.0, 1.0, 2.0, 2.0])
    assert [Recipe(epochs=4, l1_start_epochs=2, lam_warmup_epochs=0).lam_at(2.0, s, 8) for s in (3, 4)] == [0.0, 2.0]
    with pytest.raises(ValueError, match="l1-start"):
        Recipe(l1_start_epochs=-0.5)


def test_the_ce_first_start_is_logged_and_the_kept_epoch_is_at_full_lam(tmp_path):
    recipe = Recipe(epochs=3, batch_size=4, lr=0.01, workers=0, warmup_epochs=0, l1_start_epochs=1,
                    lam_warmup_epochs=1)
    train_model(tiny_cfg(), recipe, SquaresDataset(8), tmp_path / "k4", val_set=SquaresDataset(4, seed=1))
    record = json.loads((tmp_path / "k4" / "train_log.json").read_text())
    assert [e["lam"] for e in record["epochs"]] == pytest.approx([0.0, 0.5, 1.0])  # 2 steps/epoch, lam at last step
    assert record["selection"]["epoch"] == 3 and record["selection"]["eligible_from"] == 3
    assert json.loads((tmp_path / "k4" / "config.json").read_text())["recipe"]["l1_start_epochs"] == 1


def record(ce, accuracy, classes=4):
    return {"num_classes": classes, "epochs": [{"loss": 9.0, "ce_loss": 0.1, "train_accuracy": 1.0},
                                               {"loss": 9.0, "ce_loss": ce, "train_accuracy": accuracy}]}


def test_convergence_flags_chance_level_loss_or_accuracy():
    # 4 classes: ln 4 = 1.386, 0.9 ln 4 = 1.248; chance 0.25, 1.5x = 0.375; only the last epoch counts
    assert convergence(record(0.5, 0.8))[0] is True
    ok, reason = convergence(record(1.30, 0.8))
    assert not ok and "ln(4) = 1.386" in reason
    assert convergence(record(2.5, 0.8))[0] is False  # worse than chance
    ok, reason = convergence(record(0.5, 0.37))
    assert not ok and "1.5x of chance (1/4 = 0.250)" in reason
    assert convergence(record(1.24, 0.38))[0] is True
    # an older train_log.json is a bare list; the class count comes from config.json
    assert convergence({"num_classes": 2, "epochs": [{"loss": 0.7, "train_accuracy": 0.9}]})[0] is False


def test_older_train_log_lists_are_read_as_records(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"class_names": ["a", "b", "c"]}))
    (tmp_path / "train_log.json").write_text(json.dumps([{"epoch": 1, "loss": 0.2, "train_accuracy": 0.95}]))
    assert training_record(tmp_path) == {"num_classes": 3, "epochs": [{"epoch": 1, "loss": 0.2, "train_accuracy": 0.95}],
                                         "converged": True, "reason": convergence(record(0.2, 0.95, 3))[1]}


def test_a_launch_too_large_for_the_data_or_not_distributed_is_refused():
    _check_global_batch(16, 8, 2)
    _check_global_batch(3, 8, 1)  # one process: a short batch is fine
    with pytest.raises(ValueError, match="2 processes x --batch-size 8 need at least 16 training images per step, "
                                         "the training set has 15; lower --batch-size or use fewer processes"):
        _check_global_batch(15, 8, 2)
    _check_launch(1, 1)
    with pytest.raises(ValueError, match="launcher started 2 processes but accelerate sees 1.*ACCELERATE_USE_CPU=1"):
        _check_launch(2, 1)


# ---- exact resume: a folder of other options is refused, naming the field

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One finished tiny model (1 epoch) and the arguments that made it."""
    out = tmp_path_factory.mktemp("resume") / "k4"
    recipe = Recipe(epochs=1, batch_size=8, lr=0.01, workers=0, warmup_epochs=0, keep="last")
    train_model(tiny_cfg(), recipe, SquaresDataset(8), out)
    return out, recipe


@pytest.mark.parametrize("change, field", [
    (dict(lam=7.0), r"config\.lam: 1\.0 in the folder, 7\.0 asked"),
    (dict(fpn_channels=16), r"config\.fpn_channels: 8 in the folder, 16 asked"),
    (dict(num_maps=3), r"config\.num_maps: 4 in the folder, 3 asked"),
    (dict(backbone="resnet10t"), r'config\.backbone: "resnet18" in the folder, "resnet10t" asked'),
    (dict(k=8), r"config\.k: 4 in the folder, 8 asked"),
    (dict(dropout=0.1), r"config\.dropout: 0\.0 in the folder, 0\.1 asked"),
    (dict(l1_norm="sum"), r'config\.l1_norm: "mean" in the folder, "sum" asked'),
    (dict(pooling="wildcat"), r'config\.pooling: "topgap" in the folder, "wildcat" asked'),
])
def test_a_finished_folder_of_other_model_options_is_refused(trained, change, field):
    out, recipe = trained
    cfg = ModelConfig(**{**tiny_cfg().to_dict(), **change})
    with pytest.raises(ValueError, match=field + r".*choose another --out or delete the folder"):
        train_model(cfg, recipe, SquaresDataset(8), out)


def test_a_finished_folder_of_other_data_is_refused(trained):
    out, recipe = trained
    with pytest.raises(ValueError, match=r"data\.train\.n: 8 in the folder, 12 asked"):
        train_model(tiny_cfg(), recipe, SquaresDataset(12), out)
    with pytest.raises(ValueError, match=r'data\.class_names: \["quadrant0", "quadrant1"\] in the folder, '
                                         r'\["quadrant0", "quadrant1", "quadrant2"\] asked'):
        train_model(ModelConfig(**{**tiny_cfg().to_dict(), "class_names": ["quadrant0", "quadrant1", "quadrant2"]}),
                    recipe, SquaresDataset(8, num_classes=3), out)
    with pytest.raises(ValueError, match=r"data\.val: null in the folder"):
        train_model(tiny_cfg(), recipe, SquaresDataset(8), out, val_set=SquaresDataset(4, seed=1))
    with pytest.raises(ValueError, match=r'dtype: null in the folder, "torch\.float16" asked'):
        train_model(tiny_cfg(), recipe, SquaresDataset(8), out, dtype=torch.float16)
    assert train_model(tiny_cfg(), recipe, SquaresDataset(8), out)["epochs"] == 1  # the same command still skips


def test_a_folder_written_before_l1_norm_means_mean(trained, tmp_path):
    """Configs without the field keep today's meaning: the same command still finds the folder done."""
    out, recipe = trained
    old = tmp_path / "k4"
    shutil.copytree(out, old)
    config = json.loads((old / "config.json").read_text())
    del config["l1_norm"], config["pooling"], config["pooling_params"]
    (old / "config.json").write_text(json.dumps(config))
    assert ModelConfig.from_dict(config).l1_norm == "mean"
    assert train_model(tiny_cfg(), recipe, SquaresDataset(8), old)["epochs"] == 1  # done, not retrained
    with pytest.raises(ValueError, match=r'config\.l1_norm: "mean" in the folder, "sum" asked'):
        train_model(ModelConfig(**{**tiny_cfg().to_dict(), "l1_norm": "sum"}), recipe, SquaresDataset(8), old)


def test_a_folder_written_before_l1_start_means_no_ce_only_start(trained, tmp_path):
    out, recipe = trained
    old = tmp_path / "k4"
    shutil.copytree(out, old)
    config = json.loads((old / "config.json").read_text())
    del config["recipe"]["l1_start_epochs"]
    (old / "config.json").write_text(json.dumps(config))
    assert train_model(tiny_cfg(), recipe, SquaresDataset(8), old)["epochs"] == 1  # done, not retrained
    later = dataclasses.replace(recipe, l1_start_epochs=0.5)
    with pytest.raises(ValueError, match=r"recipe\.l1_start_epochs: 0\.0 in the folder, 0\.5 asked"):
        train_model(tiny_cfg(), later, SquaresDataset(8), old)


def test_data_fingerprint_sees_a_relabelled_image(trained):
    out, recipe = trained
    data = SquaresDataset(8)
    data.labels = [1 - c for c in data.labels]
    with pytest.raises(ValueError, match=r"data\.train\.sha256"):
        train_model(tiny_cfg(), recipe, data, out)


def test_an_interrupted_run_of_other_options_is_refused(trained, tmp_path):
    out, recipe = trained
    killed = tmp_path / "k4"
    killed.mkdir()
    (killed / "resume.safetensors").write_bytes((out / "model.safetensors").read_bytes())  # a header without meta
    from safetensors.torch import save_file
    meta = {"identity": {"config": {"lam": 1.0}}, "epoch": 0, "log": []}
    save_file({"x": torch.zeros(1)}, killed / "resume.safetensors", metadata={"meta": json.dumps(meta)})
    with pytest.raises(ValueError, match=r"interrupted run with other options \(config\.backbone: "
                                         r'"<not recorded>" in the folder, "resnet18" asked'):
        train_model(tiny_cfg(), recipe, SquaresDataset(8), killed)


# ---- the kept epoch is chosen on validation data

def _log(*vals, lams=None):
    lams = lams or [1.0] * len(vals)
    return [{"epoch": i + 1, "val_accuracy": v, "lam": lam} for i, (v, lam) in enumerate(zip(vals, lams))]


def test_select_epoch_rule():
    assert select_epoch(_log(0.5, 0.83, 0.33), 1.0, "best-val")["epoch"] == 2  # a collapse in the last epoch
    assert select_epoch(_log(0.5, 0.8, 0.8), 1.0, "best-val")["epoch"] == 3  # ties: the later epoch
    # epochs still in the l1 warm-up are not eligible
    assert select_epoch(_log(0.9, 0.6, 0.7, lams=[0.5, 1.0, 1.0]), 1.0, "best-val")["epoch"] == 3
    assert select_epoch(_log(0.9, 0.6, lams=[0.2, 0.6]), 1.0, "best-val") == {
        "rule": KEEP_RULES["best-val"], "epoch": 2, "val_accuracy": 0.6, "eligible_from": 2}  # none at full lam
    assert select_epoch(_log(0.5, 0.83, 0.33), 1.0, "last") == {"rule": "the last epoch", "epoch": 3}


class _Inverted(SquaresDataset):
    """Validation labels the other way round: the better the model learns the squares, the lower its val accuracy."""

    def __getitem__(self, i):
        item = super().__getitem__(i)
        return item | {"label": 1 - item["label"]}


def test_the_folder_keeps_the_best_validation_epochs_weights(tmp_path):
    recipe = Recipe(epochs=3, batch_size=8, lr=0.05, workers=0, warmup_epochs=0, schedule="constant",
                    lam_warmup_epochs=0, keep="best-val")
    val = _Inverted(16, seed=1)
    metrics = train_model(tiny_cfg(), recipe, SquaresDataset(16), tmp_path / "best", val_set=val)
    record = training_record(tmp_path / "best")
    kept = record["selection"]["epoch"]
    accuracies = [e["val_accuracy"] for e in record["epochs"]]
    assert kept == max(range(1, 4), key=lambda e: (accuracies[e - 1], e)) and metrics["kept_epoch"] == kept
    assert metrics["val_accuracy"] == accuracies[kept - 1]
    assert not (tmp_path / "best" / "best.safetensors").exists()
    # a constant schedule: the kept epoch's weights are those of a run that stops there
    short = Recipe(**{**recipe.__dict__, "epochs": kept, "keep": "last"})
    train_model(tiny_cfg(), short, SquaresDataset(16), tmp_path / "short", val_set=val)
    a, b = weights(tmp_path / "best"), weights(tmp_path / "short")
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_best_val_needs_validation_data(tmp_path):
    with pytest.raises(ValueError, match="give a validation split \\(--val-split\\) or keep the last epoch"):
        train_model(tiny_cfg(), Recipe(epochs=1, workers=0), SquaresDataset(8), tmp_path / "x")
    with pytest.raises(ValueError, match="keep must be one of best-val, last"):
        Recipe(keep="first")


def test_convergence_flags_a_model_that_predicts_one_class():
    rec = record(0.5, 0.8) | {"selection": {"epoch": None}}
    rec["epochs"][-1]["val_majority_share"] = 0.95
    ok, reason = convergence(rec)
    assert not ok and "predicts one class for 95.0% of the validation images (more than 90%)" in reason
    rec["epochs"][-1]["val_majority_share"] = 0.9
    assert convergence(rec)[0] is True
    # the kept epoch is judged, not the last one: epoch 1 learned, epoch 2 collapsed
    rec = {"num_classes": 4, "selection": {"epoch": 1},
           "epochs": [{"epoch": 1, "loss": 0.5, "ce_loss": 0.4, "train_accuracy": 0.9, "val_majority_share": 0.3},
                      {"epoch": 2, "loss": 9.0, "ce_loss": 1.38, "train_accuracy": 0.25, "val_majority_share": 1.0}]}
    ok, reason = convergence(rec)
    assert ok and reason.startswith("kept epoch 1's train CE 0.400")


class _WithIds(SquaresDataset):
    def __init__(self, ids, **kw):
        super().__init__(len(ids), **kw)
        self.ids = ids


def test_training_and_validation_sets_must_not_share_images(tmp_path):
    check_disjoint(_WithIds(["a.png", "b.png"]), _WithIds(["c.png", "d.png"]))
    check_disjoint(SquaresDataset(4), SquaresDataset(4))  # no ids: positions say nothing
    with pytest.raises(ValueError, match=r"share 1 images \(e\.g\. b\.png\).*--train-split train --val-split val"):
        train_model(tiny_cfg(), Recipe(epochs=1, workers=0), _WithIds(["a.png", "b.png"]), tmp_path / "x",
                    val_set=_WithIds(["b.png", "c.png"]))
    assert not (tmp_path / "x").exists()  # refused before anything is written
