"""The paper's Table 4 on one GPU: PreAct ResNet-18 on CIFAR-10, baseline against Top-GAP, PGD at 8/255 (issue 28).

    python bench/gpu_table4.py --data DIR --out OUT            # the full run, about 8 minutes on one H200
    python bench/gpu_table4.py --data DIR --out OUT --toy      # the same code at toy scale, on CPU (the tests)

DIR holds CIFAR-10 in a layout :func:`topgap.data.open_dataset` reads (``train.tar.gz`` and ``test.tar.gz`` of
../shared/data/cifar10-jpeg). In order:

1. Train and test are decoded once into uint8 tensors on the device. 5,000 class-stratified training images (500
   per class, ids recorded) are held out to choose k; the test subset is 1,000 class-stratified images (ids recorded).
2. The baseline (PreAct ResNet-18, GAP + linear) and Top-GAP at each ``--k`` (4 maps, FPN 256 channels, lam 1 with
   ``l1_norm="mean"``: lam multiplies mean |X| over batch, classes and 32 x 32 cells) train with one recipe and the
   same number of epochs, through :func:`topgap.train.optimisation_step` (the CPU trainer's step), bf16 autocast,
   channels_last, and the pad-4 crop + flip of :func:`topgap.data.pad_crop_flip` on the device. ``--epochs auto``:
   as many as fit ``--train-minutes``, from 20 timed steps of each model.
3. k is chosen on the held-out images by :data:`RULE`, written before any run.
4. Every model is evaluated on the test subset: clean, FGSM, PGD-20 and PGD-50 at 8/255 under both step rules of
   :data:`topgap.eval.attacks.PGD_RULES`, the paper's robust accuracy (prediction unchanged) beside correct under
   attack, the eps curve, and AutoAttack (standard, torchattacks) on 500 of the 1,000 images.
5. OUT/results.json, OUT/train_log.json (device, img/s, share of the card's peak bf16 FLOP/s) and OUT/README.md.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

from topgap.checkpoint import build_model
from topgap.config import ModelConfig
from topgap.data import open_dataset, pad_crop_flip
from topgap.data.datasets import PAD
from topgap.eval import attacks
from topgap.eval.subsets import stratified_indices
from topgap.io import atomic_write, write_json
from topgap.train import Recipe, Trainable, environment, make_accelerator, make_optimizer, optimisation_step

RULE = ("the k of the highest clean accuracy on the held-out training images (5,000, 500 per class; the paper's own "
        "heuristic, section 4.2: the k of the highest clean accuracy tends to be the most robust); ties to the "
        "smaller k")
PAPER = {"baseline": {"pgd20": 0.0, "pgd50": 0.0, "clean": 0.945}, "topgap": {"pgd20": 0.517, "pgd50": 0.313,
                                                                               "clean": 0.951}}
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0}  # dense, the vendors' data sheets
EPS = 8 / 255
CURVE = [1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="CIFAR-10 root (train.tar.gz and test.tar.gz, or class folders)")
    p.add_argument("--out", required=True, help="where results.json, train_log.json and README.md go")
    p.add_argument("--k", type=int, nargs="+", default=[8, 64], help="Top-GAP pixel budgets (paper: 8 ... 256)")
    p.add_argument("--epochs", default="auto", help="epochs of every model, or auto (as many as --train-minutes fit)")
    p.add_argument("--train-minutes", type=float, default=3.0, help="training budget of all models together")
    p.add_argument("--autoattack-images", type=int, default=500, help="AutoAttack's share of the test subset")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=0.2, help="SGD (Nesterov, momentum 0.9) peak lr, cosine after 1 epoch")
    p.add_argument("--toy", action="store_true", help="CPU smoke scale: a quarter-width network, 64 training images, "
                                                      "1 epoch, 2 PGD steps, no AutoAttack")
    return p.parse_args(argv)


def scale(args: argparse.Namespace) -> dict:
    """The run's sizes: the paper's, or the toy's that the test suite runs."""
    if args.toy:
        return {"backbone": "preact_resnet18_w16", "fpn_channels": 16, "n_train": 64, "n_held": 32, "n_test": 40,
                "n_autoattack": 0, "pgd_steps": [2], "curve_steps": 2, "attack_batch": 40}
    return {"backbone": "preact_resnet18", "fpn_channels": 256, "n_train": None, "n_held": 5000, "n_test": 1000,
            "n_autoattack": args.autoattack_images, "pgd_steps": [20, 50], "curve_steps": 10, "attack_batch": 500}


