"""Train a Vision Transformer from the command line: ``python -m vit_from_scratch.train --help``.

Examples:
    python -m vit_from_scratch.train --preset cifar10-cpu --out runs/cifar10
    python -m vit_from_scratch.train --preset cifar10-cpu --out runs/cifar10 --resume
    python -m vit_from_scratch.train --preset cifar10-gpu --epochs 50 --compile
"""

from __future__ import annotations

import argparse
import json
import sys
import typing
from dataclasses import fields
from pathlib import Path

from .runtime import environment_report, pick_device
from .training import PRESETS, NonFiniteLossError, TrainConfig, export_weights, fit, preset


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m vit_from_scratch.train", description=__doc__.split("\n")[0],
        epilog=__doc__.split("\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cifar10-cpu", choices=sorted(PRESETS),
                        help="starting point for every option below (default: cifar10-cpu, the chapter's run)")
    parser.add_argument("--out", type=Path, default=Path("runs/cifar10"),
                        help="folder for last.pt (written atomically every epoch) and history.json")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt exactly where it stopped")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="data folder (default: $VIT_DATA_DIR, else ~/.cache/vit_from_scratch/data)")
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    parser.add_argument("--export", default=None, metavar="NAME",
                        help="after training, also write weights-only NAME.pt and NAME.json into the package")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (one line per epoch only)")
    options = parser.add_argument_group("training options (default: the preset's value)")
    hints = typing.get_type_hints(TrainConfig)
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        if f.name == "model":
            options.add_argument(flag, type=json.loads, default=None, help=f.metadata["help"])
        elif f.name == "betas":
            options.add_argument(flag, type=float, nargs=2, default=None, help=f.metadata["help"])
        else:
            base = bool if kind is bool else int if kind is int else float if kind is float else str
            options.add_argument(flag, type=_parse_bool if base is bool else base, default=None,
                                 metavar=f.name.upper() if base is not bool else "{true,false}",
                                 help=f.metadata["help"] + f" (TrainConfig default: {f.default})")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name) is not None}
    return preset(args.preset, **overrides)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
    except (ValueError, TypeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    device = pick_device(args.device)
    print(environment_report(device))
    print("config:", json.dumps(config.to_dict()))
    train_set = test_set = None
    if args.data_dir is not None:
        from .data import load_cifar10

        train_set, test_set = load_cifar10(args.data_dir)
    try:
        result = fit(config, train_set=train_set, test_set=test_set, out_dir=args.out, resume=args.resume,
                     device=device, progress=not args.no_progress)
    except (NonFiniteLossError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    last = result.history[-1] if result.history else None
    if last:
        print(f"done: test accuracy {last['test_accuracy']:.4f} after {last['epoch']} epochs; checkpoint {result.checkpoint}")
    if args.export:
        path = export_weights(result.checkpoint, args.export, note=f"python -m vit_from_scratch.train {' '.join(argv or sys.argv[1:])}")
        print(f"exported {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
