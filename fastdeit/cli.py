"""The `fastdeit` command line: `fastdeit {demo,bench,predict,embed,export} ...` (`fastdeit CMD --help`)."""

from __future__ import annotations

import argparse
import importlib
import sys

from fastdeit._version import __version__
from fastdeit.commands import COMMANDS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastdeit", description="Fast DeiT: models, benchmarks, inference.")
    parser.add_argument("--version", action="version", version=f"fastdeit {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"fastdeit.commands.{name}")
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, TypeError) as e:
        # Errors a user can cause are reported in one line, not as a traceback.
        print(f"fastdeit {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
