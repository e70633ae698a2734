"""The command blocks of README.md and docs/training.md run as written.

Every ```bash / ```python block of those pages carries a marker on the line above it:
``<!-- doc-test: run -->`` (run here, in page order, in one working folder and SAMADAPT_HOME, the way
a reader follows the page) or ``<!-- doc-test: skip (reason) -->`` (it needs a GPU, an official
checkpoint or a real dataset's images). Run blocks are run as written except that
- ``python -m pip install ...`` is left out (CI installed the project) and so is ``python -m pytest``
  (it is this test suite);
- training commands (``recipes/finetune.py``, ``samadapt train``) get :data:`TINY` appended, and
  evaluations ``--no-progress --max-images 2``, so the page runs in minutes on a 2-core CPU.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = ("README.md", "docs/training.md")
TINY = [
    "--epochs",
    "1",
    "--demo-train-images",
    "4",
    "--demo-val-images",
    "2",
    "--batch-size",
    "2",
    "--prompts-per-image",
    "2",
    "--no-progress",
    "--log-with",
    "none",
    "--num-examples",
    "1",
]
MARKER = re.compile(r"^<!-- doc-test: (run|skip)( \(.+\))? -->$")  # skip needs its reason
FENCE = re.compile(r"^```(\w+)\s*$")


def blocks(page: str) -> list[tuple[int, str, str | None, str]]:
    """(line, language, marker or None, code) of every fenced block of ``page``."""
    return blocks_of_text((REPO / page).read_text())


def blocks_of_text(text: str) -> list[tuple[int, str, str | None, str]]:
    lines = text.splitlines()
    out, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if m:
            j = i + 1
            while not lines[j].startswith("```"):
                j += 1
            prev = next((ln for ln in reversed(lines[:i]) if ln.strip()), "")
            marker = MARKER.match(prev.strip())
            kind = marker.group(1) if marker and (marker.group(1) == "run" or marker.group(2)) else None
            out.append((i + 1, m.group(1), kind, "\n".join(lines[i + 1 : j])))
            i = j
        i += 1
    return out


@pytest.mark.parametrize("page", PAGES)
def test_every_command_block_is_marked(page):
    unmarked = [(line, lang) for line, lang, marker, _ in blocks(page) if lang in ("bash", "python") and marker is None]
    assert not unmarked, f"{page}: blocks without a doc-test marker on the line above: {unmarked}"


def commands(code: str) -> list[list[str]]:
    """The commands of a bash block, as written, less installs and the test suite, sized down."""
    joined = re.sub(r"\\\n\s*", " ", code)
    out = []
    for line in joined.splitlines():
        line = line.split(" #")[0].strip()
        if not line or line.startswith("#"):
            continue
        for part in line.split("&&"):
            argv = shlex.split(part.strip())
            while argv and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", argv[0]):  # VAR=value before the command
                argv = argv[1:]
            if argv[:4] == ["python", "-m", "pip", "install"] or argv[:3] == ["python", "-m", "pytest"]:
                continue
            text = " ".join(argv)
            if "recipes/finetune.py" in text or argv[:2] == ["samadapt", "train"]:
                argv += TINY
            elif "recipes/evaluate.py" in text or argv[:2] == ["samadapt", "eval"]:
                argv += ["--no-progress", "--max-images", "2"]
            out.append(argv)
    return out


def test_command_parsing():
    code = (
        "python -m pip install -e . && accelerate launch recipes/finetune.py --strategy lora \\\n    --lora-rank 2  # c"
    )
    assert commands(code) == [
        ["accelerate", "launch", "recipes/finetune.py", "--strategy", "lora", "--lora-rank", "2", *TINY]
    ]
    assert commands("python -m pip install x && python -m pytest\n# only a comment") == []
    assert commands("SAM2_BUILD_CUDA=0 python -m pip install --no-build-isolation x && python -m pytest") == []


#: ``print(x)  # prints VALUE: what it means``: the block prints the line VALUE (checked when it runs)
PRINTS = re.compile(r"#\s*prints (.+?)(?::\s|:?$)")


def printed_values(code: str) -> list[str]:
    """The lines a python block says it prints, in its ``# prints VALUE: ...`` comments."""
    return [m.group(1) for line in code.splitlines() if "print(" in line for m in [PRINTS.search(line)] if m]


def test_readme_says_what_the_logits_shape_is_for_mini():
    """README's "Use it from code" block states the low-res logits shape it prints: for the built-in
    mini (256 px input) that is 64 x 64 (S/4), which its forward gives."""
    import numpy as np

    import samadapt

    code = next(code for _, lang, _, code in blocks("README.md") if lang == "python" and "low_res_logits" in code)
    line = next(line for line in code.splitlines() if "print(out.low_res_logits.shape)" in line)
    (value,) = printed_values(line)
    model = samadapt.adapt(samadapt.build_sam("mini"), "lora", rank=8)
    image = np.full((48, 64, 3), 90, np.uint8)
    boxes = np.array([[10, 12, 30, 36]])
    out = model([image, image], boxes=[boxes, boxes])
    assert value == str(out.low_res_logits.shape) == "torch.Size([2, 1, 64, 64])"


def quick_start_commands() -> list[str]:
    """The command lines of README.md's Quick start block."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    code = next(code for _, lang, _, code in blocks_of_text(section) if lang == "bash")
    return [line for line in code.splitlines() if line.strip()]


def test_ci_runs_the_readme_test_command_in_a_fresh_virtualenv():
    """Two Quick start commands; .ci/run takes the second from README.md as written and runs it in a
    virtualenv it makes anew, without system site-packages (an undeclared import fails there)."""
    quick = quick_start_commands()
    assert len(quick) == 2, quick
    assert quick[0].endswith("accelerate launch recipes/finetune.py --strategy decoder")
    proc = subprocess.run(["bash", str(REPO / ".ci" / "run"), "--print-command"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == quick[1]
    script = (REPO / ".ci" / "run").read_text()
    assert "-m venv --clear" in script and "--system-site-packages" not in script
    assert script.index("-m venv") < script.index('source "$venv/bin/activate"') < script.index('eval "$test_command"')


@pytest.mark.slow
def test_run_blocks_run_as_written(tmp_path):
    home = tmp_path / "home"  # one SAMADAPT_HOME: the adapters one page publishes, the next may load
    env = dict(os.environ, SAMADAPT_HOME=str(home), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.pop("ACCELERATE_USE_CPU", None)
    ran = 0
    for page in PAGES:
        work = tmp_path / page.replace("/", "_")  # each page read from a clone's root of its own
        work.mkdir()
        (work / "recipes").symlink_to(REPO / "recipes")
        for line, lang, marker, code in blocks(page):
            if marker != "run":
                continue
            expected = printed_values(code) if lang == "python" else []
            if lang == "python":
                script = work / f"block_{ran}.py"
                script.write_text(code)
                todo = [[sys.executable, str(script)]]
            else:
                todo = commands(code)
            for argv in todo:
                proc = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=900)
                where = f"{page}:{line}: {' '.join(argv)}"
                assert proc.returncode == 0, f"{where}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
                assert "Traceback" not in proc.stderr, f"{where}\n{proc.stderr[-3000:]}"
                for value in expected:  # what a "# prints VALUE: ..." comment promises
                    assert value in proc.stdout.splitlines(), f"{where}: does not print {value!r}\n{proc.stdout}"
                ran += 1
    assert ran >= 8
