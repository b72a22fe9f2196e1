"""Two CPU processes (torchrun, gloo) on a tiny dataset: the distributed training path of topgap.train.

The job trains, in order: a 3-epoch model (the launch is killed with SIGKILL, launcher and workers,
during its second epoch, and the same command is run again), the same model uninterrupted (indices
seen per rank), a one-step model (against a single-process step on the same global batch) and 2-fold
cross-validation of a k sweep. Every file replace is logged per rank.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from fakes import SquaresDataset
from safetensors.torch import load_file
from timm.models import register_model
from timm.models.resnet import BasicBlock, _create_resnet
from torch import nn

from topgap import ModelConfig, load_model
from topgap.checkpoint import build_model
from topgap.train import Recipe, _resume_meta, train_model

TESTS = Path(__file__).parent
RUN = Recipe(epochs=3, batch_size=4, lr=0.01, workers=0, warmup_epochs=0, keep="last")  # 16 images: 2 global batches of 2 x 4
STEP = Recipe(epochs=1, batch_size=4, lr=0.05, workers=0, warmup_epochs=0, lam_warmup_epochs=0, grad_clip=0,
              schedule="constant", weight_decay=0.0, keep="last")


@register_model
def resnet_nobn_test(pretrained=False, **kwargs):
    """A tiny ResNet without batch norm: per-process batches then give exactly the single-process gradients."""
    args = dict(block=BasicBlock, layers=(1, 1, 1, 1), channels=(8, 16, 16, 16), stem_width=8, norm_layer=nn.Identity)
    return _create_resnet("resnet_nobn_test", pretrained, **dict(args, **kwargs))


def nobn_cfg(**kw):
    return ModelConfig("resnet_nobn_test", ["quadrant0", "quadrant1"], k=4, fpn_channels=8, input_size=(32, 32), **kw)


SCRIPT = """
import os, sys
sys.path.insert(0, {tests!r})
from pathlib import Path
import torch
from safetensors.torch import save_file
import topgap.train as T
from fakes import SquaresDataset
from test_distributed import RUN, STEP, nobn_cfg
root, rank = Path({root!r}), int(os.environ["RANK"])
log = lambda name, text: open(root / f"{{name}}-{{rank}}.txt", "a").write(text + "\\n")
replace = os.replace
def logged_replace(src, dst):  # every atomic write ends in os.replace: who wrote what, how often
    log("replaced", str(Path(dst).relative_to(root)))
    return replace(src, dst)
os.replace = logged_replace
built = []
build = T.build_model
T.build_model = lambda *a, **k: built.append(build(*a, **k)) or built[-1]  # to save this rank's final weights

class Logged(SquaresDataset):
    def __init__(self, n, name):
        super().__init__(n)
        self.name = name
    def __getitem__(self, i):
        log(self.name, str(i))
        return super().__getitem__(i)

acc = T.make_accelerator()
log("world", f"{{acc.num_processes}} {{acc.distributed_type}}")
T.train_model(nobn_cfg(), RUN, SquaresDataset(16), root / "killed", accelerator=acc)  # the launch the test kills
os.environ.pop("SQUARES_DELAY", None)
T.train_model(nobn_cfg(), RUN, Logged(16, "seen"), root / "run", accelerator=acc)
save_file(built[-1].state_dict(), root / f"weights-{{rank}}.safetensors")
T.train_model(nobn_cfg(), STEP, SquaresDataset(8), root / "step", accelerator=acc)
T.train_family(T.family_configs(nobn_cfg(), [2, 4]), STEP, Logged(16, "cv"), root / "cv", folds=2,
               fold_eval_set=SquaresDataset(16), accelerator=acc)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(root: Path, **env) -> subprocess.Popen:
    script = root / "job.py"
    script.write_text(SCRIPT.format(tests=str(TESTS), root=str(root)))
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                             "--master-port", str(free_port()), str(script)],
                            env=dict(os.environ, OMP_NUM_THREADS="1", **env),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def lines(path: Path) -> list[str]:
    return path.read_text().split()


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_model(folder)[0].state_dict()


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """The job killed with SIGKILL (launcher and workers) during its first model's second epoch, then run again."""
    root = tmp_path_factory.mktemp("ddp")
    proc = launch(root, SQUARES_DELAY="0.1")
    deadline = time.time() + 180
    while not (root / "killed" / "resume.safetensors").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    for p in [psutil.Process(proc.pid)] + psutil.Process(proc.pid).children(recursive=True):
        p.send_signal(signal.SIGKILL)  # torchrun starts each worker in a session of its own: kill them one by one
    proc.communicate()
    stopped = _resume_meta(root / "killed")["epoch"] < RUN.epochs - 1 and not (root / "killed" / "config.json").exists()
    proc = launch(root)  # the same command
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    return root, stopped


