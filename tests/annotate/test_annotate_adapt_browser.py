"""The data engine in the page, as a user runs it: `samadapt annotate` in a subprocess, headless
Chromium, real TrashCan frames. Label four frames, press Adapt, see the new model's exact name and
held-out numbers, label one more frame with it (the file records its name), swap back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from annotate_helpers import SLOW_MACHINE_MS, Server, canvas_point, chromium_or_skip, wait_idle

#: an Adapt run trains for a minute or two on a busy 2-core machine
ADAPT_MS = 900_000


@pytest.fixture(scope="module")
def folder(trashcan_coco, tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    """A folder of 6 real TrashCan training frames (links), and each frame's largest object."""
    from pycocotools.coco import COCO

    chromium_or_skip()
    split = trashcan_coco / "instance_version"
    coco = COCO(str(split / "instances_train_trashcan.json"))
    out = tmp_path_factory.mktemp("adapt_images")
    objects = {}
    for image_id in sorted(coco.getImgIds())[::300][:6]:
        info = coco.imgs[image_id]
        masks = [coco.annToMask(a).astype(bool) for a in coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))]
        objects[info["file_name"]] = max(masks, key=lambda m: int(m.sum()))
        (out / info["file_name"]).symlink_to(split / "train" / info["file_name"])
    return out, objects


def _label(page, mask: np.ndarray) -> dict:
    """Drag the object's tight box, Enter; the accepted annotation."""
    ys, xs = np.nonzero(mask)
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())
    page.mouse.move(*canvas_point(page, x0 + 0.5, y0 + 0.5))
    page.mouse.down()
    page.mouse.move(*canvas_point(page, (x0 + x1) / 2, (y0 + y1) / 2), steps=3)
    page.mouse.move(*canvas_point(page, x1 + 0.5, y1 + 0.5), steps=3)
    page.mouse.up()
    page.wait_for_function("document.getElementById('main-title').textContent.includes('1 prompt(s)')")
    wait_idle(page)
    with page.expect_response(lambda r: "/api/accept" in r.url) as answer:
        page.keyboard.press("Enter")
    assert answer.value.ok, answer.value.text()
    wait_idle(page)
    return answer.value.json()["annotation"]


def _next(page, name: str) -> None:
    page.keyboard.press("n")
    page.wait_for_function(f"document.body.dataset.image === {json.dumps(name)}")
    wait_idle(page)


def test_adapt_in_the_page_then_label_with_the_new_model_and_swap_back(folder, browser, tmp_path):
    images, objects = folder
    names = sorted(objects)
    out = tmp_path / "labels.json"
    home = tmp_path / "home"
    server = Server([str(images), "--out", str(out), "--adapt-epochs", "2"], env={"SAMADAPT_HOME": str(home)})
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 800})
        page.set_default_timeout(SLOW_MACHINE_MS)
        page.goto(server.url)
        wait_idle(page)
        adapt = page.locator("#adapt-button")
        assert adapt.is_visible() and adapt.inner_text() == "Adapt"
        for k, name in enumerate(names[:4]):
            if k:
                _next(page, name)
            assert _label(page, objects[name])["model"] == "mini"
        adapt.click()
        page.wait_for_function("document.body.dataset.adapt === 'running'")
        assert adapt.is_disabled()
        page.wait_for_function("['done', 'failed'].includes(document.body.dataset.adapt)", timeout=ADAPT_MS)
        status = page.locator("#adapt-status").inner_text()
        assert page.evaluate("document.body.dataset.adapt") == "done", status
        name = "labels_r1-mini"  # the project is the file's name; the first run of it
        assert name in status
        table = page.locator("#adapt-table").inner_text()
        assert name in table and "mini" in table and "box mean IoU" in table and "clicks per object to IoU 0.5" in table
        state = page.request.get(server.base_url + "/api/adapt?token=" + server.url.split("token=")[1]).json()
        new, old = state["result"]["scores"]["new"], state["result"]["scores"]["previous"]
        assert f"{100 * new['box_miou']['mean']:.1f}" in table and f"{100 * old['box_miou']['mean']:.1f}" in table
        wait_idle(page)
        assert f"model {name}" in page.locator("#status-line").inner_text()
        listed = subprocess.run(
            [sys.executable, "-m", "samadapt", "list"],
            capture_output=True,
            text=True,
            env={**os.environ, "SAMADAPT_HOME": str(home)},
        )
        assert name in listed.stdout

        _next(page, names[4])
        assert _label(page, objects[names[4]])["model"] == name
        saved = json.loads(out.read_text())["annotations"]
        assert [a["model"] for a in saved] == ["mini"] * 4 + [name]

        swap = page.locator("#swap-button")
        assert swap.inner_text() == "use mini"
        swap.click()
        page.wait_for_function("document.getElementById('status-line').textContent.includes('model mini')")
        wait_idle(page)
        assert page.locator("#swap-button").inner_text() == f"use {name}"
        _next(page, names[5])
        assert _label(page, objects[names[5]])["model"] == "mini"
    finally:
        rest = server.stop()
    assert "stopped; 6 annotations on 6 of 6 images" in rest
