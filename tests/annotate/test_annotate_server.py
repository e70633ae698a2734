"""The annotation page's server without a browser (FastAPI's TestClient): the token, file names kept in
the folder, bounded requests, prompts decoded as the click protocol does, the COCO file written before
an accept is answered, continuation, imported annotations, categories, unreadable and changed files,
one encoder pass per image, the base model beside the adapted one."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from annotate_helpers import replay
from fastapi.testclient import TestClient
from PIL import Image
from pycocotools.coco import COCO

import samadapt
from samadapt.annotate.app import create_app
from samadapt.annotate.folder import ImageFolder
from samadapt.annotate.session import AnnotateSession, Predictor
from samadapt.annotate.store import AnnotationStore, read_categories
from samadapt.data.images import read_image
from samadapt.data.masks import decode_rle
from samadapt.errors import ConfigError, DataError

TOKEN = "test-token"
CATEGORIES = [{"id": 3, "name": "bottle"}, {"id": 7, "name": "can"}]


@pytest.fixture(scope="module")
def mini():
    """The built-in pretrained ``mini`` (read-only here)."""
    return samadapt.adapt(samadapt.build_sam("mini"), "decoder").eval()


def _scene(seed: int, size=(90, 120)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(60, 120, size=(*size, 3), dtype=np.uint8)
    img[20:60, 15:55] = (230, 200, 40)
    img[50:85, 70:110] = (20, 30, 160)
    return img


@pytest.fixture
def images_dir(tmp_path) -> Path:
    """Three PNG scenes (one in a sub-folder), a broken .jpg and a hidden file."""
    d = tmp_path / "images"
    (d / "sub").mkdir(parents=True)
    Image.fromarray(_scene(0)).save(d / "a.png")
    Image.fromarray(_scene(1)).save(d / "b.png")
    Image.fromarray(_scene(2, (80, 100))).save(d / "sub" / "c.png")
    (d / "broken.jpg").write_bytes(b"not an image")
    Image.fromarray(_scene(3)).save(d / ".hidden.png")
    return d


def _client(images_dir, out, model, *, base=None, categories=CATEGORIES, annotation_file=None, name="mini"):
    folder = ImageFolder(images_dir, progress=False)
    store = AnnotationStore.open(out, folder, categories=categories, annotation_file=annotation_file)
    store.write()  # as the command does before it serves
    session = AnnotateSession(folder, Predictor(name, model, "base"), base, base_note="no adapter")
    client = TestClient(
        create_app(session, store, TOKEN), headers={"Authorization": f"token {TOKEN}"}, raise_server_exceptions=False
    )
    return client, session, store


def _post(client, path, **body):
    r = client.post(path, json=body)
    assert r.status_code == 200, r.text
    return r.json()


def _runs_to_mask(runs, h, w) -> np.ndarray:
    flat = np.zeros(h * w, dtype=bool)
    pos = 0
    for k, n in enumerate(runs):
        if k % 2:
            flat[pos : pos + n] = True
        pos += n
    return flat.reshape(w, h).T


# ---------------------------------------------------------------------------- safety
def test_every_request_needs_the_token(images_dir, tmp_path, mini):
    client, _, _ = _client(images_dir, tmp_path / "out.json", mini)
    bare = TestClient(client.app)
    for path in ("/", "/api/state", "/api/images/a.png", "/static/app.js", "/no/such/route"):
        assert bare.get(path).status_code == 403, path
        assert bare.get(path, params={"token": "wrong"}).status_code == 403, path
    assert bare.post("/api/open", json={"image": "a.png"}).status_code == 403
    assert bare.post("/api/open", json={"image": "a.png"}, headers={"Authorization": "token nope"}).status_code == 403
    page = bare.get("/", params={"token": TOKEN})
    assert page.status_code == 200 and f"static/app.js?token={TOKEN}" in page.text and "__TOKEN__" not in page.text
    assert bare.get("/static/app.js", params={"token": TOKEN}).status_code == 200
    assert client.get("/api/state").status_code == 200  # the header form
    assert (
        page.headers["referrer-policy"] == "no-referrer"
        and "frame-ancestors 'none'" in page.headers["content-security-policy"]
    )


def test_file_names_never_leave_the_images_folder(images_dir, tmp_path, mini):
    Image.fromarray(_scene(5)).save(tmp_path / "secret.png")  # beside the folder, readable by the server
    client, _, _ = _client(images_dir, tmp_path / "out.json", mini)
    for path in (
        "/api/images/..%2Fsecret.png",
        "/api/images/%2e%2e/secret.png",
        "/api/images/sub/..%2F..%2Fsecret.png",
        "/api/images/" + str(tmp_path / "secret.png").replace("/", "%2F"),
        "/api/images/.hidden.png",
        "/api/images/nothing.png",
        "/static/..%2Fapp.py",
        "/static/app.py",
    ):
        r = client.get(path)
        assert r.status_code == 404, (path, r.status_code)
    for name in ("../secret.png", str(tmp_path / "secret.png"), "sub/../a.png", "a.png\x00"):
        assert client.post("/api/open", json={"image": name}).status_code == 404, name
        assert client.post("/api/prompt", json={"image": name, "point": [1, 1]}).status_code == 404, name
    # the listed names work, sub-folders included, and the pixels are the model's
    r = client.get("/api/images/sub/c.png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    from io import BytesIO

    assert np.array_equal(
        np.asarray(Image.open(BytesIO(r.content)).convert("RGB")), read_image(images_dir / "sub" / "c.png")
    )


def test_request_bodies_are_bounded(images_dir, tmp_path, mini):
    client, _, _ = _client(images_dir, tmp_path / "out.json", mini)
    big = {"image": "a.png", "point": [1, 1], "padding": "x" * 100_000}
    assert client.post("/api/prompt", json=big).status_code == 413
    chunked = client.post("/api/prompt", content=iter([b"{" + b" " * 40_000, b" " * 40_000 + b"}"]))
    assert chunked.status_code == 413  # no content-length: counted as it arrives
    assert client.post("/api/prompt", json={"image": "x" * 5000, "point": [1, 1]}).status_code == 422


def test_bad_prompts_are_refused_with_a_reason(images_dir, tmp_path, mini):
    client, _, _ = _client(images_dir, tmp_path / "out.json", mini)
    _post(client, "/api/open", image="a.png")
    cases = [
        ({"point": [500, 10]}, 400, "outside"),
        ({"box": [200, 200, 300, 300]}, 400, "covers no pixel"),
        ({"box": [1, 1, 5, 5], "point": [2, 2]}, 400, "exactly one"),
        ({}, 400, "exactly one"),
    ]
    for body, status, words in cases:
        r = client.post("/api/prompt", json={"image": "a.png", **body})
        assert r.status_code == status and words in r.json()["error"], (body, r.text)
    r = client.post(
        "/api/prompt", content=b'{"image": "a.png", "point": [NaN, 1]}', headers={"content-type": "application/json"}
    )
    assert r.status_code == 422
    assert client.post("/api/accept", json={"image": "a.png", "revision": 0}).status_code == 409  # nothing drawn


# ---------------------------------------------------------------------------- prompts and the file
def test_prompts_refine_with_the_previous_logits_and_an_accept_is_on_disk_when_answered(images_dir, tmp_path, mini):
    out = tmp_path / "labels" / "out.json"
    client, session, _ = _client(images_dir, out, mini)
    opened = _post(client, "/api/open", image="a.png")
    assert (opened["width"], opened["height"]) == (120, 90) and opened["annotations"] == []
    prompts = [{"box": [14.0, 19.0, 56.0, 61.0]}, {"point": [40.5, 30.5], "positive": False}]
    first = _post(client, "/api/prompt", image="a.png", box=prompts[0]["box"])["draft"]
    draft = _post(client, "/api/prompt", image="a.png", point=prompts[1]["point"], positive=False)["draft"]
    assert draft["revision"] == 2 and draft["prompts"] == prompts and draft["decode_ms"] >= 0

    image = read_image(images_dir / "a.png")
    masks, logits = replay(mini, image, prompts)
    served = session.draft.outputs["mini"]
    assert all(torch.equal(s.logits, ref) for s, ref in zip(served, logits))  # the same chain, exactly
    alone = mini.decode(
        mini.encode(mini.transform.preprocess_image(image)[None]),
        [mini.transform.apply_boxes(np.asarray([prompts[0]["box"]], np.float32), (90, 120))],
        [mini.transform.apply_points(np.asarray([[[40.5, 30.5]]], np.float32), (90, 120))],
        [torch.tensor([[0]])],
    ).low_res_logits
    assert not torch.equal(alone, logits[1])  # the previous logits do change the second step
    assert np.array_equal(_runs_to_mask(first["mask"], 90, 120), masks[0])
    assert np.array_equal(_runs_to_mask(draft["mask"], 90, 120), masks[1])

    answer = _post(client, "/api/accept", image="a.png", revision=2, category_id=7)
    on_disk = json.loads(out.read_text())  # read at once: the answer came after the write
    [ann] = on_disk["annotations"]
    assert answer["annotation"]["id"] == ann["id"] == 1 and (answer["done"], answer["total"]) == (1, 3)
    assert ann["category_id"] == 7 and ann["iscrowd"] == 0 and ann["model"] == "mini"
    assert ann["prompts"] == prompts and ann["effort"]["clicks"] == 2 and ann["effort"]["seconds"] >= 0
    assert np.array_equal(decode_rle(ann["segmentation"]), masks[1])
    ys, xs = np.nonzero(masks[1])
    assert ann["area"] == masks[1].sum() and ann["bbox"] == [
        xs.min(),
        ys.min(),
        xs.max() - xs.min() + 1,
        ys.max() - ys.min() + 1,
    ]
    assert on_disk["categories"] == CATEGORIES
    names = {im["file_name"]: im for im in on_disk["images"]}
    assert set(names) == {"a.png", "b.png", "sub/c.png"} and (
        names["sub/c.png"]["width"],
        names["sub/c.png"]["height"],
    ) == (100, 80)
    assert names["a.png"]["file_size"] == (images_dir / "a.png").stat().st_size
    coco = COCO(str(out))  # pycocotools reads it as it is, extra keys and all
    assert np.array_equal(coco.annToMask(coco.loadAnns([1])[0]).astype(bool), masks[1])
    assert (
        session.draft is None and client.post("/api/accept", json={"image": "a.png", "revision": 2}).status_code == 409
    )
    assert not list(out.parent.glob("*.tmp"))


def test_a_lone_first_click_takes_the_most_confident_of_three(images_dir, tmp_path, mini):
    client, _, _ = _client(images_dir, tmp_path / "out.json", mini)
    _post(client, "/api/open", image="b.png")
    draft = _post(client, "/api/prompt", image="b.png", point=[30.5, 40.5])["draft"]
    masks, _ = replay(mini, read_image(images_dir / "b.png"), [{"point": [30.5, 40.5], "positive": True}])
    assert np.array_equal(_runs_to_mask(draft["mask"], 90, 120), masks[0])


def test_undo_goes_back_one_prompt_and_effort_counts_every_prompt(images_dir, tmp_path, mini):
    out = tmp_path / "out.json"
    client, _, _ = _client(images_dir, out, mini)
    _post(client, "/api/open", image="a.png")
    first = _post(client, "/api/prompt", image="a.png", box=[60, 45, 115, 88])["draft"]
    _post(client, "/api/prompt", image="a.png", point=[90.5, 70.5], positive=False)
    undone = _post(client, "/api/undo", image="a.png")["draft"]
    assert undone["revision"] == 1 and undone["mask"] == first["mask"] and undone["actions"] == 2
    r = client.post("/api/accept", json={"image": "a.png", "revision": 2})
    assert r.status_code == 409 and "reload" in r.json()["error"]  # the page must accept what it shows
    ann = _post(client, "/api/accept", image="a.png", revision=1)["annotation"]
    assert ann["effort"]["clicks"] == 2 and ann["category_id"] == 3  # the first category by default
    assert _post(client, "/api/clear", image="a.png")["draft"] is None


def test_delete_and_category_changes_are_written_at_once(images_dir, tmp_path, mini):
    out = tmp_path / "out.json"
    client, _, _ = _client(images_dir, out, mini)
    _post(client, "/api/open", image="a.png")
    ids = []
    for box in ([14, 19, 56, 61], [60, 45, 115, 88]):
        _post(client, "/api/prompt", image="a.png", box=box)
        ids.append(_post(client, "/api/accept", image="a.png", revision=1)["annotation"]["id"])
    assert ids == [1, 2]
    assert _post(client, "/api/category", id=2, category_id=7)["annotation"]["category_id"] == 7
    assert {a["id"]: a["category_id"] for a in json.loads(out.read_text())["annotations"]} == {1: 3, 2: 7}
    assert client.post("/api/category", json={"id": 2, "category_id": 99}).status_code == 400
    assert _post(client, "/api/delete", id=1)["done"] == 1
    assert [a["id"] for a in json.loads(out.read_text())["annotations"]] == [2]
    assert client.post("/api/delete", json={"id": 1}).status_code == 404
    assert _post(client, "/api/delete", id=2)["done"] == 0


def test_a_failed_write_is_an_error_and_keeps_the_draft(images_dir, tmp_path, mini, monkeypatch):
    out = tmp_path / "out.json"
    client, session, store = _client(images_dir, out, mini)
    _post(client, "/api/open", image="a.png")
    _post(client, "/api/prompt", image="a.png", box=[14, 19, 56, 61])

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr("samadapt.annotate.store.atomic_write", full_disk)
        r = client.post("/api/accept", json={"image": "a.png", "revision": 1})
    assert r.status_code == 500 and "No space left" in r.json()["error"]
    assert store.annotations == [] and json.loads(out.read_text())["annotations"] == []
    assert session.draft is not None  # nothing lost: accept again once the disk has room
    assert _post(client, "/api/accept", image="a.png", revision=1)["annotation"]["id"] == 1


# ---------------------------------------------------------------------------- continuing, importing, categories
def test_running_again_on_the_file_continues_it(images_dir, tmp_path, mini):
    out = tmp_path / "out.json"
    client, _, _ = _client(images_dir, out, mini)
    _post(client, "/api/open", image="a.png")
    _post(client, "/api/prompt", image="a.png", box=[14, 19, 56, 61])
    first = _post(client, "/api/accept", image="a.png", revision=1)["annotation"]

    again, _, store = _client(images_dir, out, mini, categories=None)
    assert store.report.continued == 1 and store.categories == CATEGORIES
    state = again.get("/api/state").json()
    assert (state["done"], state["total"], state["done_names"]) == (1, 3, ["a.png"])
    assert [a["id"] for a in _post(again, "/api/open", image="a.png")["annotations"]] == [first["id"]]
    _post(again, "/api/prompt", image="a.png", box=[60, 45, 115, 88])
    assert _post(again, "/api/accept", image="a.png", revision=1)["annotation"]["id"] == 2
    data = json.loads(out.read_text())
    assert [a["id"] for a in data["annotations"]] == [1, 2] and len(data["images"]) == 3
    with pytest.raises(ConfigError, match="already has the categories"):
        _client(images_dir, out, mini, categories=[{"id": 1, "name": "other"}])


def test_an_existing_annotation_file_gives_categories_and_accepted_annotations(images_dir, tmp_path, mini):
    existing = {
        "images": [
            {"id": 10, "file_name": "a.png", "width": 120, "height": 90},
            {"id": 11, "file_name": "elsewhere.png", "width": 120, "height": 90},
            {"id": 12, "file_name": "b.png", "width": 64, "height": 64},  # not the file's size
        ],
        "annotations": [
            {
                "id": 5,
                "image_id": 10,
                "category_id": 2,
                "segmentation": [[15, 20, 55, 20, 55, 60, 15, 60]],
                "area": 1600,
                "bbox": [15, 20, 40, 40],
                "iscrowd": 0,
            },
            {
                "id": 6,
                "image_id": 11,
                "category_id": 1,
                "segmentation": [[1, 1, 9, 1, 9, 9]],
                "area": 30,
                "bbox": [1, 1, 8, 8],
                "iscrowd": 0,
            },
            {
                "id": 7,
                "image_id": 12,
                "category_id": 1,
                "segmentation": [[1, 1, 9, 1, 9, 9]],
                "area": 30,
                "bbox": [1, 1, 8, 8],
                "iscrowd": 0,
            },
            {"id": 8, "image_id": 10, "category_id": 1, "bbox": [1, 1, 8, 8], "area": 64, "iscrowd": 0},  # box only
        ],
        "categories": [{"id": 1, "name": "plastic"}, {"id": 2, "name": "metal"}],
    }
    path = tmp_path / "existing.json"
    path.write_text(json.dumps(existing))
    out = tmp_path / "out.json"
    client, _, store = _client(images_dir, out, mini, categories=None, annotation_file=path)
    assert store.categories == existing["categories"]
    assert store.report.imported == 1 and sum(store.report.skipped.values()) == 2
    [view] = _post(client, "/api/open", image="a.png")["annotations"]
    polygon = COCO()
    polygon.dataset = copy.deepcopy(existing)
    polygon.createIndex()
    assert np.array_equal(_runs_to_mask(view["mask"], 90, 120), polygon.annToMask(polygon.anns[5]).astype(bool))
    again, _, store2 = _client(images_dir, out, mini, categories=None, annotation_file=path)
    assert store2.report.imported == 0 and len(store2.annotations) == 1  # imported once, by the first run
    assert again.get("/api/state").json()["done"] == 1


def test_categories_files(tmp_path):
    forms = {
        "names.json": (["bottle", "can"], [{"id": 1, "name": "bottle"}, {"id": 2, "name": "can"}]),
        "records.json": (CATEGORIES, CATEGORIES),
        "coco.json": ({"images": [], "categories": CATEGORIES}, CATEGORIES),
    }
    for name, (content, expected) in forms.items():
        (tmp_path / name).write_text(json.dumps(content))
        assert read_categories(tmp_path / name) == expected
    bad = {
        "empty.json": ([], "non-empty"),
        "mixed.json": (["a", {"id": 1}], "category 0"),
        "dupe.json": ([{"id": 1, "name": "a"}, {"id": 1, "name": "b"}], "repeats"),
        "noid.json": ([{"name": "a"}], 'integer "id"'),
    }
    for name, (content, words) in bad.items():
        (tmp_path / name).write_text(json.dumps(content))
        with pytest.raises(ConfigError, match=words):
            read_categories(tmp_path / name)
    (tmp_path / "broken.json").write_text("[")
    with pytest.raises(ConfigError, match="not a readable JSON"):
        read_categories(tmp_path / "broken.json")
    with pytest.raises(ConfigError, match="does not exist"):
        read_categories(tmp_path / "missing.json")


def test_a_corrupt_output_file_is_an_error_and_left_alone(images_dir, tmp_path, mini):
    out = tmp_path / "out.json"
    out.write_text('{"images": [')
    with pytest.raises(DataError, match="not valid JSON"):
        _client(images_dir, out, mini)
    assert out.read_text() == '{"images": ['


# ---------------------------------------------------------------------------- unreadable and changed files
def test_unreadable_images_are_listed_and_skipped(images_dir, tmp_path, mini):
    client, _, _ = _client(images_dir, tmp_path / "out.json", mini)
    state = client.get("/api/state").json()
    assert [im["name"] for im in state["images"]] == ["a.png", "b.png", "sub/c.png"]
    assert [u["name"] for u in state["unreadable"]] == ["broken.jpg"] and state["total"] == 3
    assert client.post("/api/open", json={"image": "broken.jpg"}).status_code == 409
    # a file that breaks while the page is open: listed from then on, the others go on
    (images_dir / "b.png").write_bytes((images_dir / "b.png").read_bytes()[:200])
    r = client.post("/api/open", json={"image": "b.png"})
    assert r.status_code == 409 and "b.png" in r.json()["error"]
    assert {u["name"] for u in client.get("/api/state").json()["unreadable"]} == {"broken.jpg", "b.png"}
    assert _post(client, "/api/open", image="a.png")["width"] == 120


def test_a_file_changed_since_it_was_annotated_is_flagged(images_dir, tmp_path, mini):
    out = tmp_path / "out.json"
    client, _, _ = _client(images_dir, out, mini)
    for name in ("a.png", "b.png"):
        _post(client, "/api/open", image=name)
        _post(client, "/api/prompt", image=name, box=[14, 19, 56, 61])
        _post(client, "/api/accept", image=name, revision=1)
    changed = _scene(0)
    changed[0, 0] = (1, 2, 3)
    Image.fromarray(changed).save(images_dir / "a.png")  # same size in pixels, other bytes
    Image.fromarray(_scene(1, (60, 60))).save(images_dir / "b.png")  # another size in pixels
    Image.fromarray(_scene(9, (80, 100))).save(images_dir / "sub" / "c.png")  # changed, but never annotated
    again, _, store = _client(images_dir, out, mini, categories=None)
    flags = {im["name"]: im for im in again.get("/api/state").json()["images"]}
    assert "the file changed" in flags["a.png"]["flag"] and not flags["a.png"]["blocked"]
    assert "pixel size changed" in flags["b.png"]["flag"] and flags["b.png"]["blocked"]
    assert flags["sub/c.png"]["flag"] is None
    assert "changed" in _post(again, "/api/open", image="a.png")["flag"]  # still open to new annotations
    assert again.post("/api/open", json={"image": "b.png"}).status_code == 409
    assert len(store.annotations) == 2  # nothing dropped


# ---------------------------------------------------------------------------- models
def test_each_image_is_encoded_once_and_the_next_one_in_the_background(images_dir, tmp_path):
    model = samadapt.adapt(samadapt.build_sam("mini"), "decoder").eval()
    client, session, _ = _client(images_dir, tmp_path / "out.json", model)
    first = _post(client, "/api/open", image="a.png")
    assert first["cached"] is False
    deadline = time.monotonic() + 60
    while model.encoder_images_seen < 2 and time.monotonic() < deadline:  # b.png, in the background
        time.sleep(0.05)
    for box in ([14, 19, 56, 61], [60, 45, 115, 88]):
        _post(client, "/api/prompt", image="a.png", box=box)
    _post(client, "/api/open", image="a.png")
    assert model.encoder_images_seen == 2
    second = _post(client, "/api/open", image="b.png")
    assert second["cached"] is True
    while model.encoder_images_seen < 3 and time.monotonic() < deadline:  # c, ahead of b
        time.sleep(0.05)
    _post(client, "/api/open", image="sub/c.png")
    assert model.encoder_images_seen == 3
    session.close()


def test_the_base_model_beside_the_adapted_one_gets_the_same_prompts(images_dir, tmp_path, mini, perturb):
    adapted = perturb(samadapt.adapt(samadapt.build_sam("mini"), "decoder").eval(), scale=0.2)
    base = Predictor("mini (base)", mini, "base")
    client, _, _ = _client(images_dir, tmp_path / "out.json", adapted, base=lambda: base, name="tuned")
    state = client.get("/api/state").json()["model"]
    assert state["compare"] is True and state["base_name"] is None  # built when first asked for
    _post(client, "/api/open", image="a.png")
    assert _post(client, "/api/draft", image="a.png", compare=True) == {
        "image": "a.png",
        "draft": None,
        "base_name": "mini (base)",
    }
    prompts = [{"box": [14.0, 19.0, 56.0, 61.0]}, {"point": [40.5, 30.5], "positive": True}]
    _post(client, "/api/prompt", image="a.png", box=prompts[0]["box"])
    draft = _post(client, "/api/prompt", image="a.png", point=prompts[1]["point"])["draft"]
    assert "base" not in draft
    both = _post(client, "/api/draft", image="a.png", compare=True)["draft"]  # switched on mid-object
    image = read_image(images_dir / "a.png")
    base_masks, _ = replay(mini, image, prompts)
    ours, _ = replay(adapted, image, prompts)
    assert both["base"]["name"] == "mini (base)"
    assert np.array_equal(_runs_to_mask(both["base"]["mask"], 90, 120), base_masks[1])
    assert np.array_equal(_runs_to_mask(both["mask"], 90, 120), ours[1])
    assert not np.array_equal(base_masks[1], ours[1])
    ann = _post(client, "/api/accept", image="a.png", revision=2)["annotation"]
    assert ann["model"] == "tuned"
    alone, _, _ = _client(images_dir, tmp_path / "other.json", mini)
    state = alone.get("/api/state").json()["model"]
    assert state["compare"] is False and state["base_note"] == "no adapter"
    _post(alone, "/api/open", image="a.png")
    assert alone.post("/api/prompt", json={"image": "a.png", "point": [5, 5], "compare": True}).status_code == 400


# ---------------------------------------------------------------------------- the command's checks
def test_the_command_refuses_bad_options_before_writing_anything(images_dir, tmp_path, capsys):
    import socket

    from samadapt.cli import main

    out = tmp_path / "out.json"
    only_broken = tmp_path / "broken"
    only_broken.mkdir()
    (only_broken / "x.jpg").write_bytes(b"no")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    cases = [
        (["--adapter", "no-such-mini"], "no adapter named 'no-such-mini'"),
        (["--adapter", "x", "--model", "mini"], "--model chooses the base model"),
        (["--model", "vit_q"], "vit_q"),
        (["--checkpoint", str(tmp_path / "none.pth")], "does not exist"),
        (["--categories", str(tmp_path / "none.json")], "does not exist"),
        (["--port", str(busy.getsockname()[1])], "cannot listen"),
    ]
    try:
        for extra, words in cases:
            assert main(["annotate", str(images_dir), "--out", str(out), "--no-browser", *extra]) == 2, extra
            err = capsys.readouterr().err
            assert words in err, (extra, err)
            assert not out.exists(), extra
    finally:
        busy.close()
    assert main(["annotate", str(only_broken), "--out", str(out), "--no-browser"]) == 2
    assert "no readable image" in capsys.readouterr().err and not out.exists()
