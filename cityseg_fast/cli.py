"""`cityseg <command>`: argument parsing and error handling; each command is a thin call into the package.

Command modules live in `cityseg_fast/commands/` and define `add_arguments(parser)` and `run(args) -> int`.

The import rule, stated once: a module imports the package's own modules, the standard library and the
light third-party packages (numpy, PIL, yaml, rich) at its top. Only the heavy ones are imported inside
the function that needs them: DALI (imported in `cityseg_fast/data/dali/` only), matplotlib, torchvision,
pynvml, and torch in the modules that commands without a model load (report, synth, prepare). Start-up
stays fast because this file imports only the command being run (`cityseg --help` imports none).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from cityseg_fast import __version__
from cityseg_fast.diskio import disk_full_cause, disk_full_error
from cityseg_fast.errors import Preempted, UserError

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


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with `command`, only that command's module is imported and given its options (every
    command is still listed in `cityseg --help`, from the table above)."""
    parser = argparse.ArgumentParser(
        prog="cityseg",
        description="Fast, measurable semantic segmentation on Cityscapes: data, loaders, training, benchmarks, reports.",
        epilog="Run `cityseg COMMAND --help` for a command's options. Sizes are always HxW (e.g. 512x1024).",
    )
    parser.add_argument("--version", action="version", version=f"cityseg_fast {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        if command is not None and name != command:
            sub.add_parser(name, help=help_text)
            continue
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


def _command_of(argv: Sequence[str]) -> str | None:
    """The command named on the command line (the first word that is not an option), if it is one."""
    first = next((a for a in argv if not a.startswith("-")), None)
    return first if first in COMMANDS else None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _command_of(argv)
    parser = build_parser(command) if command is not None else _listing_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"cityseg {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except Preempted as e:  # SIGTERM / SIGUSR1 after saving: not an error, a job script requeues on the status
        print(f"cityseg {args.command}: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"cityseg {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a full disk no writer turned into a UserError: still one line, not a traceback
        full = disk_full_cause(e)
        if full is None:
            raise
        err = disk_full_error(full.filename, full)
        print(f"cityseg {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code


def _listing_parser() -> argparse.ArgumentParser:
    """No command named: every command listed, none imported (`cityseg --help`, a typo's error)."""
    return build_parser(command="")


if __name__ == "__main__":
    raise SystemExit(main())
