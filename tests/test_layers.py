"""The package's floors (pyproject.toml's import-linter ``layers`` contract) hold, the README states
the same order, and every function in ``samadapt/`` reads in one sitting (at most 80 lines)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
MAX_FUNCTION_LINES = 80


def _contract() -> dict:
    (contract,) = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    return contract


def test_import_linter_layers_contract_holds():
    """``lint-imports`` sees function-level imports too; the contract lists every top-level module
    (``exhaustive``), so a new subpackage must be given a floor."""
    contract = _contract()
    assert contract["type"] == "layers" and contract.get("exhaustive") is True
    assert "ignore_imports" not in contract  # no exceptions
    lint = Path(sys.executable).with_name("lint-imports")
    run = subprocess.run([str(lint), "--no-cache"], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "1 kept, 0 broken" in run.stdout


def test_every_top_level_module_has_a_floor():
    floors = {name.strip() for layer in _contract()["layers"] for name in layer.split("|")}
    package = REPO / "samadapt"
    modules = {p.stem for p in package.glob("*.py") if p.stem != "__init__"}
    modules |= {p.parent.name for p in package.glob("*/__init__.py")}
    assert modules == floors


def test_readme_states_the_same_floors():
    """README.md's Layout section gives the floors top to bottom, ``a / b`` for one floor."""
    readme = (REPO / "README.md").read_text()
    line = re.search(r"^Floors, top to bottom: (.+)$", readme, re.M)
    assert line, "README.md's Layout section should have a line 'Floors, top to bottom: ...'"
    stated = [sorted(n.strip(" `") for n in floor.split("/")) for floor in line.group(1).rstrip(".").split(" > ")]
    declared = [sorted(n.strip() for n in layer.split("|")) for layer in _contract()["layers"]]
    assert stated == declared


def test_no_function_in_samadapt_is_longer_than_80_lines():
    long = []
    for path in sorted((REPO / "samadapt").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "split these into named steps:\n" + "\n".join(long)
