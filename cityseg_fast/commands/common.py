"""Argument helpers shared by commands: config files + `section.key=value` overrides, --data, --json."""

from __future__ import annotations

import argparse

from cityseg_fast.config import Config, load_config


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="YAML",
        help="config file; repeat to layer several (later wins)",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="section.key=value",
        help="config overrides, applied after the files, e.g. train.lr=0.02 data.crop=[256,512]",
    )


def config_from_args(args: argparse.Namespace, extra: list[str] | None = None) -> Config:
    """Resolve --config files, then positional overrides, then `extra` (CLI shortcuts such as --data)."""
    return load_config(args.config, list(args.overrides) + list(extra or []))