def load_split(root: str, split: str, device: torch.device) -> dict:
    """One split decoded once: uint8 (N, 3, 32, 32) images and (N,) labels on `device`, the ids and class names."""
    ds = open_dataset(root, split, input_size=(32, 32))
    images = torch.stack([torch.from_numpy(ds.load(i)[0]).permute(2, 0, 1) for i in range(len(ds))])
    return {"x": images.to(device), "y": torch.tensor(ds.labels, device=device), "ids": ds.ids,
            "class_names": ds.class_names}


def take(split: dict, indices: list[int]) -> dict:
    idx = torch.tensor(indices, device=split["x"].device, dtype=torch.long)
    return {**split, "x": split["x"][idx], "y": split["y"][idx], "ids": [split["ids"][i] for i in indices]}


def configs(args: argparse.Namespace, sizes: dict, class_names: list[str]) -> dict[str, ModelConfig]:
    common = dict(backbone=sizes["backbone"], class_names=class_names, input_size=(32, 32), mean=(0.4914, 0.4822,
                  0.4465), std=(0.2470, 0.2435, 0.2616))
    out = {"baseline": ModelConfig(kind="baseline", k=None, **common)}
    for k in args.k:
        out[f"k{k}"] = ModelConfig(k=k, num_maps=4, fpn_channels=sizes["fpn_channels"], lam=1.0, l1_norm="mean",
                                   **common)
    return out


def batches(train: dict, batch_size: int, generator: torch.Generator):
    """One epoch of augmented [0, 1] batches: a seeded permutation, crop offsets and flips drawn per image."""
    n, dev = len(train["y"]), train["x"].device
    order = torch.randperm(n, generator=generator)
    for start in range(0, n - batch_size + 1 if n >= batch_size else 1, batch_size):
        idx = order[start:start + batch_size]
        dy, dx = (torch.randint(2 * PAD + 1, (len(idx),), generator=generator) for _ in range(2))
        flip = torch.rand(len(idx), generator=generator) < 0.5
        x = pad_crop_flip(train["x"][idx.to(dev)], dy, dx, flip).float().div_(255)
        yield x.contiguous(memory_format=torch.channels_last), train["y"][idx.to(dev)]


