"""Train a Vision Transformer from the command line: ``python -m vit_from_scratch.cli --help``.

By default it trains on 45,000 training images and evaluates on the other 5,000 (the book's
validation split) after every epoch; the test set is read once, after the last epoch (OUT/test.json).

Examples:
    python -m vit_from_scratch.cli --preset cifar10-cpu --out runs/cifar10
    python -m vit_from_scratch.cli --preset cifar10-cpu --out runs/cifar10 --resume
    python -m vit_from_scratch.cli --preset cifar10-cpu --monitor test   # as chapter 6's final run
    python -m vit_from_scratch.cli --preset cifar10-gpu --epochs 50 --compile
    python -m vit_from_scratch.cli --out runs/cifar10 --resume --max-steps 0 --export my_vit

(``python -m vit_from_scratch.train`` is the same command under its old name.)
On many processes (chapter 11) the same options run under torchrun:
    torchrun --nproc_per_node=2 -m vit_from_scratch.distributed --preset cifar10-cpu --out runs/ddp
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import types
import typing
from dataclasses import fields
from pathlib import Path

from .checkpoints import WEIGHTS_DIR, check_export_name, export_weights
from .data import load_cifar10
from .parallel import SingleProcess
from .recipe import PRESETS, TrainConfig, preset
from .runtime import environment_report, pick_device
from .checkpoints import prepare_out_dir
from .evaluation import EVALUATED_ON, standard_validation_split
from .training import fit

# What a run can meet that is the user's to fix (a folder, a file, an option, a device, a NaN):
# one line each; --debug shows the traceback.
EXPECTED_ERRORS = (OSError, ValueError, TypeError, RuntimeError, KeyError)


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _base_type(hint: typing.Any) -> type:
    """``int`` for ``int`` and for ``int | None``: the type an option's text is converted to."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        (hint,) = [a for a in typing.get_args(hint) if a is not type(None)]
    return hint


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m vit_from_scratch.cli", description=__doc__.split("\n")[0],
        epilog=__doc__.split("\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cifar10-cpu", choices=sorted(PRESETS),
                        help="starting point for every option below (default: cifar10-cpu, the chapter's run)")
    parser.add_argument("--out", type=Path, default=Path("runs/cifar10"),
                        help="folder for last.pt (written atomically every epoch), history.json and test.json")
    parser.add_argument("--monitor", default="validation", metavar="{validation,test}",
                        help="the set evaluated after every epoch. validation (default): train on all training "
                             "images but a held-out 5,000 (the book's split, seed 0; a tenth of a smaller set), "
                             "evaluate on those, and read the test set once, after the schedule's last epoch, "
                             "into OUT/test.json (a resume of the finished run reports that file). test: train "
                             "on all training images and evaluate on the test set after every epoch, for the "
                             "curves of a recipe already chosen (chapter 6's final run, "
                             "tests/benchmarks/seed_run.py)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt exactly where it stopped")
    parser.add_argument("--overwrite", action="store_true", help="delete the run in OUT and start over")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="data folder (default: $VIT_DATA_DIR, else ~/.cache/vit_from_scratch/data)")
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    parser.add_argument("--export", default=None, metavar="NAME",
                        help="after training, also write weights-only NAME.pt and NAME.json into the package "
                             "(a plain name, no folders)")
    parser.add_argument("--export-dir", type=Path, default=WEIGHTS_DIR, metavar="DIR",
                        help="where --export writes (default: the package's weights folder, where "
                             "load_trained_model looks)")
    parser.add_argument("--overwrite-export", action="store_true",
                        help="let --export replace existing weights of that name (the shipped ones included)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (one line per epoch only)")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks of errors")
    options = parser.add_argument_group("training options (default: the preset's value)")
    hints = typing.get_type_hints(TrainConfig)
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.name == "model":
            options.add_argument(flag, type=json.loads, default=None, help=f.metadata["help"])
            continue
        if f.name == "betas":
            options.add_argument(flag, type=float, nargs=2, default=None, help=f.metadata["help"])
            continue
        base = _base_type(hints[f.name])
        options.add_argument(flag, type=_parse_bool if base is bool else base, default=None,
                             metavar="{true,false}" if base is bool else f.name.upper(),
                             help=f.metadata["help"] + f" (TrainConfig default: {f.default})")
    return parser


def _naming_the_option(error: BaseException) -> str:
    """A config error as the command line says it: ``grad_clip must be ...`` becomes ``--grad-clip must
    be ...`` and ``model: dim must be ...`` becomes ``--model: dim must be ...``."""
    text = str(error)
    name = re.match(r"\w*", text).group()
    if name in {f.name for f in fields(TrainConfig)}:
        return "--" + name.replace("_", "-") + text[len(name):]
    return text


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name) is not None}
    return preset(args.preset, **overrides)


