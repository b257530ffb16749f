"""`cityseg <command>`: argument parsing and error handling; each command is a thin call into the package.

Command modules live in `cityseg_fast/commands/` and define `add_arguments(parser)` and `run(args) -> int`.
They import heavy packages (torch, DALI) inside `run`, so `cityseg --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from cityseg_fast import __version__
from cityseg_fast.errors import UserError

# name -> (module under cityseg_fast.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "doctor": ("doctor", "report Python/torch/DALI/CUDA versions, GPUs, and what works on this machine"),
    "synth": ("synth", "write a learnable synthetic dataset in the exact Cityscapes layout"),
    "prepare": ("prepare", "convert a Cityscapes-layout dataset to fast formats (JPEG/PNG, trainId labels)"),
    "train": ("train", "train a model (one process, or DDP under torchrun)"),
    "eval": ("eval", "evaluate a checkpoint: mIoU, per-class IoU, optional official-format export"),
    "predict": ("predict", "segment images with a checkpoint: colour overlays and labelId PNGs"),
    "bench": ("bench", "benchmark one scenario: loader, model, e2e, infer, accuracy"),
    "sweep": ("sweep", "run a benchmark grid from a sweep YAML, resumable, one subprocess per point"),
    "report": ("report", "build a Markdown report with plots from results.jsonl files"),
    "study": ("study", "train a study's points once per seed (resumable), then STUDY.md with tested conclusions"),
    "demo": ("demo", "run the whole product end to end on a small synthetic dataset"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cityseg",
        description="Fast, measurable semantic segmentation on Cityscapes: data, loaders, training, benchmarks, reports.",
        epilog="Run `cityseg COMMAND --help` for a command's options. Sizes are always HxW (e.g. 512x1024).",
    )
    parser.add_argument("--version", action="version", version=f"cityseg_fast {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        mod = importlib.import_module(f"cityseg_fast.commands.{module}")
        p = sub.add_parser(
            name,
            help=help_text,
            description=(mod.__doc__ or help_text).strip(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        mod.add_arguments(p)
        p.set_defaults(func=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"cityseg {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"cityseg {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
