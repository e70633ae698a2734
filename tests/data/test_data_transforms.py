"""Images reach the model exactly as SamPredictor would feed them: file reading and preprocessing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from segment_anything import SamPredictor
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from samadapt.data.coco import CocoInstances
from samadapt.data.images import read_image, resolve_image_path
from samadapt.errors import DataError
from samadapt.transforms import SamTransform

# --- read_image -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["L", "1", "LA", "RGBA", "P", "CMYK", "I;16", "I", "F"])
def test_read_image_modes_give_rgb_uint8(tmp_path, mode):
    rgb = np.zeros((6, 8, 3), np.uint8)
    rgb[:, 4:] = 255
    im = Image.fromarray(rgb).convert(mode if mode not in ("I;16", "I", "F") else "L")
    if mode == "I;16":
        im = Image.fromarray((np.asarray(im).astype(np.uint16) * 257))  # 16-bit PNG
    elif mode in ("I", "F"):
        im = im.convert(mode)
    ext = ".tif" if mode in ("CMYK", "I", "F") else ".png"
    path = tmp_path / f"x{ext}"
    im.save(path)
    out = read_image(path)
    assert out.dtype == np.uint8 and out.shape == (6, 8, 3)
    assert out[:, :4].max() <= 1 and out[:, 4:].min() >= 250, mode


def test_read_image_drops_alpha_keeping_colours(tmp_path):
    a = np.zeros((4, 4, 4), np.uint8)
    a[..., 0] = 200
    a[..., 3] = 0  # fully transparent: colours are kept as stored (as cv2.imread does)
    Image.fromarray(a).save(tmp_path / "x.jpg", format="PNG")  # PNG under a .jpg name (TACO)
    out = read_image(tmp_path / "x.jpg")
    assert out[..., 0].min() == 200 and out[..., 1:].max() == 0


def test_read_image_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.jpg' does not exist"):
        read_image(tmp_path / "nope.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(DataError, match=r"cannot read image file .*bad\.jpg"):
        read_image(tmp_path / "bad.jpg")


def test_resolve_image_path_extension_case(tmp_path):
    (tmp_path / "batch_2").mkdir()
    (tmp_path / "batch_2" / "img.JPG").write_bytes(b"x")
    (tmp_path / "batch_2" / "other.Jpg").write_bytes(b"x")
    assert resolve_image_path(tmp_path, "batch_2/img.jpg") == tmp_path / "batch_2" / "img.JPG"
    assert resolve_image_path(tmp_path, "batch_2/other.jpg") == tmp_path / "batch_2" / "other.Jpg"
    assert resolve_image_path(tmp_path, "batch_2/IMG.jpg") is None  # only the extension is case-insensitive
    assert resolve_image_path(tmp_path, "batch_9/img.jpg") is None


def test_exif_orientation_6_mask_lands_on_the_object(tmp_path):
    # The displayed image (what annotators saw) is 40 high, 60 wide, a bright object at rows 5..15,
    # columns 35..55. The camera stored it rotated, with EXIF orientation 6 ("rotate 90 CW to show").
    shown = np.full((40, 60, 3), 20, np.uint8)
    shown[5:15, 35:55] = 240
    stored = Image.fromarray(shown).transpose(Image.Transpose.ROTATE_90)  # 60 high, 40 wide
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "photo.jpg", exif=exif, quality=95)
    poly = [35, 5, 55, 5, 55, 15, 35, 15]
    (tmp_path / "ann.json").write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "photo.jpg", "height": 40, "width": 60}],
                "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": [poly], "iscrowd": 0}],
                "categories": [{"id": 1, "name": "can"}],
            }
        )
    )
    s = CocoInstances(tmp_path, tmp_path / "ann.json")[0]
    assert s["image"].shape == (40, 60, 3)
    inside = s["image"][s["masks"][0]]
    assert inside.mean() > 200 and s["image"][~s["masks"][0]].mean() < 60


# --- preprocessing == SamPredictor.set_image ---------------------------------------------------


def _tiny_sam(image_size: int) -> Sam:
    """Upstream Sam with a one-block, 32-wide encoder: only its input is of interest here."""
    emb = image_size // 16
    encoder = ImageEncoderViT(
        img_size=image_size,
        patch_size=16,
        embed_dim=32,
        depth=1,
        num_heads=1,
        out_chans=32,
        window_size=4,
        global_attn_indexes=(),
    )
    prompt = PromptEncoder(
        embed_dim=32, image_embedding_size=(emb, emb), input_image_size=(image_size, image_size), mask_in_chans=4
    )
    decoder = MaskDecoder(
        transformer_dim=32, transformer=TwoWayTransformer(depth=1, embedding_dim=32, mlp_dim=32, num_heads=1)
    )
    return Sam(image_encoder=encoder, prompt_encoder=prompt, mask_decoder=decoder).eval()


@pytest.mark.parametrize("image_size", [1024, 256])  # vit_b's and mini's input sizes
@pytest.mark.parametrize("hw", [(37, 53), (120, 45), (1100, 700)])
def test_preprocess_equals_sam_predictor(image_size, hw):
    sam = _tiny_sam(image_size)
    captured = []

    class Captured(Exception):
        pass

    def grab(module, args):
        captured.append(args[0].clone())
        raise Captured  # the encoder's output is not needed

    sam.image_encoder.register_forward_pre_hook(grab)
    image = np.random.default_rng(hw[0]).integers(0, 256, (*hw, 3), dtype=np.uint8)
    with pytest.raises(Captured):
        SamPredictor(sam).set_image(image)
    ours = SamTransform(image_size).preprocess_image(image)
    assert ours.dtype == torch.float32 and ours.shape == (3, image_size, image_size)
    assert torch.equal(captured[0][0], ours)


@pytest.mark.parametrize("hw", [(37, 53), (300, 200)])
def test_postprocess_equals_sam_and_masks_are_chunked_exactly(hw):
    """Logits back at the original size as upstream ``Sam.postprocess_masks``; the boolean masks,
    upsampled a few at a time to bound memory, equal thresholding all of them at once."""
    sam, tf = _tiny_sam(256), SamTransform(256)
    low = torch.randn(5, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    theirs = sam.postprocess_masks(low, tf.input_size(hw), hw)
    ours = tf.postprocess_logits(low, hw)
    assert ours.shape == (5, 3, *hw)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)  # (N*3, 1) vs (N, 3) channels: rounding only
    one_mask = 4 * (256 * 256 + hw[0] * hw[1])
    for budget in (1, 2 * one_mask, 1 << 30):  # 1 mask, 2 masks, all 15 masks per upsampling
        masks = tf.postprocess_masks(low, hw, 0.0, max_float_bytes=budget)
        assert masks.dtype == torch.bool and torch.equal(masks, ours > 0.0)