def _train(args: argparse.Namespace, argv: list[str], parallel: SingleProcess) -> int:
    """The run: checks that need no data first (options, device, output folder, export name), then data,
    training and the export. With many processes, only the main one prepares, prints and exports."""
    try:
        config = config_from_args(args)
        parallel.check(config)
        if args.monitor not in EVALUATED_ON:
            raise ValueError(f"--monitor must be validation or test, got {args.monitor!r}: validation to choose "
                             "and read the test set once at the end, test to evaluate on it after every epoch")
    except (ValueError, TypeError) as error:
        print(f"error: {_naming_the_option(error)}", file=sys.stderr)
        return 2
    device = parallel.device or pick_device(args.device)
    main = parallel.is_main
    if args.export and main:
        check_export_name(args.export, args.export_dir, overwrite=args.overwrite_export)
    if main:
        prepare_out_dir(args.out, resume=args.resume, overwrite=args.overwrite)
        print(environment_report(device))
        print("config:", json.dumps(config.to_dict()))
    train_set, test_set = load_cifar10(args.data_dir)
    evaluated, final = test_set, None
    if args.monitor == "validation":  # carved before --train-subset / --test-subset take their slices
        train_set, evaluated = standard_validation_split(train_set)
        final = test_set
    if main:
        print(_data_line(config, train_set, evaluated, final))
    result = fit(config, train_set=train_set, test_set=evaluated, out_dir=args.out, resume=args.resume,
                 device=device, progress=not args.no_progress,  # the folder is prepared: overwrite is done
                 parallel=parallel, evaluated_on=args.monitor, final_test_set=final)
    if not main:
        return 0
    done = _done_line(result, args.monitor, config.epochs)
    if done:
        print(done)
    if args.export:
        if not result.checkpoint.exists():
            print(f"error: nothing to export: no checkpoint was written to {args.out} (no epoch was trained); "
                  "to export a finished run, add --resume", file=sys.stderr)
            return 1
        test = {k: v for k, v in (result.final_test or {}).items() if k != "config"}  # the history is validation's
        path = export_weights(result.checkpoint, args.export, directory=args.export_dir,
                              overwrite=args.overwrite_export, note=f"python -m vit_from_scratch.cli {' '.join(argv)}",
                              extra={"final_test": test} if test else None)
        print(f"exported {path}")
    return 0


def _data_line(config: TrainConfig, train, evaluated, final) -> str:
    """What the run trains on and evaluates on, in images (after --train-subset and --test-subset)."""
    def n(data, subset):
        return len(data) if subset is None else min(subset, len(data))

    trains, evals = n(train, config.train_subset), n(evaluated, config.test_subset)
    if final is None:
        return f"data: trains on {trains} training images, evaluates on {evals} test images after every epoch"
    return (f"data: trains on {trains} training images, evaluates on {evals} validation images held out of the "
            f"training images after every epoch; reads {n(final, config.test_subset)} test images once, after "
            "the last epoch")


def _done_line(result, monitor: str, epochs: int) -> str | None:
    """``done: validation accuracy 0.xxxx after N epochs; test accuracy 0.xxxx (read once, at the end); ...``"""
    if not result.history:
        return None
    last = result.history[-1]
    when = (f"{last['step']} steps (stopped inside epoch {last['epoch']} by --max-steps; --resume continues it)"
            if last.get("partial") else f"{last['epoch']} epochs")
    line = f"done: {monitor} accuracy {last['test_accuracy']:.4f} after {when}"
    if monitor == "validation":
        line += (f"; test accuracy {result.final_test['accuracy']:.4f} (read once, at the end)" if result.final_test
                 else f"; the test set is read once the schedule's last epoch ({epochs}) ends")
    return line + f"; checkpoint {result.checkpoint}"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # torchrun started several copies of this one-process run
        print("error: this command trains in one process; under torchrun use the same options with "
              "`-m vit_from_scratch.distributed`", file=sys.stderr)
        return 2
    return run_parsed(args, argv)


def run_parsed(args: argparse.Namespace, argv: list[str], parallel: SingleProcess | None = None) -> int:
    """Train as the parsed options say, in ``parallel``'s processes (default: this one); errors the user
    can fix are one line each (``--debug``: the traceback)."""
    try:
        return _train(args, argv, parallel or SingleProcess())
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"\ninterrupted; resume with --resume (--out {args.out} keeps the last finished epoch)",
              file=sys.stderr)
        return 130
    except EXPECTED_ERRORS as error:
        if args.debug:
            raise
        print(f"error: {error}\n(--debug shows the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
