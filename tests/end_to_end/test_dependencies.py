"""Every package the code imports is declared in pyproject.toml (issue 18).

A user's fresh virtualenv holds the declared packages and nothing else, so an import that only
works because the developer's machine happened to have a package (scipy, once) is a crash for the
user. This is checked statically: every ``import`` statement of every module, at module level and
inside functions alike (a function-level import fails just the same, only later), must name the
standard library, samadapt itself, or a declared distribution:

- ``samadapt/``: ``[project] dependencies``, or an optional extra when the import sits in that
  extra's code (:data:`EXTRA_HOMES`) inside a function, so that ``import samadapt`` works without it;
- ``recipes/``, ``benchmarks/``, ``tests/`` (run from a clone with ``pip install -e ".[dev]"``, as
  the README's test command does): the dependencies and every extra, plus their sibling scripts.

``.ci/run`` installs into a virtualenv without system site-packages, so a miss also fails CI.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "samadapt"
#: import name -> distribution name, where they differ (else the import name is the distribution's)
DISTRIBUTION_OF = {
    "PIL": "pillow",
    "yaml": "pyyaml",
    "segment_anything": "segment-anything",
    "sklearn": "scikit-learn",
    "cv2": "opencv-python",
    "skimage": "scikit-image",
    "google.protobuf": "protobuf",
}
#: optional extra -> the folders / modules of samadapt whose functions may import its packages
EXTRA_HOMES = {
    "export": ("samadapt/exporters/",),
    "sam2": ("samadapt/models/sam2_family/", "samadapt/exporters/sam2_"),
}
#: extras that are tools of a clone (tests, lint), never imported by samadapt
CLONE_EXTRAS = ("dev",)
#: packages a benchmark installs into a virtualenv of its own (pinned there, never in ours):
#: distribution -> (the file that imports it, the file that pins it)
OWN_ENVIRONMENTS = {"micro-sam": ("benchmarks/_peer_jobs.py", "benchmarks/_peer_inputs.py")}


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them (``Segment_Anything`` == ``segment-anything``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    """``"ruff==0.17.6"`` -> ``"ruff"``; ``"samadapt[export]"`` -> ``"samadapt[export]"``."""
    return re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*(\[[^\]]*\])?)", requirement).group(1)


def declared(pyproject: Path = REPO / "pyproject.toml") -> tuple[set[str], dict[str, set[str]]]:
    """(normalised distribution names of ``dependencies``, extra -> its distribution names), with
    ``samadapt[extra]`` inside an extra expanded."""
    project = tomllib.loads(pyproject.read_text())["project"]
    base = {normalize(requirement_name(r)) for r in project.get("dependencies", [])}
    raw = {
        extra: [requirement_name(r) for r in reqs] for extra, reqs in project.get("optional-dependencies", {}).items()
    }

    def expand(extra: str, seen: frozenset = frozenset()) -> set[str]:
        out: set[str] = set()
        for name in raw[extra]:
            m = re.fullmatch(r"(.+)\[(.+)\]", name)
            if m and normalize(m.group(1)) == PACKAGE:
                out |= set().union(*(expand(e.strip(), seen | {extra}) for e in m.group(2).split(",") if e not in seen))
            else:
                out.add(normalize(name))
        return out

    return base, {extra: expand(extra) for extra in raw}


def imports(path: Path) -> list[tuple[int, str, bool]]:
    """(line, top-level module name, inside a function) of every absolute import of a file; an
    ``if TYPE_CHECKING:`` block counts as inside a function (it never runs)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            inner = inner or (isinstance(child, ast.If) and ast.unparse(child.test).endswith("TYPE_CHECKING"))
            if isinstance(child, ast.Import):
                found.extend((child.lineno, alias.name, in_function) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                found.append((child.lineno, child.module, in_function))
            visit(child, inner)

    visit(tree, False)
    return found


def distribution(module: str) -> str:
    for name in (module, module.split(".")[0]):
        if name in DISTRIBUTION_OF:
            return normalize(DISTRIBUTION_OF[name])
    return normalize(module.split(".")[0])


def undeclared(root: Path = REPO, *, folders=("samadapt", "recipes", "benchmarks", "tests")) -> list[str]:
    """One line per import that no declaration covers: ``path:line: import X (distribution Y): why``."""
    base, extras = declared(root / "pyproject.toml")
    every_extra = set().union(*extras.values()) if extras else set()
    local = {p.stem for folder in ("recipes", "benchmarks", "tests") for p in (root / folder).rglob("*.py")}
    problems = []
    for folder in folders:
        for path in sorted((root / folder).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            for line, module, in_function in imports(path):
                top = module.split(".")[0]
                if top in sys.stdlib_module_names or top in ("__future__", PACKAGE):
                    continue
                dist = distribution(module)
                if dist in base:
                    continue
                where = f"{rel}:{line}: import {module} (distribution {dist!r})"
                if folder != PACKAGE:
                    own = OWN_ENVIRONMENTS.get(dist)
                    if own and rel == own[0] and f'"{dist}==' in (root / own[1]).read_text():
                        continue  # runs in the benchmark's own environment, which pins it
                    if dist not in every_extra and top not in local:
                        problems.append(f"{where}: not in [project] dependencies nor any optional extra")
                    continue
                homes = [
                    e
                    for e, names in extras.items()
                    if dist in names
                    and e not in CLONE_EXTRAS
                    and any(rel.startswith(h) for h in EXTRA_HOMES.get(e, ()))
                ]
                if not homes:
                    problems.append(
                        f"{where}: not in [project] dependencies"
                        + (
                            f" (only in the extra(s) {sorted(e for e, n in extras.items() if dist in n)}, whose code "
                            f"is {EXTRA_HOMES})"
                            if dist in every_extra
                            else ""
                        )
                    )
                elif not in_function:
                    problems.append(f"{where}: extra {homes[0]!r} imported at module level; import it in the function")
    return problems


def test_every_import_is_a_declared_dependency():
    problems = undeclared()
    assert not problems, "imports of undeclared packages (declare them in pyproject.toml):\n" + "\n".join(problems)


def test_the_check_sees_function_level_imports_and_extras(tmp_path):
    """The check itself: a function-level import of an undeclared package, an extra's package
    outside its code or at module level, and a mapped name (PIL -> pillow) are each judged right."""
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "samadapt"\ndependencies = ["pillow>=9", "PyYAML"]\n'
        '[project.optional-dependencies]\nexport = ["onnx"]\ndev = ["pytest", "samadapt[export]"]\n'
    )
    pkg = tmp_path / "samadapt"
    (pkg / "exporters").mkdir(parents=True)
    for folder in ("recipes", "benchmarks", "tests"):
        (tmp_path / folder).mkdir()
    (pkg / "a.py").write_text(
        "import os\nfrom PIL import Image\nimport yaml\nfrom . import b\n\ndef f():\n    from scipy.ndimage import label\n"
    )
    (pkg / "exporters" / "x.py").write_text("import onnx\n\ndef g():\n    import onnx\n")
    (pkg / "c.py").write_text("def h():\n    import onnx\n")
    (tmp_path / "tests" / "test_t.py").write_text("import pytest\nimport onnx\nimport test_t\nimport psutil\n")
    problems = undeclared(tmp_path)
    assert len(problems) == 4, problems
    text = "\n".join(problems)
    assert "samadapt/a.py:7: import scipy.ndimage (distribution 'scipy')" in text
    assert "samadapt/c.py:2: import onnx" in text and "only in the extra(s) ['dev', 'export']" in text
    assert "samadapt/exporters/x.py:1: import onnx" in text and "module level" in text
    assert "tests/test_t.py:4: import psutil" in text
