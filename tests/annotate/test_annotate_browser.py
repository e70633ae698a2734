"""``samadapt annotate`` as a user runs it: the command in a subprocess, the page in headless Chromium
(Debian's, driven by Playwright), real TrashCan frames imported from ../shared/realdata.

Two runs of the page: (1) a box and a negative click on an object, Enter, a category key, the file
checked against the library's masks for the same prompts, the page reloaded, the next image by keys
and clicks (right-click, undo, a lone click equal to ``predict``'s, ``p``, Delete), 403 / 404; (2) kill -9
right after an accept, the file complete, the command run again on it, the base model beside a
fine-tuned adapter (the screenshot of docs/annotate.md).
"""

from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from annotate_helpers import (
    SLOW_MACHINE_MS,
    Server,
    canvas_point,
    chromium_or_skip,
    mask_iou,
    replay,
    save_screenshot,
    wait_idle,
)

import samadapt
from samadapt.data.images import read_image
from samadapt.data.masks import decode_rle
from samadapt.evaluation.clicks import first_click

TRASHCAN = Path(__file__).resolve().parents[2].parent / "shared" / "realdata" / "trashcan"
#: two frames of the official val split (the pages label them) and two of train (the adapter's data)
FRAMES = [
    "vid_000002_frame0000013.jpg",
    "vid_000035_frame0000087.jpg",
    "vid_000089_frame0000010.jpg",
    "vid_000108_frame0000022.jpg",
]


@dataclass
class Frames:
    root: Path  # the imported dataset
    categories: list[dict]

    def split(self, name: str):
        from pycocotools.coco import COCO

        coco = COCO(str(self.root / "instance_version" / f"instances_{name}_trashcan.json"))
        return self.root / "instance_version" / name, coco

    def objects(self, split: str, file_name: str) -> list[np.ndarray]:
        """The ground-truth masks of a frame, largest first."""
        _, coco = self.split(split)
        [image_id] = [i for i, im in coco.imgs.items() if im["file_name"] == file_name]
        masks = [coco.annToMask(a).astype(bool) for a in coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))]
        return sorted(masks, key=lambda m: -int(m.sum()))


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> Frames:
    if not (TRASHCAN / "original_data").is_dir():
        pytest.skip(f"TrashCan frames not found at {TRASHCAN}")
    chromium_or_skip()
    from samadapt.data.importers import import_trashcan

    out = tmp_path_factory.mktemp("trashcan") / "coco"
    import_trashcan(TRASHCAN, out, versions=["instance"], images="copy", frames=FRAMES, progress=False)
    categories = json.loads((out / "instance_version" / "instances_val_trashcan.json").read_text())["categories"]
    return Frames(out, categories)


