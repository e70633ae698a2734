"""What ``predict`` (and ``segment``, ``forward``) does with the images and prompts users give it
(issue 18, item 10): image arrays the dataset loader would convert are converted the same way;
boxes and points that cannot be meant are refused, named with their index."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

import samadapt
from samadapt.data.images import as_rgb_array, to_rgb_array
from samadapt.errors import ConfigError
from samadapt.segment import segment

BOX = np.array([[15, 20, 55, 60]])


@pytest.fixture(scope="module")
def model():
    return samadapt.adapt(samadapt.build_sam("mini"), "decoder").eval()


def _loader(array: np.ndarray) -> np.ndarray:
    """What the dataset loader makes of this array as an image (PIL: L, LA, RGBA, I;16)."""
    image = Image.fromarray(array)
    assert image.mode in ("L", "LA", "RGBA", "I;16"), image.mode
    return to_rgb_array(image)


@pytest.mark.parametrize(
    "kind",
    [
        "gray (H, W)",
        "gray (H, W, 1)",
        "gray + alpha",
        "RGBA",
        "uint16 gray",
        "uint16 RGB",
        "float 0..1",
        "float 0..255",
    ],
)
def test_predict_converts_images_as_the_loader_does(kind, model, rgb_image):
    """Each kind of array gives exactly the masks of the RGB uint8 image the loader makes of it."""
    gray = rgb_image[:, :, 1]
    arrays = {
        "gray (H, W)": (gray, _loader(gray)),
        "gray (H, W, 1)": (gray[:, :, None], _loader(gray)),
        "gray + alpha": (np.dstack([gray, np.full_like(gray, 9)]), _loader(np.dstack([gray, np.full_like(gray, 9)]))),
        "RGBA": (np.dstack([rgb_image, np.full_like(gray, 9)]), _loader(np.dstack([rgb_image, np.full_like(gray, 9)]))),
        "uint16 gray": (gray.astype(np.uint16) * 257 + 3, _loader(gray.astype(np.uint16) * 257 + 3)),
        "uint16 RGB": (rgb_image.astype(np.uint16) * 257, rgb_image),
        "float 0..1": (rgb_image / 255.0, rgb_image),
        "float 0..255": (rgb_image.astype(np.float32), rgb_image),
    }
    given, expected = arrays[kind]
    assert as_rgb_array(given).dtype == np.uint8
    np.testing.assert_array_equal(as_rgb_array(given), expected)
    masks, scores = model.predict(given, boxes=BOX)
    want_masks, want_scores = model.predict(expected, boxes=BOX)
    np.testing.assert_array_equal(masks, want_masks)
    np.testing.assert_allclose(scores, want_scores)
    assert masks.shape == (1, *rgb_image.shape[:2])


def test_float_pil_and_wide_integer_images_follow_the_loader_rules():
    f = np.array([[0.0, 0.5], [1.0, np.nan]], np.float32)
    np.testing.assert_array_equal(as_rgb_array(f)[..., 0], [[0, 128], [255, 0]])  # 0..1, NaN -> 0
    np.testing.assert_array_equal(as_rgb_array(f * 255)[..., 0], [[0, 128], [255, 0]])
    np.testing.assert_array_equal(as_rgb_array(np.array([[7, 200]], np.int32))[..., 0], [[7, 200]])  # 8-bit data
    np.testing.assert_array_equal(as_rgb_array(np.array([[0, 65535]], np.int32))[..., 0], [[0, 255]])
    pil = Image.fromarray(np.array([[10, 20]], np.uint8))
    np.testing.assert_array_equal(as_rgb_array(pil), to_rgb_array(pil))


@pytest.mark.parametrize(
    "array, hint",
    [
        (np.zeros((3, 90, 120), np.uint8), "channels first? pass image.transpose(1, 2, 0)"),
        (np.zeros((90, 120, 3), bool), ""),
        (np.zeros((90, 120, 5), np.uint8), ""),
        (np.zeros((0, 120, 3), np.uint8), ""),
    ],
)
def test_images_that_cannot_be_converted_say_what_is_expected(array, hint, model):
    with pytest.raises(ConfigError) as e:
        model.predict(array, boxes=BOX)
    assert str(e.value).startswith(
        f"expected image as an RGB uint8 array (H, W, 3), or grayscale (H, W), RGBA (H, W, 4), 16-bit or float "
        f"values to convert; got {array.dtype} {array.shape}"
    )
    assert hint in str(e.value)


# ---------------------------------------------------------------------------- boxes and points
@pytest.mark.parametrize(
    "box, message",
    [
        (
            [300, 200, 100, 50],
            "boxes[1] = [300, 200, 100, 50] is inverted (x1 < x0 and y1 < y0): boxes are XYXY, [x0, y0, x1, y1] "
            "with x0 <= x1 and y0 <= y1 (from COCO's XYWH: [x, y, x + w, y + h])",
        ),
        ([50, 10, 40, 30], "boxes[1] = [50, 10, 40, 30] is inverted (x1 < x0): boxes are XYXY"),
        ([130, 10, 160, 30], "boxes[1] = [130, 10, 160, 30] lies wholly outside the image (120 x 90 pixels, W x H)"),
        ([-40, -30, -1, 50], "boxes[1] = [-40, -30, -1, 50] lies wholly outside the image (120 x 90 pixels, W x H)"),
        ([10, 10, np.inf, 30], "boxes[1] = [10, 10, inf, 30] is not finite"),
    ],
)
def test_predict_refuses_inverted_and_outside_boxes_naming_them(box, message, model, rgb_image):
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        model.predict(rgb_image, boxes=np.array([[15, 20, 55, 60], box], dtype=np.float64))


def test_boxes_partly_outside_or_touching_are_kept_and_batches_name_the_image(model, rgb_image):
    masks, _ = model.predict(rgb_image, boxes=np.array([[100, 70, 200, 150], [0, 0, 0, 0], [-10, -10, 30, 30]]))
    assert masks.shape == (3, 90, 120)
    with pytest.raises(ConfigError, match=re.escape("images[1]: boxes[0] = [300, 200, 100, 50] is inverted")):
        model.predict_batch([rgb_image, rgb_image], [BOX, np.array([[300, 200, 100, 50]])])
    with pytest.raises(ConfigError, match=re.escape("boxes[0] = [300, 200, 100, 50] is inverted")):
        segment(model, rgb_image, boxes=np.array([[300, 200, 100, 50]]))
    with pytest.raises(ConfigError, match=re.escape("images[0]: boxes[0] = [300, 200, 100, 50] is inverted")):
        model([rgb_image, rgb_image], boxes=[np.array([[300, 200, 100, 50]]), BOX])


def test_points_outside_the_image_or_with_unknown_labels_are_refused(model, rgb_image):
    with pytest.raises(
        ConfigError,
        match="^"
        + re.escape("points[0][1] = [130, 20] lies outside the image (120 x 90 pixels, W x H); points are XY pixels"),
    ):
        model.predict(rgb_image, points=np.array([[30, 40], [130, 20]]), labels=np.array([1, 0]))
    with pytest.raises(ConfigError, match=re.escape("points[0][0] = [30, 40] has label 2: labels are 1 (foreground)")):
        model.predict(rgb_image, points=np.array([[30, 40]]), labels=np.array([2]))
    with pytest.raises(ConfigError, match=re.escape("points[0][0] = [130, 20] lies outside the image")):
        segment(model, rgb_image, points=np.array([[[130, 20]]]), point_labels=np.array([[1]]))
    # a padding point (-1) is ignored by SAM wherever it is
    masks, _ = model.predict(rgb_image, points=np.array([[30, 40], [0, 0]]), labels=np.array([1, -1]))
    assert masks.shape == (1, 90, 120)
