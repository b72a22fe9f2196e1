import json
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
from topgap.train import Recipe, family_configs, train_family, train_model

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
    log = json.loads((tmp_path / "k4" / "train_log.json").read_text())
    assert [e["epoch"] for e in log] == [1, 2, 3] and all(e["loss"] > 0 for e in log)
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
    while not (out / "resume.json").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    meta = json.loads((out / "resume.json").read_text())
    assert meta["epoch"] < RECIPE.epochs - 1 and not (out / "config.json").exists()  # really stopped mid-run
    train_model(tiny_cfg(), RECIPE, SquaresDataset(), out)
    a, b = weights(reference), weights(out)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert len(json.loads((out / "train_log.json").read_text())) == RECIPE.epochs


def test_family_with_baseline_and_cross_validation(tmp_path):
    configs = family_configs(tiny_cfg(), [2, 4], baseline=True)
    assert list(configs) == ["k2", "k4", "baseline"] and configs["baseline"].kind == "baseline"
    recipe = Recipe(epochs=1, batch_size=8, lr=0.01, workers=0, warmup_epochs=0)
    summary = train_family(configs, recipe, SquaresDataset(12), tmp_path, folds=3)
    cv = json.loads((tmp_path / "cv.json").read_text())
    assert cv["folds"] == 3 and set(cv["models"]) == {"k2", "k4", "baseline"}
    assert len(summary["k2"]["folds"]) == 3
    assert (tmp_path / "fold2" / "baseline" / "model.safetensors").exists()
    assert "±" in (tmp_path / "cv.md").read_text()
    with pytest.raises(ValueError, match="images per class"):
        train_family(configs, recipe, SquaresDataset(4), tmp_path / "x", folds=3)


def test_ablation_family_names():
    configs = family_configs(tiny_cfg(), [16], ablation=True)
    assert len(configs) == 9 and "ablation-fpn+l1+topgap" in configs and configs["ablation-plain"].k is None
    with pytest.raises(ValueError, match="nothing to train"):
        family_configs(tiny_cfg(), [])
