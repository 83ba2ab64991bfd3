"""The `latentdiff` command: each subcommand module registers its parsers and plain functions.

A subcommand module exposes `register(subparsers)`, which adds its parsers and sets
`func=<plain function taking the parsed args>` on each.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from latentdiff.errors import UsageError

# Each module keeps torch out of its top-level imports, so parsing (and `--help`) stays fast.
SUBCOMMAND_MODULES = ("world", "evaluate", "generate", "train", "checkpoints")


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage block) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = ArgumentParser(prog="latentdiff", description="Stable Diffusion in readable Python.")
    # Nested sub-parsers inherit the class, so every subcommand reports errors in one line.
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(f"latentdiff.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except UsageError as error:
        print(f"latentdiff {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("latentdiff: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
