"""JSON from outside files, bounded: Python's decoder recurses once per nesting level (200,000 nested
brackets raise RecursionError) and refuses integers of more than 4300 digits with ValueError; both,
any nesting deeper than MAX_DEPTH, and any string that is not valid Unicode (a \\u escape of a lone
surrogate, which no file or PNG chunk can hold), become the caller's one-line error naming the file."""

from __future__ import annotations

import json
import os
from typing import Any

from safeio.files import read_bytes
from safeio.values import unicode_problem

# Deeper than any file the project reads (a plan's FreeU option is 3 levels, a COCO file 3, a
# safetensors header 3); code that walks a parsed value recursively stays far from Python's limit.
MAX_DEPTH = 32


def _problem(value: Any, limit: int) -> str | None:
    """Why `value` cannot be used: it nests lists and objects more than `limit` levels deep, or a key
    or string of it is not valid Unicode (\\u escapes of lone surrogates); else None. Iterative."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            problem = unicode_problem(item)
            if problem:
                return f"a string is {problem}"
        elif isinstance(item, (list, dict)):
            if depth > limit:
                return f"nested more than {limit} levels deep"
            stack.extend((key, depth) for key in item if isinstance(item, dict))
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children if isinstance(child, (str, list, dict)))
    return None


class JSONProblem(ValueError):
    """Why a text is not JSON the project reads; `reason` without a file name."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def decode(text: str | bytes, *, depth: int = MAX_DEPTH) -> Any:
    """`text` decoded, or JSONProblem saying why not."""
    try:
        value = json.loads(text)
    except RecursionError:
        reason = "nested too deeply"
    except UnicodeDecodeError as err:
        reason = f"not UTF-8: {err.reason} at byte {err.start}"
    except ValueError as err:  # JSONDecodeError, and integers beyond sys.get_int_max_str_digits()
        reason = " ".join(str(err).split())
        if "integer string conversion" in reason:
            reason = "it holds an integer with too many digits"
    else:
        problem = _problem(value, depth)
        if problem is None:
            return value
        reason = problem
    raise JSONProblem(reason)


def parse_json(text: str | bytes, where: str, fix: str, error: type[Exception] = ValueError) -> Any:
    """`text` decoded, or `error("{where} is not valid JSON (...); {fix}")`."""
    try:
        return decode(text)
    except JSONProblem as problem:
        raise error(f"{where} is not valid JSON ({problem.reason}); {fix}") from None


def read_json(
    path: str | os.PathLike, fix: str, error: type[Exception] = ValueError, *, what: str = ""
) -> Any:
    """The JSON value of the file at `path` (`what` names it in messages, e.g. "the manifest")."""
    where = f"{what} {path}".strip()
    try:
        text = read_bytes(path)
    except OSError as err:
        raise error(f"cannot read {where}: {err.strerror or err}; {fix}") from None
    return parse_json(text, where, fix, error)
