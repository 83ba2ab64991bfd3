"""The `latentdiff` command: each subcommand module registers its parsers and plain functions.

A subcommand module exposes `register(subparsers)`, which adds its parsers and sets
`func=<plain function taking the parsed args>` on each.
"""

from __future__ import annotations

import argparse
import sys

from latentdiff.errors import UsageError

# Subcommand modules, imported lazily in `build_parser` so `latentdiff --help` stays fast.
SUBCOMMAND_MODULES = ("world", "evaluate", "generate", "train")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(
        prog="latentdiff", description="Stable Diffusion in readable Python."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(f"latentdiff.cli.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"latentdiff.cli.{name}":
                raise
            continue  # a subcommand that is not built yet
        module.register(subparsers)
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
