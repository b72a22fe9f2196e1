"""The `topgap` command line. Each subcommand is a thin layer over a library function."""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

__all__ = ["main"]

SUBCOMMAND_MODULES = ["data.synth", "data.backgrounds", "train", "eval.evaluate", "eval.seeds", "eval.card",
                      "publish", "eval.figcheck", "study"]  # modules with register(subparsers)


def describe(args: argparse.Namespace) -> dict:
    """Parameter counts and class-map size of a backbone with and without the Top-GAP head (cf. Table 1)."""
    import torch

    from .model import TopGapNet, create_baseline

    net = TopGapNet(args.backbone, args.num_classes, args.k, num_maps=args.num_maps, fpn_channels=args.fpn_channels,
                    last_stage=args.last_stage)
    base = create_baseline(args.backbone, args.num_classes, last_stage=args.last_stage)
    with torch.no_grad():
        h, w = net.eval().class_maps(torch.zeros(1, 3, args.input_size, args.input_size)).shape[-2:]
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return {"backbone": args.backbone, "num_classes": args.num_classes, "params_unmodified": count(base),
            "params_topgap": count(net), "cam_size": [h, w], "k": args.k, "k_fraction": args.k / (h * w)}


def info(args: argparse.Namespace) -> dict:
    """The config of a saved model folder (checks the weights too)."""
    from .checkpoint import load_model

    _, cfg = load_model(args.folder)
    return cfg.to_dict()


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(prog="topgap", description=__doc__, formatter_class=fmt)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("describe", help=describe.__doc__, description=describe.__doc__, formatter_class=fmt)
    p.add_argument("backbone", help="timm model name, e.g. efficientnet_b0, or preact_resnet18")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--k", type=int, default=64, help="Top-GAP pixel budget")
    p.add_argument("--num-maps", type=int, default=4, help="feature maps fed to the FPN head")
    p.add_argument("--fpn-channels", type=int, default=256)
    p.add_argument("--last-stage", type=int, metavar="N", help="cut the backbone after feature stage N (0-based)")
    p.add_argument("--input-size", type=int, default=224, help="square input side in pixels")
    p.set_defaults(func=describe)
    p = sub.add_parser("info", help=info.__doc__, description=info.__doc__, formatter_class=fmt)
    p.add_argument("folder", help="a model folder (config.json + model.safetensors)")
    p.set_defaults(func=info)
    for name in SUBCOMMAND_MODULES:  # each module adds its own subcommand: register(subparsers)
        importlib.import_module(f".{name}", __package__).register(sub)
    return parser


def _with_config_file(parser: argparse.ArgumentParser, args: argparse.Namespace, argv) -> argparse.Namespace:
    """Re-parse with the values of ``--config FILE`` as defaults, so command-line options still win."""
    path = Path(args.config)
    try:
        values = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"--config {path}: cannot read it as JSON ({e})") from None
    return parse_with_values(argv, values, f"--config {path}", parser=parser, args=args)


def parse_with_values(argv: list[str], values: dict, source: str, *, parser: argparse.ArgumentParser | None = None,
                      args: argparse.Namespace | None = None) -> argparse.Namespace:
    """`argv` (a subcommand and its arguments) parsed with `values` ({long option with _: value}) as the subcommand's
    defaults, so that `argv` still wins; ValueError naming `source` for an option the subcommand does not have."""
    parser = parser or build_parser()
    command = (args or parser.parse_args(argv)).command
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    unknown = sorted(set(values) - {a.dest for a in sub._actions})
    if unknown:
        raise ValueError(f"{source}: unknown options {unknown} for topgap {command}; use the long option names with _")
    sub.set_defaults(**values)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "config", None):
            args = _with_config_file(parser, args, argv)
        result = args.func(args)
    except ValueError as e:  # bad input: one clear line, no traceback
        print(f"topgap {args.command}: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