def test_two_processes_really_run_distributed(job):
    root, _ = job
    assert (root / "world-0.txt").read_text() == (root / "world-1.txt").read_text() == "2 DistributedType.MULTI_CPU\n" * 2


def test_each_rank_sees_a_disjoint_half_of_each_epoch(job):
    root, _ = job
    seen = [[int(i) for i in lines(root / f"seen-{r}.txt")] for r in (0, 1)]
    assert [len(s) for s in seen] == [3 * 8, 3 * 8]
    for epoch in range(3):
        a, b = (set(s[8 * epoch:8 * epoch + 8]) for s in seen)
        assert len(a) == len(b) == 8 and not a & b and a | b == set(range(16))
    assert seen[0][:8] != seen[0][8:16]  # a new permutation each epoch


def test_both_ranks_end_with_the_saved_weights(job):
    root, _ = job
    w0, w1 = (load_file(root / f"weights-{r}.safetensors") for r in (0, 1))
    saved = weights(root / "run")
    assert w0.keys() == saved.keys()
    assert all(torch.equal(w0[n], w1[n]) and torch.equal(w0[n], saved[n]) for n in saved)


def test_one_distributed_step_equals_one_step_on_the_global_batch(job, tmp_path):
    root, _ = job
    single = Recipe(**{**STEP.__dict__, "batch_size": 8})  # one process, the 2 x 4 images in one batch
    train_model(nobn_cfg(), single, SquaresDataset(8), tmp_path / "single")
    torch.manual_seed(STEP.seed)
    start = build_model(nobn_cfg()).state_dict()
    ddp, one = weights(root / "step"), weights(tmp_path / "single")
    assert max(float((one[n] - start[n]).abs().max()) for n in one) > 1e-3  # the step moved the weights
    for n in one:
        torch.testing.assert_close(ddp[n], one[n], rtol=1e-5, atol=1e-6)


def test_only_the_main_process_writes_each_file_once(job):
    root, _ = job
    assert not (root / "replaced-1.txt").exists()
    written = lines(root / "replaced-0.txt")
    final = [f"{folder}/{name}" for folder in ("killed", "run", "step")
             for name in ("model.safetensors", "train_log.json", "config.json")]
    assert all(written.count(f) == 1 for f in final)
    assert written.count("run/resume.safetensors") == RUN.epochs
    assert sorted(p.name for p in (root / "run").iterdir()) == ["config.json", "model.safetensors", "train_log.json"]


def test_cross_validation_trains_every_fold_and_k_once(job):
    root, _ = job
    written = lines(root / "replaced-0.txt")
    for fold in (0, 1):
        for k in ("k2", "k4"):
            assert written.count(f"cv/fold{fold}/{k}/config.json") == 1
    assert written.count("cv/cv.json") == 1
    seen = [lines(root / f"cv-{r}.txt") for r in (0, 1)]
    assert len(seen[0]) == len(seen[1]) == 2 * 2 * 8 // 2  # folds x models x 8 training images, split in two


def test_killed_job_resumes_to_the_same_weights(job):
    root, stopped = job
    assert stopped  # the kill came mid-run: a resume file before the last epoch, no model yet
    a, b = weights(root / "run"), weights(root / "killed")
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert len(json.loads((root / "killed" / "train_log.json").read_text())["epochs"]) == RUN.epochs
