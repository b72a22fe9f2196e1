"""Training-step cost of Top-GAP against the unmodified baseline and against PGD-10 adversarial training.

Goals (issue: training and evaluation): Top-GAP / baseline <= 1.3x; PGD-10 AT / Top-GAP >= 6x.
Medians over repeated steps in one run (baseline and Top-GAP steps interleaved), same backbone, resolution
and batch; training images/s and the FLOPs of one step (3 x the forward's, counted by torch's FlopCounterMode),
and on a GPU whose peak is in PEAK_TFLOPS the share of that peak (bf16 tensor-core peak with --bf16, TF32 otherwise):

    python bench/train_step.py --backbone resnet18 --size 128 --batch 16 --repeats 10 [--fpn-channels 128]
    python bench/train_step.py --backbone tf_efficientnet_lite0 --size 224 --batch 16 --fpn-channels 64 --no-at
    python bench/train_step.py --backbone resnet18 --size 224 --batch 128 --bf16 --channels-last [--compile]
"""
from __future__ import annotations

import argparse
import contextlib

import torch
import torchattacks
from torch.utils.flop_counter import FlopCounterMode

from topgap import ModelConfig, build_model, topgap_loss
from topgap.model import Normalize
from timing import median_time, median_times, write_result

# dense peak TFLOP/s (bf16 tensor cores, TF32 tensor cores) from the vendors' data sheets, by device name
PEAK_TFLOPS = {"H100 SXM": (989.4, 494.7), "H100 80GB HBM3": (989.4, 494.7), "H100 PCIe": (756.0, 378.0),
               "H100 NVL": (835.0, 417.5), "H200": (989.4, 494.7), "A100": (312.0, 156.0), "L4": (121.0, 60.0),
               "L40S": (362.0, 183.0), "A10G": (70.0, 35.0)}


def peak_tflops(device: torch.device, bf16: bool) -> float | None:
    """The card's dense peak for the step's precision, or None (CPU, unknown card)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, (peak_bf16, peak_tf32) in PEAK_TFLOPS.items():
        if key in name:
            return peak_bf16 if bf16 else peak_tf32
    return None


def step_flops(forward) -> int:
    """FLOPs of one training step: 3 x the forward's FLOPs counted by torch (backward = 2 x forward, the usual
    convention; torch's own count of convolution_backward overcounts grouped convolutions)."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        forward()
    return 3 * counter.get_total_flops()


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
    p.add_argument("--out", default=None, help="also write the JSON here (bench/results/train_step_NAME.json)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast for forward and loss (Recipe.bf16)")
    p.add_argument("--channels-last", action="store_true", help="NHWC models and inputs (Recipe.channels_last)")
    p.add_argument("--compile", action="store_true", help="torch.compile both models (Recipe.compile)")
    args = p.parse_args()
    torch.manual_seed(0)
    dev = torch.device(args.device)
    classes = [str(i) for i in range(10)]
    cfg = ModelConfig(args.backbone, classes, k=args.k, fpn_channels=args.fpn_channels, num_maps=args.num_maps,
                      input_size=(args.size, args.size))
    norm = Normalize(cfg.mean, cfg.std).to(dev)
    ours = build_model(cfg).to(dev).train()
    base = build_model(ModelConfig(args.backbone, classes, kind="baseline", k=None)).to(dev).train()
    memory = torch.channels_last if args.channels_last else torch.contiguous_format
    ours, base = ours.to(memory_format=memory), base.to(memory_format=memory)
    x = torch.rand(args.batch, 3, args.size, args.size, device=dev).contiguous(memory_format=memory)
    y = torch.randint(0, 10, (args.batch,), device=dev)
    opt_ours = torch.optim.SGD(ours.parameters(), lr=1e-3, momentum=0.9)
    opt_base = torch.optim.SGD(base.parameters(), lr=1e-3, momentum=0.9)
    run_ours = torch.compile(ours.forward_with_maps) if args.compile else ours.forward_with_maps
    base01 = torch.nn.Sequential(norm, torch.compile(base) if args.compile else base)
    autocast = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if args.bf16 else contextlib.nullcontext
    pgd = torchattacks.PGD(base01, eps=8 / 255, alpha=2 / 255, steps=10, random_start=True)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def step_ours():
        with autocast():
            logits, maps = run_ours(norm(x))
            loss = topgap_loss(logits.float(), maps.float(), y)
        opt_ours.zero_grad(set_to_none=True)
        loss.backward()
        opt_ours.step()
        sync()

    def step_base(inputs=None):
        opt_base.zero_grad(set_to_none=True)
        with autocast():
            loss = torch.nn.functional.cross_entropy(base01(x if inputs is None else inputs).float(), y)
        loss.backward()
        opt_base.step()
        sync()

    def step_pgd_at():
        adv = pgd(x, y)
        base01.train()  # torchattacks switches to eval for the attack
        step_base(adv)

    t_base, t_ours = median_times([step_base, step_ours], args.repeats)  # interleaved
    times = {"baseline": t_base, "topgap": t_ours}
    flops = {"baseline": step_flops(lambda: base01(x)), "topgap": step_flops(lambda: ours.forward_with_maps(norm(x)))}
    peak = peak_tflops(dev, args.bf16)
    result = {
        "goals": {"topgap_over_baseline_at_most": 1.3, "pgd10_at_over_topgap_at_least": 6},
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "backbone": args.backbone, "size": args.size, "batch": args.batch, "k": args.k, "fpn_channels": args.fpn_channels,
        "num_maps": args.num_maps, "cam_size": list(ours.class_maps(x[:1]).shape[-2:]),
        "bf16": args.bf16, "channels_last": args.channels_last, "compile": args.compile,
        "median_step_s": {n: round(t, 4) for n, t in times.items()},
        "train_images_per_s": {n: round(args.batch / t, 1) for n, t in times.items()},
        "step_gflop": {n: round(f / 1e9, 2) for n, f in flops.items()},
        "achieved_tflops": {n: round(flops[n] / times[n] / 1e12, 3) for n in times},
        "share_of_peak": {n: round(flops[n] / times[n] / 1e12 / peak, 3) for n in times} if peak else
        "no GPU with a known peak (see PEAK_TFLOPS)",
        "topgap_over_baseline": round(t_ours / t_base, 2),
    }
    if not args.no_at:
        t_at = median_time(step_pgd_at, max(3, args.repeats // 3), warmup=1)
        result["median_step_s"]["pgd10_at"] = round(t_at, 4)
        result["pgd10_at_over_topgap"] = round(t_at / t_ours, 2)
    write_result(result, args.out)

if __name__ == "__main__":
    main()
