import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from fakes import SquaresDataset

from topgap import ModelConfig, load_model
from topgap.train import (Recipe, _check_global_batch, _check_launch, _loss, _resume_meta, convergence, family_configs,
                          train_family, train_model, training_record)

TESTS = Path(__file__).parent


def tiny_cfg(**kw):
    return ModelConfig("resnet18", ["quadrant0", "quadrant1"], k=4, fpn_channels=8, input_size=(32, 32), **kw)


RECIPE = Recipe(epochs=3, batch_size=8, lr=0.01, workers=0, warmup_epochs=0)


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
    data = SquaresDataset()
    metrics = train_model(tiny_cfg(), RECIPE, data, tmp_path / "k4", val_set=SquaresDataset(8, seed=1))
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
    # a second identical call skips, a different recipe refuses
    assert train_model(tiny_cfg(), RECIPE, data, tmp_path / "k4") == cfg.metrics
    with pytest.raises(ValueError, match="another config or recipe"):
        train_model(tiny_cfg(), Recipe(epochs=4, batch_size=8, workers=0), data, tmp_path / "k4")


def test_training_learns_the_squares(tmp_path):
    data = SquaresDataset(32)
    recipe = Recipe(epochs=8, batch_size=8, lr=0.02, workers=0, warmup_epochs=0)
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
    recipe = Recipe(epochs=1, batch_size=8, lr=0.01, workers=0, warmup_epochs=0)
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


def test_ablation_family_names():
    configs = family_configs(tiny_cfg(), [16], ablation=True)
    assert len(configs) == 9 and "ablation-fpn+l1+topgap" in configs and configs["ablation-plain"].k is None
    with pytest.raises(ValueError, match="nothing to train: give --k values, --baseline, --control"):
        family_configs(tiny_cfg(), [])


def test_lam_warms_up_linearly_per_step():
    # 4 epochs of 2 steps; warm-up over 1.5 epochs = 3 steps: lam * step / 3, then lam
    r = Recipe(epochs=4, lam_warmup_epochs=1.5)
    assert [r.lam_at(2.0, s, 8) for s in range(5)] == pytest.approx([0.0, 2 / 3, 4 / 3, 2.0, 2.0])
    assert [Recipe(epochs=4, lam_warmup_epochs=0).lam_at(2.0, s, 8) for s in (0, 7)] == [2.0, 2.0]
    with pytest.raises(ValueError, match="lam-warmup"):
        Recipe(lam_warmup_epochs=-1)


def test_label_smoothing_is_the_same_for_baseline_and_topgap():
    # logits (2, 0), label 0, smoothing 0.2 over 2 classes: target (0.9, 0.1), L = ln(1 + e^2);
    # CE = -(0.9 (2 - L) + 0.1 (-L)) = L - 1.8
    logits, y = torch.tensor([[2.0, 0.0]]), torch.tensor([0])
    ce = math.log(1 + math.e ** 2) - 1.8
    base_loss, base_ce = _loss(logits, None, y, lam=0.0, label_smoothing=0.2)
    maps = torch.full((1, 2, 3, 3), -0.5)  # mean |X| = 0.5
    ours_loss, ours_ce = _loss(logits, maps, y, lam=0.4, label_smoothing=0.2)
    assert float(base_ce) == pytest.approx(ce) and float(ours_ce) == pytest.approx(ce)
    assert float(base_loss) == pytest.approx(ce) and float(ours_loss) == pytest.approx(ce + 0.4 * 0.5)
    assert float(_loss(logits, maps, y, lam=0.4, label_smoothing=0.0)[1]) == pytest.approx(ce - 0.2)


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
