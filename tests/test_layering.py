"""The layers of the project, read off every import statement: commands -> pipeline -> weights -> the
networks; pipeline -> solvers -> schedule; the networks know nothing of solvers, solvers nothing of
networks, and no library module imports a script (run_sample.py) or the tests.

A command module (`python -m solvers.X`: a package's `__main__.py`, or a module ending in the
`if __name__ == "__main__":` guard) is a thin layer over the libraries, so inside solvers/ it may also
use the layers above them: the argument parser (cli) and, for real weights, pipeline. No module of the
project imports a `__main__.py` (the tests, scripts themselves, run the commands' `main`)."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = {
    "cli", "pipeline", "schedule", "solvers", "model", "vae", "text_encoder", "weights", "evaluation",
    "safeio",
}  # fmt: skip
SCRIPTS = {"run_sample", "tests", "benchmarks"}
# package -> the project packages its modules may import (besides itself); safeio, which imports nothing
# of the project, is below them all
BOTTOM = {"safeio"}
ALLOWED = {
    "safeio": set(),
    "schedule": set(),
    "solvers": {"schedule"},
    "model": {"schedule"},
    "vae": set(),
    "text_encoder": set(),
    "weights": {"model", "vae", "text_encoder", "schedule"},
    "pipeline": {"weights", "model", "solvers", "schedule", "vae", "text_encoder"},
    "cli": {"pipeline", "solvers", "schedule", "weights"},
    "evaluation": {"cli", "pipeline", "solvers", "schedule", "weights", "model", "text_encoder"},
}
# package -> what its command modules may import besides ALLOWED
COMMAND_LAYERS = {"solvers": {"cli", "pipeline"}, "weights": {"cli"}}
# package -> single modules of another layer its modules may import: the solvers carry FreeU, a
# per-step option the U-Net takes, and check and read it with model.FreeU's one schema (solvers/freeu.py)
MODULES = {"solvers": {"model.freeu"}}


def is_command(path: Path) -> bool:
    """A `python -m` command: a `__main__.py`, or a module with the `__name__ == "__main__"` guard."""
    if path.name == "__main__.py":
        return True
    guard = "__name__ == '__main__'"
    return any(
        isinstance(n, ast.If) and ast.unparse(n.test) == guard for n in ast.parse(path.read_text()).body
    )


def imported_modules(path: Path) -> set[str]:
    """The dotted names of every module `path` imports (absolute imports, at any depth of the file); for
    `from a import b` both a and a.b, as b may be a module."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
    return names


def imported(path: Path) -> set[str]:
    """The top-level names of every module `path` imports, at any depth of the file."""
    return {name.split(".")[0] for name in imported_modules(path)}


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_package_imports_only_the_layers_below_it(package):
    for path in sorted((ROOT / package).rglob("*.py")):
        command = COMMAND_LAYERS.get(package, set()) if is_command(path) else set()
        allowed = ALLOWED[package] | BOTTOM | command
        modules = MODULES.get(package, set())
        names = {
            n for n in imported_modules(path) if not any(n == m or n.startswith(f"{m}.") for m in modules)
        }
        wrong = ({name.split(".")[0] for name in names} & (PROJECT | SCRIPTS)) - allowed - {package}
        assert not wrong, f"{path.relative_to(ROOT)} imports {sorted(wrong)}"


@pytest.mark.parametrize("package", sorted(PROJECT))
def test_no_module_of_the_project_imports_a_command_s_main(package):
    for path in sorted((ROOT / package).rglob("*.py")):
        wrong = [name for name in imported_modules(path) if name.split(".")[-1] == "__main__"]
        assert not wrong, f"{path.relative_to(ROOT)} imports {wrong}"


def test_the_cli_parser_module_itself_imports_nothing_of_the_project_but_the_bottom_layer():
    assert not imported(ROOT / "cli" / "__init__.py") & (PROJECT - BOTTOM)


def test_printing_the_results_table_loads_no_network_code():
    heavy = "('torch', 'pipeline', 'weights')"
    code = f"import sys, evaluation.table; print(sorted(m for m in {heavy} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


FLAG = re.compile(r"(?<![\w-])--[a-z]")


def flags_in_refusals(path: Path) -> list[str]:
    """The lines of `path` whose `raise` words an error with a command-line flag."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Raise) and node.exc is not None:
            texts = [
                n.value
                for n in ast.walk(node.exc)
                if isinstance(n, ast.Constant) and isinstance(n.value, str)
            ]
            if any(FLAG.search(text) for text in texts):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


@pytest.mark.parametrize("package", sorted(PROJECT - {"cli"}))
def test_library_errors_name_inputs_as_fields_and_leave_the_flags_to_the_commands(package):
    # A library refusal names an input as `{name}` (safeio.InputError): str() reads the library's name,
    # a command's cli.one_line its flag, so a caller of the library never reads about flags it did not use.
    found = [
        line
        for path in sorted((ROOT / package).rglob("*.py"))
        if not is_command(path)
        for line in flags_in_refusals(path)
    ]
    assert not found, f"errors that name flags: {', '.join(found)}"
