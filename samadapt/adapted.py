"""``AdaptedSam``: an upstream ``Sam`` with a strategy applied, a differentiable batched forward for
training and ``predict`` for inference."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from segment_anything.modeling import Sam
from torch import nn

from .errors import ConfigError
from .models.decoding import set_shared_image_decoding, shared_image_decoding_enabled
from .models.family import family_of
from .models.fast import (
    activation_checkpointing_enabled,
    disable_activation_checkpointing,
    disable_sdpa_attention,
    enable_activation_checkpointing,
    enable_sdpa_attention,
    sdpa_attention_enabled,
)
from .models.registry import BaseInfo, base_info
from .strategies.base import StrategyConfig, get_strategy
from .transforms import SamTransform, check_boxes, check_points


@dataclass
class SamOutput:
    """Decoder output for N prompts over B images.

    low_res_logits: (N, M, S/4, S/4) mask logits (mask = logits > 0); M = 3 with multimask, else 1.
    iou_predictions: (N, M) the IoU head's estimate of each mask's IoU.
    image_index: (N,) int64, the image of each prompt.
    image_embeddings: (B, C, S/16, S/16) the embeddings decoded (set by ``forward``), so that further
        rounds of prompts on the same images (corrective clicks) reuse them instead of encoding again.
    """

    low_res_logits: torch.Tensor
    iou_predictions: torch.Tensor
    image_index: torch.Tensor
    image_embeddings: torch.Tensor | None = None


def _as_list(x, n: int) -> list:
    """Per-image prompts as a list: None for every image, or one tensor given for a single image."""
    if x is None:
        return [None] * n
    if isinstance(x, torch.Tensor) and n == 1 and x.ndim in (2, 3):
        return [x]
    return list(x)


def _mask_inputs(mask_inputs, bsz: int, n_total: int, side: int, device) -> torch.Tensor | None:
    """Per-image mask prompts -> one (N, 1, side, side) tensor in prompt order, or None."""
    if mask_inputs is None:
        return None
    parts = _as_list(mask_inputs, bsz) if not (isinstance(mask_inputs, torch.Tensor) and bsz == 1) else [mask_inputs]
    if len(parts) != bsz or any(m is None for m in parts):
        raise ConfigError(f"mask_inputs must give a (N_i, 1, {side}, {side}) tensor for each of the {bsz} images")
    masks = torch.cat(parts).to(device)
    if tuple(masks.shape) != (n_total, 1, side, side):
        raise ConfigError(
            f"mask_inputs have shape {tuple(masks.shape)} in all; the prompts need ({n_total}, 1, "
            f"{side}, {side}) (one low-res mask per prompt)"
        )
    return masks


class AdaptedSam(nn.Module):
    """An upstream ``Sam`` (``.sam``) with an adaptation strategy applied in place.

    ``segment_anything.SamPredictor(model.sam)`` and ``SamAutomaticMaskGenerator(model.sam)`` work
    unchanged on it. Build one with :func:`samadapt.adapt` or :func:`samadapt.load`.
    """

    def __init__(self, sam: Sam, *, strategy: str, config: StrategyConfig, base: BaseInfo) -> None:
        super().__init__()
        self.sam = sam
        self.family = family_of(sam)  # SAM 1 or SAM 2.1: encode, decode, transform, parts
        self.strategy = strategy
        self.config = config
        self.base = base
        self.max_prompts_per_pass: int | None = 256
        self.encoder_images_seen = 0
        self.auto_calibration = None  # automatic-mask thresholds (samadapt.segment.calibration), saved with the adapter

    # ------------------------------------------------------------------ description
    @property
    def model_type(self) -> str:
        return self.base.model_type

    @property
    def card(self):
        return self.family.card(self.base.model_type)

    @property
    def transform(self) -> SamTransform:
        """SAM 1's :class:`SamTransform`, or SAM 2.1's ``Sam2Transform`` (the same methods)."""
        if self.family.name == "sam":  # samadapt.transforms sits beside samadapt.models, not below
            return SamTransform(self.sam.image_encoder.img_size)
        return self.family.transform(self.sam)

    @property
    def device(self) -> torch.device:
        return self.family.device(self.sam)

    @property
    def dtype(self) -> torch.dtype:
        return self.family.dtype(self.sam)

    @property
    def mask_threshold(self) -> float:
        """A mask is its logits above this (0.0 for every official model)."""
        return self.family.mask_threshold(self.sam)

    @property
    def encoder_is_frozen(self) -> bool:
        """True when no gradient flows into the image encoder, so its output may be cached."""
        return not get_strategy(self.strategy).uses_image_encoder_gradients(self.config)

    def trainable_named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """(name, parameter) for every trainable parameter, names relative to ``.sam``."""
        return [(n, p) for n, p in self.sam.named_parameters() if p.requires_grad]

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.sam.parameters() if p.requires_grad or not trainable_only)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors an adapter file holds: every trainable parameter, detached, by name."""
        return {n: p.detach() for n, p in self.trainable_named_parameters()}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        """Copy tensors into the trainable parameters of the same names (exactly those names)."""
        params = dict(self.trainable_named_parameters())
        if set(state) != set(params):
            missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
            raise ConfigError(f"trainable state does not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")
        with torch.no_grad():
            for name, tensor in state.items():
                params[name].copy_(tensor)

    def extra_repr(self) -> str:
        return (
            f"model_type={self.model_type!r}, strategy={self.strategy!r}, "
            f"trainable={self.num_parameters(True):,} / {self.num_parameters():,}"
        )

    # ------------------------------------------------------------------ fast paths
    def set_fast_paths(
        self,
        *,
        sdpa_attention: bool | None = None,
        activation_checkpointing: bool | None = None,
        shared_decoding: bool | None = None,
    ) -> "AdaptedSam":
        """Switch the fast paths (``samadapt.models.fast``, ``samadapt.models.decoding``); None
        leaves a switch as it is. All keep upstream's numbers; they change speed and memory only.

        Args:
            sdpa_attention: encoder attention through ``scaled_dot_product_attention`` (on after
                :func:`adapt`).
            activation_checkpointing: recompute each encoder block in backward instead of keeping
                its activations (off by default: it costs about one more encoder forward per step;
                it only matters when training ``lora`` or ``adapter``).
            shared_decoding: compute the decoder's first-block image projections once per image
                instead of once per prompt (on by default).

        The fast paths are SAM 1's: on SAM 2.1 switching one on raises :class:`ConfigError`.
        """
        if not self.family.fast_paths and any((sdpa_attention, activation_checkpointing, shared_decoding)):
            raise ConfigError(
                "the fast paths (SDPA attention, activation checkpointing, shared decoding) are SAM 1's; "
                f"this model is {self.family.label}"
            )
        if sdpa_attention is not None:
            (enable_sdpa_attention if sdpa_attention else disable_sdpa_attention)(self.sam)
        if activation_checkpointing is not None:
            (enable_activation_checkpointing if activation_checkpointing else disable_activation_checkpointing)(
                self.sam
            )
        if shared_decoding is not None:
            set_shared_image_decoding(self.sam.mask_decoder, shared_decoding)
        return self

    @property
    def sdpa_attention(self) -> bool:
        """True when the encoder attention runs on the SDPA path."""
        return self.family.fast_paths and sdpa_attention_enabled(self.sam)

    @property
    def activation_checkpointing(self) -> bool:
        """True when encoder blocks are checkpointed."""
        return self.family.fast_paths and activation_checkpointing_enabled(self.sam)

    @property
    def shared_decoding(self) -> bool:
        """True when the decoder shares per-image work between the prompts of one image."""
        return self.family.fast_paths and shared_image_decoding_enabled(self.sam.mask_decoder)

    # ------------------------------------------------------------------ differentiable path
    def encode(self, images: torch.Tensor):
        """Preprocessed images (B, 3, S, S) -> image embeddings (B, C, S/16, S/16) (SAM 1), or
        ``Sam2Features`` (SAM 2.1: the embedding and two high-resolution maps)."""
        self.encoder_images_seen += images.shape[0]  # lets tests and logs prove the cache works
        return self.family.encode(self.sam, images)

    def decode(
        self,
        image_embeddings: torch.Tensor,
        boxes: Sequence[torch.Tensor | None] | None = None,
        points: Sequence[torch.Tensor | None] | None = None,
        point_labels: Sequence[torch.Tensor | None] | None = None,
        *,
        multimask: bool = False,
        mask_inputs: Sequence[torch.Tensor | None] | None = None,
    ) -> SamOutput:
        """Decode the prompts of B images in one pass (chunked by ``max_prompts_per_pass``).

        Args:
            image_embeddings: (B, C, h, w).
            boxes: per image a (N_i, 4) XYXY tensor in the model's input frame, or None.
            points: per image (N_i, P, 2) XY in the input frame, or None; ``point_labels`` (N_i, P)
                with 1 = foreground, 0 = background. Every image must use the same prompt kinds
                (and the same P), since prompts of all images are encoded together.
            mask_inputs: per image (N_i, 1, S/4, S/4) mask prompts (SAM's interactive input: the
                previous prediction's low-res logits), or None for none; all images or none.
        """
        embedding = self.family.embedding(image_embeddings)  # SAM 2.1's features: their image embedding
        bsz = embedding.shape[0]
        boxes_l, points_l, labels_l = _as_list(boxes, bsz), _as_list(points, bsz), _as_list(point_labels, bsz)
        if not (len(boxes_l) == len(points_l) == len(labels_l) == bsz):
            raise ConfigError(f"got prompts for {len(boxes_l)}/{len(points_l)} images but {bsz} embeddings")
        counts, box_parts, pt_parts, lb_parts = [], [], [], []
        for b, p, lab in zip(boxes_l, points_l, labels_l):
            if (p is None) != (lab is None):
                raise ConfigError("points and point_labels must be given together")
            n = b.shape[0] if b is not None else (p.shape[0] if p is not None else 0)
            if b is not None and p is not None and p.shape[0] != n:
                raise ConfigError(f"an image has {n} boxes but {p.shape[0]} point prompts; they must match")
            counts.append(n)
            if b is not None:
                box_parts.append(b.reshape(-1, 4))
            if p is not None:
                pt_parts.append(p)
                lb_parts.append(lab)
        device = embedding.device
        # output_size: no device sync, and meta tensors (which hold no counts) work too
        image_index = torch.repeat_interleave(
            torch.arange(bsz, device=device), torch.tensor(counts, device=device), output_size=sum(counts)
        )
        n_total = int(image_index.numel())
        card_low = 4 * embedding.shape[-1]
        m = 3 if multimask else 1
        if n_total == 0:
            z = embedding.new_zeros
            return SamOutput(z(0, m, card_low, card_low), z(0, m), image_index)
        all_boxes = torch.cat(box_parts).to(device) if box_parts else None
        all_points = torch.cat(pt_parts).to(device) if pt_parts else None
        all_labels = torch.cat(lb_parts).to(device) if lb_parts else None
        all_masks = _mask_inputs(mask_inputs, bsz, n_total, card_low, device)
        if (all_boxes is not None and all_boxes.shape[0] != n_total) or (
            all_points is not None and all_points.shape[0] != n_total
        ):
            raise ConfigError("every image must use the same prompt kinds (all boxes, all points, or both)")

        logits, ious = self.family.decode(
            self.sam,
            image_embeddings,
            image_index,
            points=all_points,
            labels=all_labels,
            boxes=all_boxes,
            mask_inputs=all_masks,
            multimask=multimask,
            chunk=self.max_prompts_per_pass or n_total,
        )
        return SamOutput(logits, ious, image_index)

    def forward(
        self,
        images: torch.Tensor | None = None,
        boxes: Sequence[torch.Tensor | None] | None = None,
        points: Sequence[torch.Tensor | None] | None = None,
        point_labels: Sequence[torch.Tensor | None] | None = None,
        *,
        image_embeddings: torch.Tensor | None = None,
        multimask: bool = False,
        mask_inputs: Sequence[torch.Tensor | None] | None = None,
    ) -> SamOutput:
        """Differentiable forward (upstream ``Sam.forward`` runs under ``no_grad``).

        images: (B, 3, S, S) float, preprocessed by :class:`SamTransform`, with prompts in the
        model's input frame as in :meth:`decode`; or a list of B RGB uint8 (H, W, 3) arrays (one
        array for one image) with prompts in their pixels, as :meth:`predict` takes them
        (preprocessed exactly as ``predict`` does); or ``image_embeddings`` (B, C, S/16, S/16)
        computed earlier (the embedding cache of a frozen encoder). The output's low-res logits
        are in the input frame: ``model.transform.postprocess_masks`` brings them to an image.
        ``mask_inputs``: mask prompts as in :meth:`decode`. The output carries the image embeddings
        it decoded (``SamOutput.image_embeddings``).
        """
        if (images is None) == (image_embeddings is None):
            raise ConfigError("pass exactly one of images or image_embeddings")
        if images is not None and not isinstance(images, torch.Tensor):
            images, boxes, points, point_labels = self._preprocess_arrays(images, boxes, points, point_labels)
        elif images is not None and (images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point()):
            raise ConfigError(
                f"forward takes images as a float tensor (B, 3, S, S) preprocessed by model.transform, or as a list "
                f"of RGB uint8 (H, W, 3) arrays; got a {images.dtype} tensor of shape {tuple(images.shape)}"
            )
        if image_embeddings is None:
            image_embeddings = self.encode(images)
        out = self.decode(image_embeddings, boxes, points, point_labels, multimask=multimask, mask_inputs=mask_inputs)
        out.image_embeddings = image_embeddings
        return out

    def _preprocess_arrays(self, images, boxes, points, labels):
        """uint8 (H, W, 3) images with prompts in their pixels -> the (B, 3, S, S) batch and
        prompts in the input frame that :meth:`decode` takes (as :meth:`predict` prepares them)."""
        if isinstance(images, np.ndarray) and images.ndim == 3:
            images = [images]
            boxes, points, labels = (
                [x] if x is not None and not isinstance(x, (list, tuple)) else x for x in (boxes, points, labels)
            )
        n = len(images)
        images = [self._check_image(im, f"images[{i}]" if n > 1 else "image") for i, im in enumerate(images)]
        boxes_l, points_l, labels_l = (list(x) if x is not None else [None] * n for x in (boxes, points, labels))
        if not (len(boxes_l) == len(points_l) == len(labels_l) == n):
            raise ConfigError(f"got {n} images but prompts for {len(boxes_l)}; give one (N_i, 4) box array per image")
        prompts = [
            self._prompts_for(im.shape, b, p, lab, f"images[{i}]: " if n > 1 else "")
            for i, (im, b, p, lab) in enumerate(zip(images, boxes_l, points_l, labels_l))
        ]
        x = torch.stack([self.transform.preprocess_image(im) for im in images]).to(self.device, self.dtype)
        dev = self.device
        move = lambda t: None if t is None else t.to(dev)  # noqa: E731
        return (x, [move(p[1]) for p in prompts], [move(p[2]) for p in prompts], [move(p[3]) for p in prompts])

    # ------------------------------------------------------------------ inference
    def _prompts_for(self, image_shape, boxes, points, labels, where: str = ""):
        """Prompts in pixels of one image -> (original size, boxes, points, labels) in the input frame;
        a box or point that cannot be meant (inverted, outside the image) is refused, named with its
        index (``where``: which image of a batch)."""
        original_size = tuple(int(s) for s in image_shape[:2])
        tf = self.transform
        b = None
        if boxes is not None:
            b = tf.apply_boxes(check_boxes(boxes, original_size, f"{where}boxes"), original_size)
        p = lab = None
        if points is not None:
            if labels is None:
                raise ConfigError("points need labels (1 = foreground, 0 = background)")
            p = torch.as_tensor(np.asarray(points), dtype=torch.float32)
            lab = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
            if p.ndim == 2:  # (P, 2): one prompt made of P points, as SamPredictor.predict takes them
                p, lab = p[None], lab.reshape(1, -1)
            if p.ndim != 3 or p.shape[-1] != 2 or lab.shape != p.shape[:2]:
                raise ConfigError(
                    f"points must be (N, P, 2) with labels (N, P); got {tuple(p.shape)} and {tuple(lab.shape)}"
                )
            check_points(p.numpy(), lab.numpy(), original_size, f"{where}points")
            p = tf.apply_points(p, original_size)
        if b is None and p is None:
            raise ConfigError("predict needs boxes or points")
        return original_size, b, p, lab

    def _check_embeddings(self, embeddings, n: int) -> None:
        want = self.family.embedding_shape(self.sam)
        if len(embeddings) != n:
            raise ConfigError(f"got {n} images but {len(embeddings)} image embeddings")
        for i, e in enumerate(embeddings):
            if tuple(e.shape) != want:
                raise ConfigError(
                    f"image_embeddings[{i}] has shape {tuple(e.shape)}; this {self.model_type!r} model's "
                    f"encoder gives {want}"
                )

    @staticmethod
    def _check_image(image, what: str = "image") -> np.ndarray:
        """``image`` as RGB uint8 (H, W, 3). Grayscale (H, W), RGBA, 16-bit and float arrays (and PIL
        images) are converted as the dataset loader converts image files
        (:func:`samadapt.data.images.as_rgb_array`)."""
        from .data.images import as_rgb_array

        return as_rgb_array(image, what)

    @torch.no_grad()
    def predict(
        self,
        image: np.ndarray,
        boxes: np.ndarray | None = None,
        points: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        multimask: bool = False,
        return_logits: bool = False,
    ):
        """Masks for one RGB uint8 image (H, W, 3).

        Args:
            image: RGB uint8 (H, W, 3); grayscale (H, W) or (H, W, 1), RGBA, uint16 and float arrays are
                converted as the dataset loader converts image files (16-bit values / 257, floats as
                0..1 when their maximum is <= 1, else 0..255; alpha dropped, gray repeated).
            boxes: (N, 4) XYXY in pixels of ``image``. A box that is inverted (x1 < x0 or y1 < y0) or
                wholly outside the image is refused with a ``ConfigError`` naming it and its index.
            points: (N, P, 2) XY pixels with ``labels`` (N, P) (1 foreground, 0 background, -1 padding);
                or (P, 2) with (P,) for one prompt. Points outside the image are refused likewise.
            multimask: return SAM's 3 candidate masks per prompt.

        Returns:
            masks (N, H, W) bool and scores (N,) as numpy arrays ((N, 3, H, W) and (N, 3) with
            multimask); with ``return_logits`` also the low-resolution logits (N, M, S/4, S/4).
        """
        return self.predict_batch(
            [image],
            [boxes],
            None if points is None else [points],
            None if labels is None else [labels],
            multimask=multimask,
            return_logits=return_logits,
        )[0]

    @torch.no_grad()
    def predict_batch(
        self,
        images: Sequence[np.ndarray],
        boxes: Sequence[np.ndarray | None],
        points: Sequence[np.ndarray | None] | None = None,
        labels: Sequence[np.ndarray | None] | None = None,
        *,
        multimask: bool = False,
        return_logits: bool = False,
        batch_size: int = 8,
        image_embeddings: Sequence[torch.Tensor] | None = None,
    ) -> list[tuple]:
        """:meth:`predict` for several images: encoder in batches of ``batch_size``, one decoder pass
        per batch over all their prompts. Returns one ``predict`` result per image.

        ``image_embeddings``: one (C, S/16, S/16) embedding per image that this model's encoder, as it
        is now, computed earlier (e.g. an embedding cache of a frozen encoder; on SAM 2.1 each
        image's ``Sam2Features``, or the features of all images in one); the encoder is then
        skipped, and ``images`` only give each image's size."""
        n = len(images)
        points = points if points is not None else [None] * n
        labels = labels if labels is not None else [None] * n
        if not (len(boxes) == len(points) == len(labels) == n):
            raise ConfigError(f"got {n} images but prompts for {len(boxes)}")
        if image_embeddings is not None:
            self._check_embeddings(image_embeddings, n)
        tf, dtype = self.transform, self.dtype
        results: list[tuple] = []
        for start in range(0, n, batch_size):
            idx = range(start, min(n, start + batch_size))
            imgs = [self._check_image(images[i], f"images[{i}]" if n > 1 else "image") for i in idx]
            prompts = [
                self._prompts_for(imgs[j].shape, boxes[i], points[i], labels[i], f"images[{i}]: " if n > 1 else "")
                for j, i in enumerate(idx)
            ]
            if image_embeddings is None:
                emb = self.encode(torch.stack([tf.preprocess_image(im) for im in imgs]).to(self.device, dtype))
            else:
                emb = self.family.stack([image_embeddings[i] for i in idx]).to(self.device, dtype)
            out = self.decode(
                emb, [p[1] for p in prompts], [p[2] for p in prompts], [p[3] for p in prompts], multimask=multimask
            )
            for j, (original_size, *_rest) in enumerate(prompts):
                sel = out.image_index == j
                low = out.low_res_logits[sel].float()
                masks = tf.postprocess_masks(low, original_size, self.mask_threshold)
                scores = out.iou_predictions[sel].float()
                if not multimask:
                    masks, scores = masks[:, 0], scores[:, 0]
                res = (masks.cpu().numpy(), scores.cpu().numpy())
                results.append(res + (low.cpu().numpy(),) if return_logits else res)
        return results


def adapt(sam: Sam, strategy: str, *, sdpa_attention: bool = True, **options) -> AdaptedSam:
    """Apply a strategy to an upstream ``Sam`` in place and wrap it.

    ``options`` are the strategy's config fields (for ``lora``: rank, alpha, dropout, targets,
    train_decoder; for ``adapter``: bottleneck_ratio, scale, placement, prompt_generator, ...). They
    are validated before ``sam`` is touched. ``sdpa_attention`` chooses the encoder attention path
    (:meth:`AdaptedSam.set_fast_paths`; SDPA gives upstream's numbers, so it is on by default).
    """
    if getattr(sam, "samadapt_strategy", None) is not None:
        raise ConfigError(
            f"this Sam is already adapted with {sam.samadapt_strategy!r}; build a fresh base with build_sam"
        )
    strat = get_strategy(strategy)
    config = strat.make_config(**options)
    base = base_info(sam)
    strat.apply(sam, config)
    sam.samadapt_strategy = strategy
    model = AdaptedSam(sam, strategy=strategy, config=config, base=base)
    if not model.family.fast_paths:  # SAM 2.1: upstream's attention as it is
        return model
    return model.set_fast_paths(sdpa_attention=sdpa_attention)
