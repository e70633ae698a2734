"""The class head: which dataset category a mask shows, read from the mask decoder's output token.

SAM's mask decoder ends with one output token per mask; a hypernetwork MLP turns token ``i`` into
the weights that make mask ``i`` from the upscaled image features. That token is what the decoder
knows about the object it segments, so a small MLP on it (:class:`ClassHead`, upstream's
``segment_anything.modeling.mask_decoder.MLP``) predicts the object's category. The head reads the
single-mask token (token 0) of a box prompt, the prompt it is trained on; masks from points or from
the automatic point grid are labelled through their bounding box (:func:`classify_boxes`).

The head is a submodule of the adapted ``Sam`` (``sam.class_head``), so its parameters are
trainable tensors like the strategy's: the optimizer, ``--resume`` state, adapter file and strict
loading handle them with no special case (:class:`ClassHeadPart`, a registered model part, records
the category list beside them). Whether a trained head beats always answering the most frequent
class is :mod:`samadapt.segment.head_check`. The decoder's tokens are read with a forward pre-hook on the first hypernetwork MLP
(:class:`MaskTokenCapture`), which runs in upstream's ``MaskDecoder`` and in samadapt's batched
decoding alike, so no decoder code is copied or changed.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from segment_anything.modeling.mask_decoder import MLP
from torch import nn

from ...errors import ConfigError, TrainingError
from .base import ModelPart, register_part

__all__ = [
    "CLASS_HEAD",
    "ClassHead",
    "MaskTokenCapture",
    "attach_class_head",
    "class_head_of",
    "classify_boxes",
    "ClassHeadPart",
    "loss_with_class_head",
    "require_class_head",
]

#: the attribute of ``Sam`` that holds the head; its parameters are named ``class_head.*``
CLASS_HEAD = "class_head"
#: the mask token the head reads: the single-mask output of a box prompt
TOKEN_INDEX = 0


class ClassHead(nn.Module):
    """An MLP from a mask token (N, C) to category logits (N, K).

    Args:
        token_dim: C, the decoder's transformer dimension (``mask_decoder.transformer_dim``).
        categories: the K categories as ``{id: name}`` in the order of the logits.
        hidden_dim, num_layers: of the MLP (default: C wide, 2 layers).
    """

    def __init__(
        self,
        token_dim: int,
        categories: Mapping[int, str],
        *,
        hidden_dim: int | None = None,
        num_layers: int = 2,
        pool_dim: int = 0,
    ) -> None:
        super().__init__()
        if not categories:
            raise ConfigError("a class head needs at least one category; the dataset has none")
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
            raise ConfigError(f"`num_layers` of the class head should be a positive integer, got {num_layers!r}")
        self.category_ids = [int(k) for k in categories]
        self.category_names = [str(categories[k]) for k in categories]
        if isinstance(pool_dim, bool) or not isinstance(pool_dim, int) or pool_dim < 0:
            raise ConfigError(f"`pool_dim` of the class head should be an integer >= 0, got {pool_dim!r}")
        self.token_dim = int(token_dim)
        self.pool_dim = pool_dim
        self.hidden_dim = int(hidden_dim or token_dim)
        self.num_layers = num_layers
        self.mlp = MLP(self.token_dim + pool_dim, self.hidden_dim, len(self.category_ids), num_layers)
        self._index = {c: i for i, c in enumerate(self.category_ids)}
        #: its held-out accuracy against the most frequent class (:func:`validate_class_head`), once measured
        self.validation: dict[str, Any] | None = None

    @property
    def categories(self) -> dict[int, str]:
        return dict(zip(self.category_ids, self.category_names))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Features (N, C [+ P]) of :meth:`MaskTokenCapture.features` -> logits (N, K), computed in
        the head's dtype (fp32 under mixed precision)."""
        return self.mlp(tokens.to(self.mlp.layers[0].weight.dtype))

    def targets(self, category_ids: torch.Tensor) -> torch.Tensor:
        """Dataset category ids (N,) -> class indices (N,) int64; an id the head lacks is an error."""
        ids = [int(c) for c in category_ids.reshape(-1).tolist()]
        unknown = sorted({c for c in ids if c not in self._index})
        if unknown:
            raise TrainingError(
                f"instances of category id(s) {unknown} are not among the class head's categories {self.category_ids}"
            )
        return torch.tensor([self._index[c] for c in ids], dtype=torch.int64, device=category_ids.device)

    def extra_repr(self) -> str:
        pooled = f" + {self.pool_dim} mask-pooled" if self.pool_dim else ""
        return f"{self.token_dim}{pooled} -> {len(self.category_ids)} categories"


def class_head_of(model) -> ClassHead | None:
    """The class head of an :class:`~samadapt.adapted.AdaptedSam` (or a ``Sam``), or None."""
    sam = getattr(model, "sam", model)
    head = getattr(sam, CLASS_HEAD, None)
    return head if isinstance(head, ClassHead) else None


