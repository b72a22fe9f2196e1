"""Training-step cost of Top-GAP against the unmodified baseline and against PGD-10 adversarial training.

Goals (issue: training and evaluation): Top-GAP / baseline <= 1.3x; PGD-10 AT / Top-GAP >= 6x.
Medians over repeated steps in one run (baseline and Top-GAP steps interleaved), same backbone, resolution
and batch:

    python bench/train_step.py --backbone resnet18 --size 128 --batch 16 --repeats 10 [--fpn-channels 128]
    python bench/train_step.py --backbone tf_efficientnet_lite0 --size 224 --batch 16 --fpn-channels 64 --no-at
"""
from __future__ import annotations

import argparse
import json

import torch
import torchattacks

from topgap import ModelConfig, build_model, topgap_loss
from topgap.model import Normalize
from timing import median_time, median_times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--fpn-channels", type=int, default=256)
    p.add_argument("--num-maps", type=int, default=4, help="feature maps fed to the FPN head (3: class maps at stride 8)")
    p.add_argument("--no-at", action="store_true", help="skip the PGD-10 adversarial-training step")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    torch.manual_seed(0)
    dev = torch.device(args.device)
    classes = [str(i) for i in range(10)]
    cfg = ModelConfig(args.backbone, classes, k=args.k, fpn_channels=args.fpn_channels, num_maps=args.num_maps,
                      input_size=(args.size, args.size))
    norm = Normalize(cfg.mean, cfg.std).to(dev)
    ours = build_model(cfg).to(dev).train()
    base = build_model(ModelConfig(args.backbone, classes, kind="baseline", k=None)).to(dev).train()
    x = torch.rand(args.batch, 3, args.size, args.size, device=dev)
    y = torch.randint(0, 10, (args.batch,), device=dev)
    opt_ours = torch.optim.SGD(ours.parameters(), lr=1e-3, momentum=0.9)
    opt_base = torch.optim.SGD(base.parameters(), lr=1e-3, momentum=0.9)
    base01 = torch.nn.Sequential(norm, base)
    pgd = torchattacks.PGD(base01, eps=8 / 255, alpha=2 / 255, steps=10, random_start=True)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def step_ours():
        logits, maps = ours.forward_with_maps(norm(x))
        opt_ours.zero_grad(set_to_none=True)
        topgap_loss(logits, maps, y).backward()
        opt_ours.step()
        sync()

    def step_base(inputs=None):
        opt_base.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(base01(x if inputs is None else inputs), y).backward()
        opt_base.step()
        sync()

    def step_pgd_at():
        adv = pgd(x, y)
        base01.train()  # torchattacks switches to eval for the attack
        step_base(adv)

    t_base, t_ours = median_times([step_base, step_ours], args.repeats)  # interleaved
    t_at = None if args.no_at else median_time(step_pgd_at, max(3, args.repeats // 3), warmup=1)
    print(json.dumps({
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "backbone": args.backbone, "size": args.size, "batch": args.batch, "k": args.k, "fpn_channels": args.fpn_channels,
        "num_maps": args.num_maps, "cam_size": list(ours.class_maps(x[:1]).shape[-2:]),
        "median_step_s": {"baseline": round(t_base, 4), "topgap": round(t_ours, 4),
                          "pgd10_at": None if t_at is None else round(t_at, 4)},
        "topgap_over_baseline": round(t_ours / t_base, 2),
        "pgd10_at_over_topgap": None if t_at is None else round(t_at / t_ours, 2),
    }, indent=2))


if __name__ == "__main__":
    main()
