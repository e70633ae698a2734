"""The model-ready dataset used for training and evaluation.

:class:`SamPromptDataset` turns a :class:`~samadapt.data.coco.CocoInstances` into what SAM's
modules consume: the preprocessed image (exactly as ``SamPredictor.set_image`` builds it), box and
point prompts in the model's input frame, and ground-truth masks in the frame of the decoder's
low-resolution logits.

Reproducibility: every random choice (which instances when an image has more than
``max_instances``, box noise, clicks) is drawn from a generator seeded by (seed, epoch, index),
so a sample is the same across runs, on every DDP rank and after resuming, whatever the worker
count or the order in which samples are fetched. Call :meth:`SamPromptDataset.set_epoch` at the
start of each epoch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import ConfigError, DataError
from ..transforms import SamTransform
from .coco import CocoInstances
from .masks import decode_rle, rle_area, rle_box, rle_sampler
from .prompts import PromptConfig, make_prompts

__all__ = ["SamPromptDataset", "check_dataset", "collate_sam", "file_sha1"]


def file_sha1(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha1 of a file's bytes: a cheap, stable content id for an image (cache key)."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()


class SamPromptDataset(Dataset):
    """Images with their instances as SAM inputs, prompts and low-resolution targets.

    Args:
        instances: the images and their instance annotations.
        transform: SAM preprocessing for the model's input size S.
        prompts: how prompts are made (:func:`~samadapt.data.prompts.make_prompts`).
        max_instances: at most this many instances per image (chosen at random, reproducibly); SAM's
            decoder runs once per prompt, so this bounds memory. None keeps all.
        seed: base seed of every random choice.
        load_image: False leaves out ``image`` (e.g. when image embeddings are cached); the image
            file is then only hashed, never decoded.
        image_keys: put ``image_key`` (the sha1 of the image file, the embedding cache's key) in each
            sample; default: only when ``load_image`` is False, i.e. when embeddings are read from a
            cache; otherwise no image file is hashed (:meth:`image_key` still hashes on request).

    Item ``i`` is a dict (N instances, P = points per instance, S = input size):
        ``image``: float32 (3, S, S), only if ``load_image``;
        ``image_key``: str, sha1 of the image file's bytes, only if ``image_keys``;
        ``boxes``: float32 (N, 4) XYXY in the input frame, or None if ``prompts.use_boxes`` is False;
        ``points``: float32 (N, P, 2) XY in the input frame, or None if P == 0;
        ``point_labels``: int64 (N, P) (1 positive, 0 negative, -1 padding), or None;
        ``gt_masks``: float32 (N, S/4, S/4) in {0, 1}, aligned with the decoder's low-res logits
        (``SamTransform.masks_to_low_res`` of the full mask, computed from the mask's RLE without a
        full-resolution copy: see :meth:`~samadapt.transforms.SamTransform.sampled_to_low_res`);
        ``category_ids``: int64 (N,); ``image_id``: int; ``index``: int (= i);
        ``original_size``: int64 (2,) (H, W); ``input_size``: int64 (2,) (h, w) after resizing.
    """

    def __init__(
        self,
        instances: CocoInstances,
        transform: SamTransform,
        prompts: PromptConfig,
        *,
        max_instances: int | None = 16,
        seed: int = 0,
        load_image: bool = True,
        image_keys: bool | None = None,
    ) -> None:
        if max_instances is not None and (not isinstance(max_instances, int) or max_instances < 1):
            raise ConfigError(f"max_instances must be a positive integer or None, got {max_instances!r}")
        if not isinstance(prompts, PromptConfig):
            raise ConfigError(f"prompts must be a PromptConfig, got {type(prompts).__name__}")
        self.instances = instances
        self.transform = transform
        self.prompts = prompts
        self.max_instances = max_instances
        self.seed = int(seed)
        self.load_image = load_image
        self.image_keys = (not load_image) if image_keys is None else bool(image_keys)
        self.epoch = 0
        self._sha1: dict[str, str] = {}

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random choices the samples use."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.instances)

    def rng(self, index: int) -> np.random.Generator:
        """The generator of sample ``index`` in the current epoch."""
        return np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch, index]))

    def image_key(self, index: int) -> str:
        """sha1 of the image file (memoised per path)."""
        path = str(self.instances.image_path(index))
        key = self._sha1.get(path)
        if key is None:
            key = self._sha1[path] = file_sha1(path)
        return key

    def choose_annotations(self, index: int, rng: np.random.Generator) -> list[dict]:
        """The annotations sample ``index`` uses: all, or ``max_instances`` of them at random."""
        anns = self.instances.instance_annotations(index)
        if self.max_instances is not None and len(anns) > self.max_instances:
            pick = np.sort(rng.choice(len(anns), size=self.max_instances, replace=False))
            anns = [anns[k] for k in pick]
        return anns

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} images")
        rng = self.rng(index)
        ds, tf, pc = self.instances, self.transform, self.prompts
        hw = ds.original_size(index)
        anns = self.choose_annotations(index, rng)
        p = pc.points_per_instance
        s4 = tf.low_res_size

        # One instance at a time, from its RLE: the box and the low-res target never need the
        # full-resolution mask (a 6000x5312 TACO mask is 32 MB as bool, 127 MB as float32); only
        # click prompts decode it (as bool).
        boxes, points, labels, targets, cats = [], [], [], [], []
        for ann, rle in zip(anns, ds.annotation_rles(index, anns)):
            if rle_area(rle) == 0:
                continue  # counted as empty_mask by annotation_rles
            tight = rle_box(rle)
            prompt = make_prompts(lambda rle=rle: decode_rle(rle)[None], pc, rng, boxes=tight[None], image_hw=hw)
            boxes.append(prompt["boxes"])
            if p:
                points.append(prompt["points"])
                labels.append(prompt["labels"])
            targets.append(tf.sampled_to_low_res(rle_sampler(rle), tuple(int(v) for v in tight), hw))
            cats.append(ann["category_id"])

        n = len(targets)
        sample: dict[str, Any] = {}
        if self.load_image:
            sample["image"] = tf.preprocess_image(ds.load_image(index))
        if self.image_keys:
            sample["image_key"] = self.image_key(index)
        if pc.use_boxes:
            b = np.concatenate(boxes) if n else np.zeros((0, 4), np.float32)
            sample["boxes"] = tf.apply_boxes(b, hw)
        else:
            sample["boxes"] = None
        if p:
            c = np.concatenate(points) if n else np.zeros((0, p, 2), np.float32)
            sample["points"] = tf.apply_points(c, hw).reshape(n, p, 2)
            sample["point_labels"] = torch.from_numpy(np.concatenate(labels) if n else np.zeros((0, p), np.int64))
        else:
            sample["points"] = sample["point_labels"] = None
        sample["gt_masks"] = torch.cat(targets) if n else torch.zeros(0, s4, s4)
        sample["category_ids"] = torch.as_tensor(cats, dtype=torch.int64)
        sample["image_id"] = int(ds.image_info(index)["id"])
        sample["index"] = index
        sample["original_size"] = torch.tensor(hw, dtype=torch.int64)
        sample["input_size"] = torch.tensor(tf.input_size(hw), dtype=torch.int64)
        return sample


def collate_sam(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch samples of :class:`SamPromptDataset`.

    ``images``: float32 (B, 3, S, S) when the samples have images; ``image_id``, ``index``: int64 (B,);
    ``original_size``, ``input_size``: int64 (B, 2); every other field (prompts and targets, whose
    instance count differs per image): a list of B entries.
    """
    if not samples:
        raise DataError("collate_sam got an empty batch")
    out: dict[str, Any] = {}
    if "image" in samples[0]:
        out["images"] = torch.stack([s["image"] for s in samples])
    for key in ("image_id", "index"):
        out[key] = torch.tensor([s[key] for s in samples], dtype=torch.int64)
    for key in ("original_size", "input_size"):
        out[key] = torch.stack([s[key] for s in samples])
    for key in samples[0]:
        if key not in out and key != "image":
            out[key] = [s[key] for s in samples]
    return out


def check_dataset(dataset: SamPromptDataset, n: int = 2) -> None:
    """Load ``n`` samples (spread over the dataset) before training starts and check their shapes.

    Raises:
        DataError: the dataset is empty, or a sample fails to load or is malformed; the message names
            the image and says what went wrong.
    """
    if len(dataset) == 0:
        name = getattr(getattr(dataset, "instances", None), "name", "dataset")
        raise DataError(
            f"{name} has no images: check the dataset root, the split, and the missing_images / empty_images options"
        )
    s = dataset.transform.image_size
    for index in sorted({round(k * (len(dataset) - 1) / max(n - 1, 1)) for k in range(n)}):
        info = dataset.instances.image_info(index)
        where = f"{dataset.instances.name}: sample {index} (image {info['id']}, {info['file_name']!r})"
        try:
            sample = dataset[index]
        except DataError as e:
            raise DataError(f"dataset check failed on {where}: {e}") from e
        except Exception as e:  # anything else is a data problem from the user's point of view
            raise DataError(f"dataset check failed on {where}: {type(e).__name__}: {e}") from e
        n_inst = sample["gt_masks"].shape[0]
        problems = []
        if "image" in sample and tuple(sample["image"].shape) != (3, s, s):
            problems.append(f"image shape {tuple(sample['image'].shape)} != (3, {s}, {s})")
        if tuple(sample["gt_masks"].shape[1:]) != (s // 4, s // 4):
            problems.append(f"gt_masks shape {tuple(sample['gt_masks'].shape)}")
        if sample["boxes"] is not None and (
            sample["boxes"].shape != (n_inst, 4) or not torch.isfinite(sample["boxes"]).all()
        ):
            problems.append(f"boxes {tuple(sample['boxes'].shape)} not ({n_inst}, 4) or not finite")
        if "image" in sample and not torch.isfinite(sample["image"]).all():
            problems.append("image has non-finite values")
        if problems:
            raise DataError(f"dataset check failed on {where}: " + "; ".join(problems))