def require_class_head(model, what: str = "labels") -> ClassHead:
    """The model's class head, or the error that says how to get one."""
    head = class_head_of(model)
    if head is None:
        raise ConfigError(
            f"{what} were asked for, but this model has no class head: train the adapter with "
            f"--classify (samadapt train --classify ...), or leave out --classify to get class-agnostic "
            f"masks"
        )
    return head


def pooled_dim(sam) -> int:
    """Channels of the image features the head pools under the object's mask: the decoder's image
    tokens after its two-way transformer (``transformer_dim``), the input of its upscaling."""
    return int(sam.mask_decoder.transformer_dim)


def attach_class_head(model, categories: Mapping[int, str], **kwargs: Any) -> ClassHead:
    """Give ``model`` (an ``AdaptedSam``) a new, trainable class head for ``categories`` ({id: name}).

    Attach it after :func:`samadapt.adapt` (the strategy freezes what it does not train) and before
    the optimizer is built. Returns the head."""
    sam = model.sam
    if model.family.name != "sam":
        raise ConfigError(
            f"the class head (--classify) reads SAM 1's mask decoder; this model is {model.family.label}: "
            "train without --classify"
        )
    if class_head_of(model) is not None:
        raise ConfigError("this model has a class head already")
    kwargs.setdefault("pool_dim", pooled_dim(sam))
    head = ClassHead(sam.mask_decoder.transformer_dim, categories, **kwargs)
    head.to(device=sam.pixel_mean.device)
    sam.add_module(CLASS_HEAD, head)
    return head


class MaskTokenCapture:
    """``with MaskTokenCapture(sam) as cap:`` records, for every prompt decoded inside the block (in
    decoding order: chunks and images concatenated as the decoder saw them, still attached to the
    graph), the decoder's mask token :data:`TOKEN_INDEX` and what the head pools with it: the
    decoder's image tokens after its two-way transformer (the input of ``output_upscaling``), the
    upscaled features and the token's hypernetwork output, whose product is the token's mask. Hooks
    on upstream modules (``output_hypernetworks_mlps[0]``, ``output_upscaling``) serve upstream's
    ``MaskDecoder`` and samadapt's batched decoding alike."""

    def __init__(self, sam) -> None:
        self.mlp = sam.mask_decoder.output_hypernetworks_mlps[TOKEN_INDEX]
        self.upscaling = sam.mask_decoder.output_upscaling
        self.parts: list[torch.Tensor] = []
        self.hyper: list[torch.Tensor] = []
        self.src: list[torch.Tensor] = []
        self.upscaled: list[torch.Tensor] = []
        self._handles: list = []

    def __enter__(self) -> "MaskTokenCapture":
        self.parts, self.hyper, self.src, self.upscaled = [], [], [], []
        self._handles = [
            self.mlp.register_forward_pre_hook(lambda _module, args: self.parts.append(args[0])),
            self.mlp.register_forward_hook(lambda _module, _args, out: self.hyper.append(out)),
            self.upscaling.register_forward_pre_hook(lambda _module, args: self.src.append(args[0])),
            self.upscaling.register_forward_hook(lambda _module, _args, out: self.upscaled.append(out)),
        ]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()

    def tokens(self, calls: int | None = None) -> torch.Tensor:
        """(N, C) the mask tokens (of the first ``calls`` decoder calls; default all)."""
        parts = self.parts[:calls]
        if not parts:
            return torch.zeros(0, self.mlp.layers[0].in_features)
        return torch.cat(parts)

    def masks(self, calls: int | None = None) -> torch.Tensor:
        """(N, 4h, 4w) each prompt's single-mask probability (the sigmoid of its low-res logits)."""
        return torch.cat(
            [
                torch.sigmoid(torch.einsum("np,nphw->nhw", hyper, up))
                for hyper, up in zip(self.hyper[:calls], self.upscaled[:calls])
            ]
        )

    def pooled(self, calls: int | None = None) -> torch.Tensor:
        """(N, C) the decoder's image tokens averaged under each prompt's own mask (pooled to their
        h x w grid, and held constant so that the class loss does not reshape the masks): what the
        object looks like, beside what the token says about it."""
        if not self.parts[:calls]:
            return torch.zeros(0, self.mlp.layers[0].in_features)
        src = torch.cat(self.src[:calls])  # (N, C, h, w)
        weight = F.adaptive_avg_pool2d(self.masks(calls).detach()[:, None], src.shape[-2:]).flatten(1)  # (N, hw)
        return torch.einsum("nh,nch->nc", weight, src.flatten(2)) / weight.sum(-1, keepdim=True).clamp_min(1e-6)

    def features(self, head: "ClassHead", limit: int | None = None) -> torch.Tensor:
        """The input ``head`` reads: the tokens, with the mask-pooled features when it has ``pool_dim``;
        of the first ``limit`` prompts decoded (default all)."""
        calls, seen = len(self.parts), 0
        if limit is not None:
            calls = 0
            while calls < len(self.parts) and seen < limit:
                seen += self.parts[calls].shape[0]
                calls += 1
        out = torch.cat([self.tokens(calls), self.pooled(calls)], dim=1) if head.pool_dim else self.tokens(calls)
        return out if limit is None else out[:limit]


