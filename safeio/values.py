"""The checks of values that a flag and a file may both give: one function per kind of value, which
the argparse types (cli/) call on the parsed text and the file readers on the JSON value."""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable
from typing import Any

SEED_LIMIT = 2**63  # seeds are torch.Generator seeds: int64, and never negative here
# Python decodes bytes that are not UTF-8 (in argv, in file names) to lone surrogates, and JSON's \u
# escapes can spell them; no encoder, file or PNG chunk can hold them.
_SURROGATE = re.compile("[\ud800-\udfff]")


def short(value: Any, limit: int = 40) -> str:
    """`value` as repr, cut to `limit` characters, so a 5000-digit number or a huge string still fits
    one readable line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def unknown(
    what: str, text: Any, valid: Iterable[str], where: str = "", names: Iterable[str] | None = None
) -> str:
    """The one line refusing a name that is not one of `valid` (`where`: " at step 5"): the closest
    of `names` (default: `valid`; a table of patterns spells its names out) first, as "did you mean",
    then every valid one."""
    valid = list(valid)
    mean = did_you_mean(text, valid if names is None else names)
    return f"unknown {what} {short(text)}{where}; {mean}choose from {', '.join(valid)}"


def did_you_mean(text: Any, names: Iterable[str]) -> str:
    """ "did you mean X? " naming the (at most 3) of `names` closest to `text`, or "" if none is close."""
    close = difflib.get_close_matches(text, list(names), n=3, cutoff=0.6) if isinstance(text, str) else []
    said = [repr(name) if " " in name else name for name in close]
    return f"did you mean {' or '.join(said)}? " if close else ""


def unicode_problem(text: str) -> str | None:
    """Why `text` is not valid Unicode (a lone surrogate, as bytes that are not UTF-8 become), or None."""
    found = None if text.isascii() else _SURROGATE.search(text)
    if found is None:
        return None
    return (
        f"not valid Unicode (character {found.start() + 1} is U+{ord(found.group()):04X}, a lone "
        "surrogate: bytes that are not UTF-8); write it in UTF-8"
    )


def text(value: Any) -> str:
    """`value` if it is a string of valid Unicode; else ValueError."""
    if not isinstance(value, str):
        raise ValueError(f"must be text, got {short(value)}")
    problem = unicode_problem(value)
    if problem:
        raise ValueError(f"is {problem}")
    return value


def integer(value: Any, low: int | None = None, high: int | None = None) -> int:
    """`value` if it is an integer (not a bool, not a float) in [low, high]; else ValueError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"must be an integer, got {short(value)}")
    if (low is not None and value < low) or (high is not None and value > high):
        if high is None:
            wanted = f"{low} or more"
        elif low is None:
            wanted = f"at most {high}"
        else:
            wanted = f"an integer in [{low}, {high}]"
        raise ValueError(f"must be {wanted}, got {short(value)}")
    return value


def number(value: Any, low: float | None = None, *, strict: bool = False) -> float:
    """`value` as a float if it is a finite number (not a bool) >= low (> low when `strict`)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"must be a number, got {short(value)}")
    try:
        value = float(value)
    except OverflowError:
        raise ValueError(f"must be a finite number, got {short(value)}") from None
    if not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {value}")
    if low is not None and (value <= low if strict else value < low):
        raise ValueError(f"must be {'>' if strict else '>='} {low:g}, got {value:g}")
    return value


def seed(value: Any) -> int:
    """A seed: an integer in [0, 2^63)."""
    try:
        return integer(value, 0, SEED_LIMIT - 1)
    except ValueError:
        raise ValueError(f"must be an integer in [0, 2^63), got {short(value)}") from None
