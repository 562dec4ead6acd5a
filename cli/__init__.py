"""The one argument parser and one-line error style of every command of the project.

    parser = cli.Parser(prog="python -m solvers.analyze", description=...)
    parser.add_argument("--samples", type=cli.positive_int, default=256)
    ...
    return cli.run(parser.prog, work, args, errors=(ValueError,))

A refusal, by argparse or by the work itself, is one line `{prog}: error: {what, where, what to do}`
on stderr with exit status 2; `--debug` shows the traceback instead. Ctrl-C ends with one line and
status 130. This module imports nothing of the project, so every layer's commands can use it.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any


class Parser(argparse.ArgumentParser):
    """argparse whose refusals are one line with exit status 2 (subcommands inherit it)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def positive_int(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def nonnegative_int(text: str) -> int:
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def seed(text: str) -> int:
    value = _integer(text)
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2^63), got {value}")
    return value


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def nonnegative_float(text: str) -> float:
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def one_of(names: Sequence[str] | Callable[[], Sequence[str]], what: str) -> Callable[[str], str]:
    """An argparse type with a message that lists the valid names (the same on every Python). `names`
    may be a function, read when the flag is parsed, for tables that grow (the solver table)."""

    def check(text: str) -> str:
        valid = list(names() if callable(names) else names)
        if text not in valid:
            raise argparse.ArgumentTypeError(f"unknown {what} {text!r}; choose from {', '.join(valid)}")
        return text

    return check


def one_line(err: BaseException) -> str:
    """An error as one line: a system OSError as "file: reason" (as Unix tools write it), anything else
    as its text with newlines folded."""
    if isinstance(err, OSError) and err.strerror:
        return f"{err.filename}: {err.strerror}" if err.filename else err.strerror
    return " ".join(str(err).split()) or type(err).__name__


def run(
    prog: str,
    work: Callable[[argparse.Namespace], Any],
    args: argparse.Namespace,
    errors: tuple[type[BaseException], ...] = (ValueError, OSError),
) -> int:
    """`work(args)`, turned into an exit status: 0; 2 with one line for any of `errors` (a traceback
    under `args.debug`); 130 with one line for Ctrl-C."""
    try:
        work(args)
    except errors as err:
        if getattr(args, "debug", False):
            raise
        print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if getattr(args, "debug", False):
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return 0
