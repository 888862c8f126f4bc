"""The `fastdeit` command line: `fastdeit {demo,bench,predict,embed,export} ...` (`fastdeit CMD --help`).

Errors a user can cause (a bad argument, path, checkpoint or file: ValueError and the file-system errors below)
end the command with one line `fastdeit CMD: error: ...` and exit status 2; any other exception is a bug and keeps
its traceback. When the reader of stdout goes away early (`fastdeit predict ... | head`), the command stops quietly
with exit status 141, as a command killed by SIGPIPE does: a script under `set -o pipefail` can tell an output cut
short from a complete one. fastdeit's log messages at INFO and above (e.g. which checkpoint of a run folder was
loaded) and warnings go to stderr as one line each, `fastdeit CMD: ...`; a warning's message is shown once however
often it is raised.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import logging
import os
import sys
import warnings
from collections.abc import Iterator

from fastdeit._version import __version__
from fastdeit.commands import COMMANDS

USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)
SIGPIPE_EXIT = 128 + 13  # a shell's status for a command killed by SIGPIPE


def _command_in(argv: list[str]) -> str | None:
    """The sub-command `argv` names: its first argument that is not an option (the top-level options take no
    value)."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser, with the full options of `command` only: the other commands are listed by name and help line,
    without importing their modules."""
    parser = argparse.ArgumentParser(prog="fastdeit", description="Fast DeiT: models, benchmarks, inference.")
    parser.add_argument("--version", action="version", version=f"fastdeit {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_line in COMMANDS.items():
        if name == command:
            importlib.import_module(f"fastdeit.commands.{name}").add_parser(subparsers)
        else:
            subparsers.add_parser(name, help=help_line)
    return parser


@contextlib.contextmanager
def _report_to_stderr(command: str) -> Iterator[None]:
    """While `command` runs: fastdeit's log messages at INFO and above, and warnings (each message once), on
    stderr, one line each."""
    logger = logging.getLogger("fastdeit")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"fastdeit {command}: %(message)s"))
    level = logger.level
    shown: set[str] = set()

    def show_warning(message: Warning | str, category: type[Warning], *args: object, **kwargs: object) -> None:
        if issubclass(category, DeprecationWarning | FutureWarning):
            return  # libraries' notices to programmers, not about what the user asked for
        if str(message) not in shown:
            shown.add(str(message))
            print(f"fastdeit {command}: warning: {message}", file=sys.stderr)

    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = show_warning
            yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _stdout_closed() -> int:
    """Stdout's reader went away: point stdout at /dev/null, so that the interpreter's last flush of what is still
    buffered does not fail again at exit, and return SIGPIPE's exit status."""
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError, io.UnsupportedOperation):  # a stdout without a file descriptor: nothing to flush
        return SIGPIPE_EXIT
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)
    return SIGPIPE_EXIT


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(_command_in(argv)).parse_args(argv)
    with _report_to_stderr(args.command):
        try:
            code = int(args.func(args) or 0)
            sys.stdout.flush()  # a closed pipe shows here, not at exit where it could not be handled
        except BrokenPipeError:
            return _stdout_closed()
        except USER_ERRORS as e:
            print(f"fastdeit {args.command}: error: {e}", file=sys.stderr)
            return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
