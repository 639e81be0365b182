"""The `dype` command line: `dype plan`, `dype generate`, `dype invokeai ...`."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from dype import __version__

# Each module exposes register(subparsers); heavy imports happen inside the commands, not here.
SUBCOMMAND_MODULES = ("dype.cli.plan", "dype.cli.generate", "dype.cli.invokeai")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dype",
        description="DyPE (Dynamic Position Extrapolation) for FLUX: generate 4K+ images with 1024² models.",
    )
    parser.add_argument("--version", action="version", version=f"dype {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ValueError as error:  # bad input: a clear message, no traceback
        print(f"dype {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
