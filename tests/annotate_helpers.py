"""Helpers of the annotation page's tests (tests/test_annotate_*.py): the masks the library gives
for a sequence of prompts, the command as a user starts it, and headless Chromium."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
#: how long a page waits for the server: generous, for a 2-core machine that other jobs keep busy (a
#: wait ends as soon as the page is ready; only a failure waits this long)
SLOW_MACHINE_MS = 180_000
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


def replay(model, image: np.ndarray, prompts: list[dict]) -> tuple[list[np.ndarray], list[torch.Tensor]]:
    """The mask and low-res logits after each prompt, decoded through the library's public pieces as
    the click protocol does: the latest box and every point so far, the previous logits as the mask
    prompt, and for a lone first click the most confident of the three masks."""
    tf, size = model.transform, image.shape[:2]
    masks, logits_seen = [], []
    box, points, previous = None, [], None
    with torch.no_grad():
        embedding = model.encode(tf.preprocess_image(image)[None])
        for p in prompts:
            if "box" in p:
                box = p["box"]
            else:
                points.append((p["point"], int(p["positive"])))
            multimask = previous is None and box is None and len(points) == 1
            out = model.decode(
                embedding,
                [tf.apply_boxes(np.asarray([box], np.float32), size)] if box is not None else None,
                [tf.apply_points(np.asarray([[q for q, _ in points]], np.float32), size)] if points else None,
                [torch.tensor([[label for _, label in points]])] if points else None,
                multimask=multimask,
                mask_inputs=None if previous is None else [previous],
            )
            logits = out.low_res_logits
            if multimask:
                best = int(out.iou_predictions[0].argmax())
                logits = logits[:, best : best + 1]
            previous = logits
            logits_seen.append(logits)
            masks.append(tf.postprocess_masks(logits, size, model.sam.mask_threshold)[0, 0].numpy())
    return masks, logits_seen


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


# ---------------------------------------------------------------------------- the command
class Server:
    """``samadapt annotate ... --no-browser`` in a subprocess; ``url`` is the printed one."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None, timeout: float = 900) -> None:
        env = {**os.environ, **(env or {}), "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "samadapt", "annotate", *args, "--no-browser", "--no-progress"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=REPO,
        )
        self.lines: list[str] = []
        deadline = time.monotonic() + timeout
        self.url = None
        while self.url is None:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"samadapt annotate exited ({self.proc.wait()}):\n" + "".join(self.lines))
            self.lines.append(line)
            match = re.match(r"annotate: open (\S+)$", line.strip())
            if match:
                self.url = match.group(1)
            if time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError("no URL printed in time:\n" + "".join(self.lines))
        self.base_url = self.url.split("/?token=")[0]

    def stop(self) -> str:
        """Ctrl-C; returns the rest of its output."""
        if self.proc.poll() is None:
            self.proc.send_signal(2)
        rest, _ = self.proc.communicate(timeout=60)
        return rest

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=60)


# ---------------------------------------------------------------------------- the browser
def chromium_or_skip():
    """Playwright's sync API and the path of Debian's chromium; skips the test when either is missing
    (CI installs both: .ci/run)."""
    import pytest

    sync_api = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.is_file():
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install -y chromium)")
    return sync_api


def canvas_point(page, x: float, y: float) -> tuple[float, float]:
    """The screen point of image pixel coordinates (x, y) on ``#image-canvas``."""
    box = page.locator("#image-canvas").bounding_box()
    width, height = page.evaluate(
        "[document.getElementById('image-canvas').width, document.getElementById('image-canvas').height]"
    )
    return box["x"] + x * box["width"] / width, box["y"] + y * box["height"] / height


def wait_idle(page, timeout: float = SLOW_MACHINE_MS) -> None:
    """Until the page has opened its image and answered every queued request."""
    page.wait_for_function(
        "document.body.dataset.ready === '1' && document.body.dataset.pending === '0'", timeout=timeout
    )


def save_screenshot(page, tmp_path: Path, name: str = "annotate.png") -> Path:
    """The page as PNG in ``tmp_path``; also into ``$SAMADAPT_DOCS_FIGURES`` when that is set (how
    docs/figures/annotate.png is made: ``SAMADAPT_DOCS_FIGURES=docs/figures python -m pytest
    tests/annotate/test_annotate_browser.py``)."""
    path = tmp_path / name
    page.screenshot(path=str(path))
    target = os.environ.get("SAMADAPT_DOCS_FIGURES")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / name)
    return path