@torch.no_grad()
def classify_boxes(model, image_embeddings: torch.Tensor, boxes: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Class probabilities of box prompts.

    Args:
        model: an ``AdaptedSam`` with a class head.
        image_embeddings: (B, C, h, w).
        boxes: per image (N_i, 4) XYXY in the model's input frame.

    Returns:
        per image (N_i, K) float32 probabilities (softmax over the head's categories).
    """
    head = require_class_head(model)
    counts = [int(b.shape[0]) for b in boxes]
    if sum(counts) == 0:
        return [torch.zeros(n, len(head.category_ids)) for n in counts]
    with MaskTokenCapture(model.sam) as cap:
        model.decode(image_embeddings, boxes=list(boxes))
    probs = head(cap.features(head)).float().softmax(-1).cpu()
    return list(probs.split(counts))


def loss_with_class_head(model, batch: Mapping[str, Any], step: Callable[[], Any], *, weight: float = 1.0):
    """Run a training ``step`` (which returns a :class:`~samadapt.training.losses.LossOutput`) and,
    when ``model`` has a class head, add the cross-entropy of its predictions for the step's first
    prompt of each instance against ``batch["category_ids"]`` (per image (N_i,), in instance order).
    A step with click rounds decodes every instance's first prompt (its box or its click) first, in
    the order ``LossOutput.prompt_order`` gives; later rounds are not classified. The trainer's loop
    calls this around its loss; without a head it is ``step()``."""
    head = class_head_of(model)
    if head is None:
        return step()
    with MaskTokenCapture(model.sam) as cap:
        lo = step()
    cats = [c.reshape(-1) for c in batch["category_ids"]]
    target = torch.cat(cats) if cats else torch.zeros(0, dtype=torch.int64)
    order = getattr(lo, "prompt_order", None)
    n, sizes = target.shape[0], [int(p.shape[0]) for p in cap.parts]
    if order is not None:  # the first round's prompts, grouped by prompt kind, come first
        target = target[order.to(target.device)]
        ok = n in itertools.accumulate([0, *sizes])
    else:  # one decoding of every instance
        ok = sum(sizes) == n
    if not ok:
        raise TrainingError(
            f"the class head saw {sum(sizes)} decoder prompts in calls of {sizes} for {n} instances; a step "
            "must decode each instance's first prompt once, before any other (LossOutput.prompt_order)"
        )
    if n == 0:
        return lo
    tokens = cap.features(head, limit=n)
    ce = F.cross_entropy(head(tokens), head.targets(target.to(tokens.device)))
    return dataclasses.replace(lo, loss=lo.loss + weight * ce)


@register_part
class ClassHeadPart(ModelPart):
    """The class head in an adapter file: its categories and shape in the metadata, its tensors
    (``class_head.*``) beside the strategy's."""

    key = CLASS_HEAD

    def describe(self, model) -> dict[str, Any] | None:
        head = class_head_of(model)
        if head is None:
            return None
        spec = {
            "categories": [{"id": i, "name": n} for i, n in head.categories.items()],
            "hidden_dim": head.hidden_dim,
            "num_layers": head.num_layers,
            "token": TOKEN_INDEX,
            "pool_dim": head.pool_dim,
        }
        if head.validation is not None:
            spec["validation"] = head.validation
        return spec

    def parse(self, spec: Any) -> dict[str, Any]:
        cats = {int(c["id"]): str(c["name"]) for c in spec["categories"]}
        if not cats:
            raise ValueError("no categories")
        return {**spec, "categories": cats}

    def unparse(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        return {**spec, "categories": [{"id": i, "name": n} for i, n in spec["categories"].items()]}

    def tensor_shapes(self, sam, spec: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
        with torch.device("meta"):
            ghost = ClassHead(sam.mask_decoder.transformer_dim, spec["categories"], **_head_options(spec))
        return {f"{CLASS_HEAD}.{n}": tuple(p.shape) for n, p in ghost.named_parameters()}

    def restore(self, model, spec: Mapping[str, Any]) -> None:
        head = attach_class_head(model, spec["categories"], **_head_options(spec))
        head.validation = spec.get("validation")  # the held-out check against the majority class


def _head_options(spec: Mapping[str, Any]) -> dict[str, Any]:
    # files written before the mask-pooled features hold a token-only head (pool_dim 0)
    return {
        "hidden_dim": spec.get("hidden_dim"),
        "num_layers": int(spec.get("num_layers", 2)),
        "pool_dim": int(spec.get("pool_dim", 0)),
    }
