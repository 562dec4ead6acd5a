"""Refusals worded for whoever gave the input: the library names an input as its API does (`device`,
a `Request` field or an argument), a command as its flag (`--device`), from one text.

    raise InputError("{device} {spec} is not available on this machine; use {device} cpu", spec=spec)

str() reads "device cuda:7 is not available ...; use device cpu"; `cli.one_line` reads "--device cuda:7
...; use --device cpu". The keyword values (what was given, numbers) are set in as they are and never
read for fields, so a path or prompt holding braces cannot change the text.
"""

import functools
import string
from collections.abc import Callable


class Worded(Exception):
    """A refusal whose `template` names inputs as `{name}` fields and holds the `given` values."""

    def __init__(self, template: str, **given: object) -> None:
        self.template, self.given = template, given
        super().__init__(self.worded(str))

    def inputs(self) -> list[str]:
        """The names of the inputs the text names (its fields that are not given values)."""
        fields = (field for _, field, _, _ in string.Formatter().parse(self.template) if field)
        return list(dict.fromkeys(f for f in fields if f not in self.given))

    def worded(self, name: Callable[[str], str]) -> str:
        """The text with each input called `name(input)`."""
        return self.template.format_map({**{field: name(field) for field in self.inputs()}, **self.given})

    def __reduce__(self):  # pickled (a shard's error) from its template, not its worded text
        return functools.partial(type(self), self.template, **self.given), ()


class InputError(Worded, ValueError):
    """An input value that is refused: what is wrong with it and what to give instead."""


class NoRoom(Worded, OSError):
    """A folder (given as an input) without room or write access for what a run must write there."""