@pytest.fixture(scope="module")
def tuned_home(frames, tmp_path_factory) -> Path:
    """A SAMADAPT_HOME holding ``trashcan-mini``: the built-in mini's decoder fine-tuned for 25 steps on
    the boxes of the two training frames (seconds; enough to differ from the base)."""
    home = tmp_path_factory.mktemp("annotate_home")
    train_dir, coco = frames.split("train")
    model = samadapt.adapt(samadapt.build_sam("mini"), "decoder")
    embeddings, boxes, targets = [], [], []
    with torch.no_grad():
        for image_id, info in coco.imgs.items():
            image = read_image(train_dir / info["file_name"])
            anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
            masks = np.stack([coco.annToMask(a).astype(bool) for a in anns])
            box = [[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] for ys, xs in map(np.nonzero, masks)]
            embeddings.append(model.encode(model.transform.preprocess_image(image)[None]))
            boxes.append(model.transform.apply_boxes(np.asarray(box, np.float32), image.shape[:2]))
            targets.append(model.transform.masks_to_low_res(masks, image.shape[:2]))
    embeddings, target = torch.cat(embeddings), torch.cat(targets)[:, None]
    optimiser = torch.optim.AdamW([p for _, p in model.trainable_named_parameters()], lr=1e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a busy 2-core machine two threads make these small steps 10x slower
    try:
        for _ in range(25):  # the encoder is frozen: its embeddings once, the decoder 25 times
            logits = model(image_embeddings=embeddings, boxes=boxes).low_res_logits
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    finally:
        torch.set_num_threads(threads)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SAMADAPT_HOME", str(home))
        samadapt.publish_adapter(model.eval(), "trashcan", card={"data": {"note": "25 steps on two frames (a test)"}})
    return home


def _drag_box(page, x0: int, y0: int, x1: int, y1: int) -> None:
    """Drag from the centre of pixel (x0, y0) to the centre of (x1, y1)."""
    page.mouse.move(*canvas_point(page, x0 + 0.5, y0 + 0.5))
    page.mouse.down()
    page.mouse.move(*canvas_point(page, (x0 + x1) / 2, (y0 + y1) / 2), steps=3)
    page.mouse.move(*canvas_point(page, x1 + 0.5, y1 + 0.5), steps=3)
    page.mouse.up()


def _wait_prompts(page, n: int) -> None:
    page.wait_for_function(f"document.getElementById('main-title').textContent.includes('{n} prompt(s)')")
    wait_idle(page)


def _tight_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def _accept(page):
    with page.expect_response(lambda r: "/api/accept" in r.url) as answer:
        page.keyboard.press("Enter")
    assert answer.value.ok, answer.value.text()
    wait_idle(page)  # the page has applied the answer (list, overlay, status line)
    return answer.value


def test_label_an_object_in_chromium(frames, browser, tmp_path):
    val_dir, _ = frames.split("val")
    out = tmp_path / "labels.json"
    categories = tmp_path / "categories.json"
    categories.write_text(json.dumps(frames.categories))
    server = Server([str(val_dir), "--out", str(out), "--categories", str(categories)])
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.set_default_timeout(SLOW_MACHINE_MS)
        page.goto(server.url)
        wait_idle(page)
        name = FRAMES[0]  # the first image opens by itself
        assert page.evaluate("document.body.dataset.image") == name
        image = read_image(val_dir / name)
        h, w = image.shape[:2]
        shown = page.evaluate(
            "() => { const c = document.getElementById('image-canvas');"
            " return [c.width, c.height, Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)]; }"
        )
        assert shown[:2] == [w, h]  # the canvas is in image pixels
        assert np.array_equal(np.asarray(shown[2], np.uint8).reshape(h, w, 4)[..., :3], image)  # true colours
        assert page.locator("#image-canvas").bounding_box()["width"] > w  # scaled to fit the window

        gt = frames.objects("val", name)[0]
        x0, y0, x1, y1 = _tight_box(gt)
        _drag_box(page, x0, y0, x1, y1)
        _wait_prompts(page, 1)
        inside_box = np.zeros_like(gt)
        inside_box[y0 : y1 + 1, x0 : x1 + 1] = True
        row, col = first_click(inside_box & ~gt)  # background inside the box, far from the object
        page.keyboard.down("Shift")
        page.mouse.click(*canvas_point(page, col + 0.5, row + 0.5))
        page.keyboard.up("Shift")
        _wait_prompts(page, 2)

        _accept(page)
        [ann] = json.loads(out.read_text())["annotations"]  # on disk when the accept was answered
        prompts = [{"box": [x0, y0, x1 + 1, y1 + 1]}, {"point": [col + 0.5, row + 0.5], "positive": False}]
        assert ann["prompts"] == prompts
        with page.expect_response(lambda r: "/api/category" in r.url) as answer:
            page.keyboard.press("2")
        assert answer.value.ok
        [ann] = json.loads(out.read_text())["annotations"]
        assert ann["category_id"] == frames.categories[1]["id"]
        assert ann["model"] == "mini" and ann["effort"]["clicks"] == 2 and ann["effort"]["seconds"] > 0
        model = samadapt.adapt(samadapt.build_sam("mini"), "decoder").eval()
        masks, _ = replay(model, image, prompts)
        assert mask_iou(decode_rle(ann["segmentation"]), masks[-1]) >= 0.99
        by_predict, _ = model.predict(image, boxes=np.array([prompts[0]["box"]]))  # the box step is predict's
        assert mask_iou(by_predict[0], masks[0]) >= 0.99

        page.reload()
        wait_idle(page)
        items = page.locator("#annotation-list li")
        assert items.count() == 1 and frames.categories[1]["name"] in items.first.inner_text()
        ys, xs = np.nonzero(decode_rle(ann["segmentation"]))
        alpha = page.evaluate(
            f"document.getElementById('overlay-canvas').getContext('2d').getImageData({xs[0]}, {ys[0]}, 1, 1).data[3]"
        )
        assert alpha > 0  # the accepted mask is drawn again
        assert "images done 1 / 2" in page.locator("#status-line").inner_text()

        _second_image_by_keys_and_clicks(page, frames, model, out, val_dir)

        assert page.request.get(server.base_url + "/api/state").status == 403
        assert page.goto(server.base_url + "/").status == 403
        token = server.url.split("token=")[1]
        for path in ("/api/images/..%2F..%2Flabels.json", "/api/images/..%2Fcategories.json"):
            assert page.request.get(f"{server.base_url}{path}?token={token}").status == 404, path
    finally:
        rest = server.stop()
    assert "stopped; 1 annotations on 1 of 2 images" in rest


def _prompt_answer(page, click) -> dict:
    """The draft the server answered to a mouse action on the canvas."""
    with page.expect_response(lambda r: "/api/prompt" in r.url) as answer:
        click()
    wait_idle(page)
    return answer.value.json()["draft"]


def _second_image_by_keys_and_clicks(page, frames: Frames, model, out: Path, val_dir: Path) -> None:
    """``n`` requests the next image by its file name; a category key before drawing is the next
    accept's; right-click is a negative point, ``z`` takes it back, a click is a positive point; the
    accepted mask is ``predict``'s for that click; the status line; ``p``; Delete."""
    name = FRAMES[1]
    with page.expect_request(lambda r: "/api/images/" in r.url) as request:
        page.keyboard.press("n")
    assert request.value.url.split("?")[0].endswith(f"/api/images/{name}") and "token=" in request.value.url
    page.wait_for_function(f"document.body.dataset.image === '{name}'")
    wait_idle(page)
    page.keyboard.press("3")  # nothing selected, nothing drawn: the category of the next accept

    gt = frames.objects("val", name)[0]
    row, col = first_click(~gt)  # background, far from the object
    draft = _prompt_answer(page, lambda: page.mouse.click(*canvas_point(page, col + 0.5, row + 0.5), button="right"))
    assert draft["prompts"] == [{"point": [col + 0.5, row + 0.5], "positive": False}]
    with page.expect_response(lambda r: "/api/undo" in r.url) as answer:
        page.keyboard.press("z")
    assert answer.value.json()["draft"] is None
    row, col = first_click(gt)
    draft = _prompt_answer(page, lambda: page.mouse.click(*canvas_point(page, col + 0.5, row + 0.5)))
    assert draft["prompts"] == [{"point": [col + 0.5, row + 0.5], "positive": True}]

    _accept(page)
    ann = json.loads(out.read_text())["annotations"][-1]
    assert ann["category_id"] == frames.categories[2]["id"] and ann["effort"]["clicks"] == 2
    image = read_image(val_dir / name)
    masks, scores = model.predict(
        image, points=np.array([[col + 0.5, row + 0.5]]), labels=np.array([1]), multimask=True
    )
    assert mask_iou(decode_rle(ann["segmentation"]), masks[0, int(scores[0].argmax())]) >= 0.99
    status = page.locator("#status-line").inner_text()
    for part in ("model mini", "embedding ", "last decode ", "images done 2 / 2"):
        assert part in status, status

    page.keyboard.press("p")
    page.wait_for_function(f"document.body.dataset.image === '{FRAMES[0]}'")
    wait_idle(page)
    page.locator("#annotation-list li").first.click()
    with page.expect_response(lambda r: "/api/delete" in r.url) as answer:
        page.keyboard.press("Delete")
    assert answer.value.ok
    wait_idle(page)
    assert [a["image_id"] for a in json.loads(out.read_text())["annotations"]] == [ann["image_id"]]
    assert page.locator("#annotation-list li").count() == 0
    assert "images done 1 / 2" in page.locator("#status-line").inner_text()


def test_kill_9_right_after_an_accept_loses_nothing_and_the_next_run_continues(frames, browser, tuned_home, tmp_path):
    val_dir, _ = frames.split("val")
    out = tmp_path / "labels.json"
    categories = tmp_path / "categories.json"
    categories.write_text(json.dumps(frames.categories))
    args = [str(val_dir), "--out", str(out), "--adapter", "trashcan-mini", "--categories", str(categories)]
    env = {"SAMADAPT_HOME": str(tuned_home)}
    name = FRAMES[1]
    objects = frames.objects("val", name)  # the ROV first, then pieces of trash
    trash = next(c for c in frames.categories if c["name"] == "trash_unknown_instance")
    server = Server(args, env=env)
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 620})
        page.set_default_timeout(SLOW_MACHINE_MS)
        page.goto(server.url)
        wait_idle(page)
        page.keyboard.press("n")
        page.wait_for_function(f"document.body.dataset.image === '{name}'")
        wait_idle(page)
        for gt, category in ((objects[0], None), (objects[3], trash)):
            _drag_box(page, *_tight_box(gt))
            _wait_prompts(page, 1)
            if category is not None:  # while drawing: for this object; beyond the keys 1-9: the list
                page.locator(f"#categories button[data-category-id='{category['id']}']").click()
            _accept(page)
        os.kill(server.proc.pid, signal.SIGKILL)  # at once, after the answer
    finally:
        server.kill()
    data = json.loads(out.read_text())
    from pycocotools.coco import COCO

    coco = COCO(str(out))
    assert [(a["model"], a["category_id"]) for a in data["annotations"]] == [
        ("trashcan-mini", 1),
        ("trashcan-mini", trash["id"]),
    ]
    for a in data["annotations"]:
        assert coco.annToMask(a).sum() == a["area"] > 0
    assert not [p for p in out.parent.iterdir() if p.suffix == ".tmp"]

    server = Server(args, env=env)
    try:
        page.goto(server.url)
        wait_idle(page)
        assert "images done 1 / 2" in page.locator("#status-line").inner_text()
        page.keyboard.press("n")
        page.wait_for_function(f"document.body.dataset.image === '{name}'")
        wait_idle(page)
        assert page.locator("#annotation-list li").count() == 2
        page.keyboard.press("c")  # the base model beside
        assert page.locator("#compare-panel").is_visible()
        _drag_box(page, *_tight_box(objects[4]))
        _wait_prompts(page, 1)
        title = page.locator("#base-title").inner_text()
        assert "mini (base)" in title and "IoU with trashcan-mini" in title
        save_screenshot(page, tmp_path)
    finally:
        server.stop()
