"""The class head: which dataset category a mask shows, read from the mask decoder's output token.

SAM's mask decoder ends with one output token per mask; a hypernetwork MLP turns token ``i`` into
the weights that make mask ``i`` from the upscaled image features. That token is what the decoder
knows about the object it segments, so a small MLP on it (:class:`ClassHead`, upstream's
``segment_anything.modeling.mask_decoder.MLP``) predicts the object's category. The head reads the
single-mask token (token 0) of a box prompt, the prompt it is trained on; masks from points or from
the automatic point grid are labelled through their bounding box (:func:`classify_boxes`).

The head is a submodule of the adapted ``Sam`` (``sam.class_head``), so its parameters are
trainable tensors like the strategy's: the optimizer, ``--resume`` state, adapter file and strict
loading handle them with no special case (``samadapt.segment.state`` records the category list
beside them). The decoder's tokens are read with a forward pre-hook on the first hypernetwork MLP
(:class:`MaskTokenCapture`), which runs in upstream's ``MaskDecoder`` and in samadapt's batched
decoding alike, so no decoder code is copied or changed.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.modeling.mask_decoder import MLP
from torch import nn

from ..errors import ConfigError, TrainingError

__all__ = [
    "CLASS_HEAD",
    "ClassHead",
    "MaskTokenCapture",
    "attach_class_head",
    "class_head_of",
    "classify_boxes",
    "head_accuracy",
    "head_warning",
    "loss_with_class_head",
    "require_class_head",
    "validate_class_head",
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


def head_accuracy(
    predicted: Sequence[Sequence[int]], truth: Sequence[Sequence[int]], *, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Accuracy of predicted categories against the true ones (per image, lists of ids), the accuracy
    of always answering the most frequent true category, the gain over it with a 95% bootstrap interval
    over images (an image's instances stay together), and balanced accuracy (mean per-category recall).
    ``beats_majority``: the interval lies above 0."""
    flat = [int(t) for ts in truth for t in ts]
    if not flat:
        return {"instances": 0, "images": len(truth), "beats_majority": False}
    values, counts = np.unique(flat, return_counts=True)
    majority = int(values[counts.argmax()])
    hits = np.array([sum(int(p) == int(t) for p, t in zip(ps, ts)) for ps, ts in zip(predicted, truth)], float)
    major = np.array([sum(int(t) == majority for t in ts) for ts in truth], float)
    n = np.array([len(ts) for ts in truth], float)
    rng = np.random.default_rng(seed)
    gains = []
    for _ in range(n_boot):
        k = rng.integers(0, len(n), len(n))
        if n[k].sum():
            gains.append((hits[k].sum() - major[k].sum()) / n[k].sum())
    pairs = [(int(p), int(t)) for ps, ts in zip(predicted, truth) for p, t in zip(ps, ts)]
    recall = {int(c): float(np.mean([p == t for p, t in pairs if t == c])) for c in values}
    interval = [float(v) for v in np.percentile(gains, [2.5, 97.5])] if gains else [float("nan")] * 2
    return {
        "instances": int(n.sum()),
        "images": len(n),
        "accuracy": float(hits.sum() / n.sum()),
        "majority_category": majority,
        "majority_accuracy": float(major.sum() / n.sum()),
        "gain": float((hits.sum() - major.sum()) / n.sum()),
        "gain_interval": interval,
        "balanced_accuracy": float(np.mean(list(recall.values()))),
        "balanced_majority": 1 / len(values),
        "per_category_recall": recall,
        "beats_majority": bool(interval[0] > 0),
    }


@torch.no_grad()
def validate_class_head(
    model,
    instances,
    indices: Sequence[int],
    *,
    embeddings: Callable[[int], torch.Tensor] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """The class head's labels for the ground-truth boxes of ``instances`` (held-out images, by
    ``indices``) against their categories: :func:`head_accuracy`, plus ``majority_name``. Stored as the
    head's ``validation`` (the adapter file keeps it); ``embeddings``: index -> cached (C, h, w)."""
    from .automatic import encode_images

    head = require_class_head(model)
    predicted, truth = [], []
    for i in indices:
        sample = instances.item(i, lazy_masks=True)
        size = sample["image"].shape[:2]
        emb = embeddings(i).to(model.device, torch.float32) if embeddings is not None else None
        if emb is None:
            emb = encode_images(model, [sample["image"]])[0]
        boxes = model.transform.apply_boxes(np.asarray(sample["boxes"], np.float32), size).to(model.device)
        probs = classify_boxes(model, emb[None], [boxes])[0]
        predicted.append([head.category_ids[j] for j in probs.argmax(-1).tolist()])
        truth.append([int(c) for c in sample["category_ids"]])
    out = head_accuracy(predicted, truth, n_boot=n_boot, seed=seed)
    if "majority_category" in out:
        out["majority_name"] = head.categories.get(out["majority_category"], str(out["majority_category"]))
    return out


def describe_validation(v: Mapping[str, Any]) -> str:
    """One line: accuracy vs the most frequent class, with the gain's interval."""
    if not v.get("instances"):
        return "class head: no validation instances to check it on"
    lo, hi = v["gain_interval"]
    verdict = "beats" if v["beats_majority"] else "does NOT clearly beat"
    return (
        f"class head: accuracy {100 * v['accuracy']:.1f}% on {v['instances']} validation instances "
        f"{verdict} always answering {v.get('majority_name', v['majority_category'])!r} "
        f"({100 * v['majority_accuracy']:.1f}%): gain {100 * v['gain']:+.1f} points, 95% interval "
        f"[{100 * lo:+.1f}, {100 * hi:+.1f}]"
    )


def head_warning(model) -> str | None:
    """What to tell a user about to label masks with ``model``'s class head: None when its held-out
    check beat the most frequent class; else why its labels are not to be trusted, and what helps."""
    head = require_class_head(model)
    v = head.validation
    if v is None:
        return (
            "this class head carries no held-out check against the most frequent class (its adapter was "
            "trained before samadapt measured one): its labels may be no better than always answering that "
            "class; retrain with --classify to have it checked"
        )
    if v.get("beats_majority"):
        return None
    return (
        f"{describe_validation(v)}. Its labels are no better than always answering that class. A class head "
        "needs a strategy that adapts the image encoder and enough data and epochs: see docs/segment.md "
        "(the class head) for the strategies and budgets that beat the majority class"
    )
