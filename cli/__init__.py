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
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import safeio


class HelpFormatter(argparse.HelpFormatter):
    """argparse's help, wrapped only at spaces and after the "|" between alternatives: a name (a
    preset, a solver, a path) never breaks."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return wrap(text, width)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "\n".join(indent + line for line in wrap(text, width - len(indent)))


def wrap(text: str, width: int) -> list[str]:
    """`text`'s words in lines of at most `width` characters where they fit, broken only at spaces
    and after a "|"; a longer name stays whole on its own line."""
    lines = [""]
    for chunk in re.split(r"(?<= )|(?<=\|)", " ".join(text.split())):
        if lines[-1] and len(lines[-1] + chunk.rstrip()) > width:
            lines.append("")
        lines[-1] += chunk
    return [line.rstrip() for line in lines if line.strip()]


class Parser(argparse.ArgumentParser):
    """argparse whose refusals are one line with exit status 2 (subcommands inherit it) and whose help
    never breaks a name (`HelpFormatter`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        if message.startswith("unrecognized arguments: "):
            flags = [word.split("=")[0] for word in message.split()[2:] if word.startswith("--")]
            mean = safeio.did_you_mean(flags[0], self._option_string_actions) if flags else ""
            message += f"; {mean.strip()}" if mean else ""
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
        raise argparse.ArgumentTypeError(one_line(err)) from None


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


def one_of(
    names: Sequence[str] | Callable[[], Sequence[str]],
    what: str,
    aliases: Mapping[str, str] | Callable[[], Mapping[str, str]] | None = None,
) -> Callable[[str], str]:
    """An argparse type with a message that names the closest valid names and lists them all (the same
    on every Python). `names` may be a function, read when the flag is parsed, for tables that grow
    (the solver table); `aliases` (or a function giving them) maps other spellings, matched ignoring
    case, to names: A1111's solver names, "fp16" for float16."""

    def check(text: str) -> str:
        valid = list(names() if callable(names) else names)
        if text in valid:
            return text
        other = dict(aliases() if callable(aliases) else aliases or {})
        spellings = {k.casefold(): v for k, v in other.items()}
        if text.casefold() in spellings:
            return spellings[text.casefold()]
        raise argparse.ArgumentTypeError(safeio.unknown(what, text, valid, names=[*valid, *other]))

    return check


def count(n: int, noun: str, nouns: str | None = None) -> str:
    """ "1 image", "4 images" (`nouns`: an irregular plural, "trajectories")."""
    return f"{n} {noun if n == 1 else nouns or noun + 's'}"


def span(names: Sequence[object]) -> str:
    """The files a run wrote (one or more), as people read them: the one, or the first and the last."""
    return str(names[0]) if len(names) == 1 else f"{names[0]} ... {names[-1]}"


def flag(name: str) -> str:
    """The flag of the input the library calls `name`: batch_size is --batch-size."""
    return "--" + name.replace("_", "-")


def one_line(err: BaseException) -> str:
    """An error as one line: a refusal with the inputs it names called by their flags
    (`safeio.Worded`), a system OSError as "file: reason" (as Unix tools write it), anything else as
    its text with newlines folded."""
    if isinstance(err, safeio.Worded):
        return " ".join(err.worded(flag).split())
    if isinstance(err, OSError) and err.strerror and err.filename:
        return f"{err.filename}: {err.strerror}"
    return safeio.reason(err)


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
