"""The one argument parser and one-line error style of every command of the project.

    parser = cli.Parser(prog="python -m solvers.analyze", description=...)
    parser.add_argument("--samples", type=cli.positive_int, default=256)
    ...
    return cli.run(parser.prog, work, args, errors=(ValueError,))

A refusal, by argparse or by the work itself, is one line `{prog}: error: {what, where, what to do}`
on stderr with exit status 2; `--debug` shows the traceback instead. Ctrl-C and SIGTERM end with one
line (a command may say there what it wrote and how to resume: `Interrupted`) and status 130. The
value checks are safeio's, which file readers call too, so a flag and a file refuse the same values.
This module imports nothing of the project but safeio, so every layer's commands can use it.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import safeio


class Parser(argparse.ArgumentParser):
    """argparse whose refusals are one line with exit status 2 (subcommands inherit it)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:  # also a number of more than 4300 digits
        raise argparse.ArgumentTypeError(f"{safeio.short(text)} is not an integer") from None


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{safeio.short(text)} is not a number") from None


def _checked(check: Callable[[Any], Any], value: Any) -> Any:
    try:
        return check(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def positive_int(text: str) -> int:
    return _checked(lambda v: safeio.integer(v, 1), _integer(text))


def nonnegative_int(text: str) -> int:
    return _checked(lambda v: safeio.integer(v, 0), _integer(text))


def seed(text: str) -> int:
    return _checked(safeio.seed, _integer(text))


def finite_float(text: str) -> float:
    return _checked(safeio.number, _number(text))


def nonnegative_float(text: str) -> float:
    return _checked(lambda v: safeio.number(v, 0), _number(text))


def positive_float(text: str) -> float:
    return _checked(lambda v: safeio.number(v, 0, strict=True), _number(text))


def text(value: str) -> str:
    """Text that is valid Unicode: argv holds bytes that are not UTF-8 as lone surrogates, which no
    tokenizer, file or PNG chunk can take, so they are refused here, naming the flag."""
    return _checked(safeio.text, value)


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


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM, with the command's one line: what it wrote and how to resume."""


@contextlib.contextmanager
def reporting_stops(folder: object, written: Callable[[], str], rest: Callable[[], str]) -> Iterator[None]:
    """A run that writes files into `folder`, stopped by Ctrl-C, SIGTERM or a full disk: one line with
    what it `written()` and how to make the `rest()`, as `Interrupted` (exit 130) or as the OSError."""
    try:
        yield
    except KeyboardInterrupt:
        raise Interrupted(f"{written()}; {rest()}") from None
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        raise OSError(
            f"{err.filename or folder}: No space left on device; {written()}; free space, then {rest()}"
        ) from None


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a scheduler's kill, `timeout`) raises KeyboardInterrupt like Ctrl-C, so the same
    cleanup runs (temporary files removed) and the same line is printed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(
    prog: str,
    work: Callable[[argparse.Namespace], Any],
    args: argparse.Namespace,
    errors: tuple[type[BaseException], ...] = (ValueError, OSError),
) -> int:
    """`work(args)`, turned into an exit status: 0; 2 with one line for any of `errors` (a traceback
    under `args.debug`); 130 with one line for Ctrl-C or SIGTERM (`Interrupted`'s text if it says more)."""
    try:
        with _sigterm_as_interrupt():
            work(args)
    except errors as err:
        if getattr(args, "debug", False):
            raise
        print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        if getattr(args, "debug", False):
            raise
        said = one_line(interrupt) if isinstance(interrupt, Interrupted) and interrupt.args else ""
        print(f"{prog}: interrupted{'; ' + said if said else ''}", file=sys.stderr)
        return 130
    return 0