def step_flops(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """FLOPs of one forward + backward pass on the batch (torch's FlopCounterMode; matrix products and convs)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        logits, _ = net(x)
        torch.nn.functional.cross_entropy(logits.float(), y).backward()
    net.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def seconds_per_step(cfg: ModelConfig, recipe: Recipe, train_set: dict, acc, steps: int = 20) -> float:
    """Mean seconds of `steps` optimisation steps after 3 warm-ups, on a throwaway model."""
    net = Trainable(build_model(cfg), cfg).to(acc.device, memory_format=torch.channels_last)
    opt, gen = make_optimizer(net, recipe), torch.Generator().manual_seed(1)
    stream = (b for _ in range(steps + 3) for b in batches(train_set, recipe.batch_size, gen))
    for i, (x, y) in zip(range(steps + 3), stream):
        if i == 3:
            sync(acc.device)
            t0 = time.perf_counter()
        optimisation_step(acc, net, opt, x, y, cfg, recipe, 0, 1000)
    sync(acc.device)
    return (time.perf_counter() - t0) / steps


def plan_epochs(args: argparse.Namespace, cfgs: dict, recipe: Recipe, train_set: dict, acc) -> tuple[int, dict]:
    """The epochs every model trains: --epochs, or as many as --train-minutes fit for all models together."""
    if args.epochs != "auto":
        return int(args.epochs), {}
    per_epoch = max(1, len(train_set["y"]) // recipe.batch_size)
    timing = {name: seconds_per_step(cfg, recipe, train_set, acc) * per_epoch for name, cfg in cfgs.items()}
    return max(1, math.floor(args.train_minutes * 60 / sum(timing.values()))), {"epoch_seconds": timing}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train(cfg: ModelConfig, recipe: Recipe, train_set: dict, acc) -> tuple[torch.nn.Module, dict]:
    """Train one model from scratch on the device-resident images; its log (per epoch loss, accuracy, img/s)."""
    torch.manual_seed(recipe.seed)
    net = Trainable(build_model(cfg), cfg).to(acc.device, memory_format=torch.channels_last)
    opt = make_optimizer(net, recipe)
    n = len(train_set["y"])
    per_epoch = max(1, n // recipe.batch_size)
    total, log, gen = per_epoch * recipe.epochs, [], torch.Generator().manual_seed(recipe.seed)
    x0, y0 = next(batches(train_set, recipe.batch_size, torch.Generator().manual_seed(0)))
    counted = Trainable(build_model(cfg), cfg).to(acc.device, memory_format=torch.channels_last)
    flops = step_flops(counted, x0, y0)  # on a copy: a counted pass in train mode would move BatchNorm's statistics
    del counted
    sync(acc.device)
    start = time.perf_counter()
    for epoch in range(recipe.epochs):
        net.train()
        t0, sums = time.perf_counter(), torch.zeros(4, dtype=torch.float64, device=acc.device)
        for i, (x, y) in enumerate(batches(train_set, recipe.batch_size, gen)):
            sums += optimisation_step(acc, net, opt, x, y, cfg, recipe, epoch * per_epoch + i, total)
        sync(acc.device)
        seconds = time.perf_counter() - t0
        log.append({"epoch": epoch + 1, "loss": float(sums[0] / sums[3]), "ce_loss": float(sums[1] / sums[3]),
                    "train_accuracy": float(sums[2] / sums[3]), "seconds": round(seconds, 2),
                    "images_per_second": round(float(sums[3]) / seconds, 1)})
        print(f"{cfg.kind} k={cfg.k} epoch {epoch + 1}/{recipe.epochs}: {log[-1]}", flush=True)
    seconds = time.perf_counter() - start
    return net.eval(), {"epochs": log, "train_seconds": round(seconds, 1), "flops_per_step": flops,
                        "achieved_tflops": flops * total / seconds / 1e12}


def accuracy(model01: torch.nn.Module, split: dict, batch: int = 1000) -> float:
    preds = torch.cat([attacks.predict(model01, split["x"][i:i + batch].float() / 255)
                       for i in range(0, len(split["y"]), batch)])
    return float((preds == split["y"]).float().mean())


def robust(model01: torch.nn.Module, split: dict, kind: str, batch: int, **kw) -> dict:
    """:func:`topgap.eval.attacks.robustness` of one attack over the split, in batches; per-image "correct" kept."""
    counts, correct = {"n": 0, "clean_correct": 0, "robust_paper": 0, "robust_correct": 0}, []
    for i in range(0, len(split["y"]), batch):
        x, y = split["x"][i:i + batch].float() / 255, split["y"][i:i + batch]
        adv = attacks.run_attack(model01, x, y, kind, EPS, **kw)
        o = attacks.outcomes(model01, x, y, adv)
        for key, name in (("clean_correct", "clean"), ("robust_paper", "unchanged"), ("robust_correct", "correct")):
            counts[key] += int(o[name].sum())
        counts["n"] += len(y)
        correct.append(o["correct"].cpu())
    return {**attacks.with_rates(counts), "_correct": torch.cat(correct)}


def evaluate(model01: torch.nn.Module, test: dict, sizes: dict) -> dict:
    """Clean, FGSM, PGD (each steps x each step rule), the eps curve and AutoAttack on the test subset."""
    out = {"clean_accuracy": accuracy(model01, test), "fgsm": robust(model01, test, "fgsm", sizes["attack_batch"])}
    for steps in sizes["pgd_steps"]:
        for rule in attacks.PGD_RULES:
            alpha = attacks.pgd_step_size(rule, EPS, steps)
            out[f"pgd{steps} {rule}"] = robust(model01, test, "pgd", sizes["attack_batch"], steps=steps, rule=rule) | {
                "alpha": alpha, "reaches_boundary": attacks.reaches_boundary(alpha, EPS, steps)}
    x01 = test["x"].float() / 255
    out["eps_curve"] = attacks.eps_curve(model01, x01, test["y"], CURVE, steps=sizes["curve_steps"])
    if sizes["n_autoattack"]:
        part = stratified_indices(test["y"].tolist(), sizes["n_autoattack"], seed=0)
        sub = take(test, part)
        out["autoattack"] = robust(model01, sub, "autoattack", sizes["attack_batch"]) | {"ids": sub["ids"]}
        pgd = out[f"pgd{sizes['pgd_steps'][0]} 2.5eps/steps"]["_correct"][part]
        out["autoattack"]["pgd_same_images_correct_rate"] = float(pgd.float().mean())
        out["autoattack"]["gradient_masking"] = attacks.gradient_masking_flag(
            out["autoattack"]["pgd_same_images_correct_rate"], out["autoattack"]["robust_correct_rate"])
    else:
        out["autoattack"] = {"skipped": "toy scale: AutoAttack's cheapest full run does not fit the suite"}
    for value in out.values():
        if isinstance(value, dict):
            value.pop("_correct", None)
    return out


def choose_k(held_accuracy: dict[str, float]) -> str:
    """:data:`RULE` over the Top-GAP models' held-out accuracies ({"k8": 0.91, ...}); the name of the chosen one."""
    return max(held_accuracy, key=lambda name: (held_accuracy[name], -int(name[1:])))


def peak_tflops(device: str) -> float | None:
    return next((v for name, v in PEAK_BF16_TFLOPS.items() if name in device), None)


def report(results: dict, log: dict) -> str:
    """README.md of the run: the table beside the paper's Table 4, then what was chosen and how long it took."""
    steps = results["pgd_steps"]
    cols = ["clean"] + [f"PGD-{n} {r}" for n in steps for r in attacks.PGD_RULES] + ["AutoAttack"]
    lines = [f"# Table 4 on {log['environment']['device']}", "",
             f"CIFAR-10, PreAct ResNet-18 ({results['sizes']['backbone']}), {results['epochs']} epochs each; test: "
             f"{results['test_subset']['n']} class-stratified images (ids in results.json), eps = 8/255. Each cell: "
             "the paper's robust accuracy (prediction unchanged) / correct under attack.", "",
             "| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, m in results["models"].items():
        cells = [f"{m['clean_accuracy']:.3f}"]
        cells += [f"{m[f'pgd{n} {r}']['robust_paper_rate']:.3f} / {m[f'pgd{n} {r}']['robust_correct_rate']:.3f}"
                  for n in steps for r in attacks.PGD_RULES]
        aa = m["autoattack"]
        cells.append(f"{aa['robust_paper_rate']:.3f} / {aa['robust_correct_rate']:.3f}" if "n" in aa else "skipped")
        chosen = " (chosen k)" if name == results["chosen"] else ""
        lines.append(f"| {name}{chosen} | " + " | ".join(cells) + " |")
    for name, p in PAPER.items():
        lines.append(f"| paper, {name} | {p['clean']:.3f} | PGD-20 {p['pgd20']:.3f}, PGD-50 {p['pgd50']:.3f} "
                     "(Foolbox, paper's definition) |" + " |" * (len(cols) - 2))
    lines += ["", f"k chosen: {results['chosen']} by the rule: {results['rule']}. Held-out clean accuracy: "
              + ", ".join(f"{n} {a:.3f}" for n, a in results["held_out_accuracy"].items()) + ".", "",
              "Foolbox's step rule (eps/30) cannot reach the ball's boundary in 20 steps (2/3 of eps): a model that "
              "looks robust under it and not under 2.5 eps/steps owes its number to the step rule.", "",
              f"Training: {log['total_train_seconds']:.0f} s in all; "
              + ", ".join(f"{n} {m['train_seconds']:.0f} s at {m['epochs'][-1]['images_per_second']:.0f} img/s, "
                          f"{m['share_of_peak_bf16']:.1%} of peak bf16" if m.get("share_of_peak_bf16") is not None
                          else f"{n} {m['train_seconds']:.0f} s" for n, m in log["models"].items()) + ".", "",
              f"Command: `{results['command']}`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args, wall = parse_args(argv), time.perf_counter()
    sizes, out, acc = scale(args), Path(args.out), make_accelerator()
    full, test_all = load_split(args.data, "train", acc.device), load_split(args.data, "test", acc.device)
    labels = full["y"].tolist()
    held_idx = stratified_indices(labels, sizes["n_held"], seed=0)
    rest = sorted(set(range(len(labels))) - set(held_idx))
    if sizes["n_train"]:
        rest = [rest[i] for i in stratified_indices([labels[r] for r in rest], sizes["n_train"], seed=0)]
    train_set, held = take(full, rest), take(full, held_idx)
    test = take(test_all, stratified_indices(test_all["y"].tolist(), sizes["n_test"], seed=0))
    cfgs = configs(args, sizes, full["class_names"])
    recipe = Recipe(epochs=1, batch_size=min(args.batch_size, len(rest)), lr=args.lr, optimizer="sgd",
                    weight_decay=5e-4, warmup_epochs=1.0, lam_warmup_epochs=1.0, workers=0, keep="last",
                    bf16=acc.device.type == "cuda", channels_last=True)
    epochs, timing = plan_epochs(args, cfgs, recipe, train_set, acc)
    recipe = Recipe(**{**vars(recipe), "epochs": epochs})
    models, logs = {}, {}
    for name, cfg in cfgs.items():
        net, logs[name] = train(cfg, recipe, train_set, acc)
        models[name] = attacks.wrap01(net.model, cfg.mean, cfg.std).eval()
    held_accuracy = {name: accuracy(models[name], held) for name in cfgs if name != "baseline"}
    results = {"rule": RULE, "chosen": choose_k(held_accuracy), "held_out_accuracy": held_accuracy,
               "baseline_held_out_accuracy": accuracy(models["baseline"], held), "epochs": epochs,
               "pgd_steps": sizes["pgd_steps"], "sizes": sizes, "eps": EPS, "eps_curve_values": CURVE,
               "recipe": vars(recipe), "configs": {n: c.to_dict() for n, c in cfgs.items()},
               "held_out": {"n": len(held_idx), "ids": held["ids"]}, "n_train": len(rest),
               "test_subset": {"n": len(test["ids"]), "ids": test["ids"], "seed": 0}, "models": {}, "paper": PAPER,
               "command": "python bench/gpu_table4.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    peak = peak_tflops(environment(acc)["device"])
    for m in logs.values():
        m["share_of_peak_bf16"] = m["achieved_tflops"] / peak if peak and recipe.bf16 else None
    log = {"environment": environment(acc), "peak_bf16_tflops": peak, "timing": timing, "models": logs,
           "total_train_seconds": sum(m["train_seconds"] for m in logs.values())}
    write_json(out / "train_log.json", log)
    order = [results["chosen"], "baseline", *(n for n in models if n not in (results["chosen"], "baseline"))]
    for name in order:  # results.json after each model, the chosen k first: a run stopped at its limit keeps those
        results["models"][name] = evaluate(models[name], test, sizes)
        results["finished"], results["wall_seconds"] = len(results["models"]) == len(models), round(
            time.perf_counter() - wall, 1)
        write_json(out / "results.json", results)
        print(f"{name} evaluated at {results['wall_seconds']} s", flush=True)
    text = report(results, log)
    atomic_write(out / "README.md", lambda tmp: Path(tmp).write_text(text))
    return results


if __name__ == "__main__":
    main()
