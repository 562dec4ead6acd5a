"""The arrows of DESIGN.md, read off every import statement: commands -> pipeline -> weights -> the
networks; pipeline -> solvers -> schedule; the networks know nothing of solvers, solvers nothing of
networks, and no library module imports a script (run_sample.py) or the tests."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = {"cli", "pipeline", "schedule", "solvers", "model", "vae", "text_encoder", "weights", "evaluation"}
SCRIPTS = {"run_sample", "tests", "benchmarks"}
# package -> the project packages its modules may import (besides itself)
ALLOWED = {
    "schedule": set(),
    "solvers": {"schedule", "cli"},  # cli: only for the `python -m solvers.*` commands
    "model": {"schedule"},
    "vae": set(),
    "text_encoder": set(),
    "weights": {"model", "vae", "text_encoder", "schedule"},
    "pipeline": {"weights", "model", "solvers", "schedule", "vae", "text_encoder"},
    "cli": {"pipeline", "solvers", "schedule", "weights"},
    "evaluation": {"cli", "pipeline", "solvers", "schedule", "weights", "model", "text_encoder"},
}


def imported(path: Path) -> set[str]:
    """The top-level names of every module `path` imports, at any depth of the file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_package_imports_only_the_layers_below_it(package):
    for path in sorted((ROOT / package).rglob("*.py")):
        wrong = (imported(path) & (PROJECT | SCRIPTS)) - ALLOWED[package] - {package}
        assert not wrong, f"{path.relative_to(ROOT)} imports {sorted(wrong)}"


def test_the_cli_parser_module_itself_imports_nothing_of_the_project():
    assert not imported(ROOT / "cli" / "__init__.py") & PROJECT


def test_printing_the_results_table_loads_no_network_code():
    heavy = "('torch', 'pipeline', 'weights')"
    code = f"import sys, evaluation.table; print(sorted(m for m in {heavy} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
