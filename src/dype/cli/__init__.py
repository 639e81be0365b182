"""The `dype` command line: `dype plan`, `dype generate`, `dype invokeai ...`.

Exit codes, the same in every subcommand:

* 0: done.
* 1: the run failed for a reason other than the arguments: an unusable model folder, a missing optional
  dependency, out of memory, a file that could not be written (`CommandError`, `MissingExtraError`, OSError).
* 2: bad input: argparse's own usage errors and every ValueError (a value out of range, an output path
  that cannot be written, a device this machine does not have).

Either way the message is one line on stderr, `dype COMMAND: error: ...`, never a traceback. Nothing here
imports torch: `dype --version` and every `--help` stay instant; commands import what they need.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from dype import __version__
from dype.extras import MissingExtraError

# Each module exposes register(subparsers); heavy imports happen inside the commands, not here.
SUBCOMMAND_MODULES = ("dype.cli.plan", "dype.cli.generate", "dype.cli.invokeai")

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2  # argparse's own code for usage errors


class CommandError(Exception):
    """A command failed for a reason other than its arguments; `main` prints it and exits 1."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dype",
        description="DyPE (Dynamic Position Extrapolation) for FLUX: generate 4K+ images with 1024² models.",
        epilog="exit status: 0 done; 1 the run failed (model folder, missing extra, out of memory, writing a "
        "file); 2 bad arguments. Errors are one line on stderr.",
    )
    parser.add_argument("--version", action="version", version=f"dype {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def _report(command: str, error: BaseException, code: int) -> int:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    message = " ".join(lines) or type(error).__name__  # one line, whatever the error held
    print(f"dype {command}: error: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run `dype ARGV` (default: the process's arguments) and return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return EXIT_BAD_INPUT
    try:
        return int(args.func(args) or 0)
    except ValueError as error:
        return _report(args.command, error, EXIT_BAD_INPUT)
    except (CommandError, MissingExtraError, OSError) as error:
        return _report(args.command, error, EXIT_FAILED)


if __name__ == "__main__":
    sys.exit(main())
