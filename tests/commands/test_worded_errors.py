"""A library refusal names the inputs it is about as `{name}` fields (safeio.Worded): a caller of the
library reads its own names (str), a user of a command reads the flags (cli.one_line), from one text."""

import argparse
import ast
import importlib
import pickle
import re
from pathlib import Path

import pytest

import cli
import pipeline
import safeio
from tests.test_layering import PROJECT, ROOT, is_command

# the commands that word the library's refusals
COMMANDS = ("run_sample", "evaluation.generate", "evaluation.metrics", "evaluation.prompts",
            "evaluation.table", "solvers.search.__main__")  # fmt: skip
FIELD = re.compile(r"(?<!\{)\{([a-z_][a-z0-9_]*)(?:[:!][^{}]*)?\}")


def test_a_refusal_reads_the_library_names_and_the_commands_flags():
    err = safeio.InputError("{batch_size} {value} is too large; lower {batch_size}", value=80)
    assert str(err) == "batch_size 80 is too large; lower batch_size"
    assert cli.one_line(err) == "--batch-size 80 is too large; lower --batch-size"
    assert err.inputs() == ["batch_size"]


def test_values_given_are_set_in_as_they_are_never_read_as_fields():
    err = safeio.InputError("cannot read {prompts} {path}", path="{prompts}/{0}.txt")
    assert str(err) == "cannot read prompts {prompts}/{0}.txt"
    assert cli.one_line(err) == "cannot read --prompts {prompts}/{0}.txt"


def test_a_worded_refusal_keeps_its_fields_through_pickling():
    # a shard's refusal crosses a process boundary; the command still words it with flags
    err = pickle.loads(pickle.dumps(safeio.NoRoom("{out} {folder} is full", folder="/x")))
    assert isinstance(err, OSError) and cli.one_line(err) == "--out /x is full"


def test_the_device_refusal_names_the_flag_only_through_a_command():
    with pytest.raises(ValueError) as refused:
        pipeline.parse_device("tpu")
    assert str(refused.value).startswith("device tpu is not a torch device")
    assert cli.one_line(refused.value).startswith("--device tpu is not a torch device")


def _flags() -> set[str]:
    """Every option string of every command of the project (subcommands included)."""
    flags, parsers = set(), [importlib.import_module(name).build_parser() for name in COMMANDS]
    while parsers:
        for action in parsers.pop()._actions:
            flags |= set(action.option_strings)
            if isinstance(action, argparse._SubParsersAction):
                parsers += list(action.choices.values())
    return flags


def _worded_classes() -> set[str]:
    for module in ("pipeline", "evaluation.fid", "solvers.search"):
        importlib.import_module(module)
    found, todo = set(), [safeio.Worded]
    while todo:
        cls = todo.pop()
        found.add(cls.__name__)
        todo += cls.__subclasses__()
    return found


def _fields_of_refusals(path: Path, classes: set[str]) -> list[tuple[str, str]]:
    """(where, field) for each input field in the texts of the refusals `path` builds."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        func = getattr(node, "func", None)
        name = getattr(func, "id", None) or getattr(func, "attr", None)
        if not isinstance(node, ast.Call) or name not in classes or not node.args:
            continue
        given = {keyword.arg for keyword in node.keywords}
        for part in ast.walk(node.args[0]):
            if isinstance(part, ast.Constant) and isinstance(part.value, str):
                found += [(f"{path.relative_to(ROOT)}:{node.lineno}", field)
                          for field in FIELD.findall(part.value) if field not in given]  # fmt: skip
    return found


def test_every_input_a_library_refusal_names_is_a_flag_of_a_command():
    classes, flags = _worded_classes(), _flags()
    library = [p for package in sorted(PROJECT - {"cli"}) for p in sorted((ROOT / package).rglob("*.py"))]
    fields = [item for path in library if not is_command(path) for item in _fields_of_refusals(path, classes)]
    assert len(fields) > 40  # the scan finds the refusals (it read none if the classes were renamed)
    unknown = [f"{where} {{{field}}}" for where, field in fields if cli.flag(field) not in flags]
    assert not unknown, f"fields that name no flag of any command: {', '.join(unknown)}"
