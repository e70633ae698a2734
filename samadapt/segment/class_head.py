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
from typing import Any, Callable, Mapping, Sequence

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

    def tokens(self) -> torch.Tensor:
        """(N, C) the mask tokens."""
        if not self.parts:
            return torch.zeros(0, self.mlp.layers[0].in_features)
        return torch.cat(self.parts)

    def masks(self) -> torch.Tensor:
        """(N, 4h, 4w) each prompt's single-mask probability (the sigmoid of its low-res logits)."""
        return torch.cat(
            [torch.sigmoid(torch.einsum("np,nphw->nhw", hyper, up)) for hyper, up in zip(self.hyper, self.upscaled)]
        )

    def pooled(self) -> torch.Tensor:
        """(N, C) the decoder's image tokens averaged under each prompt's own mask (pooled to their
        h x w grid, and held constant so that the class loss does not reshape the masks): what the
        object looks like, beside what the token says about it."""
        if not self.parts:
            return torch.zeros(0, self.mlp.layers[0].in_features)
        src = torch.cat(self.src)  # (N, C, h, w)
        weight = F.adaptive_avg_pool2d(self.masks().detach()[:, None], src.shape[-2:]).flatten(1)  # (N, hw)
        return torch.einsum("nh,nch->nc", weight, src.flatten(2)) / weight.sum(-1, keepdim=True).clamp_min(1e-6)

    def features(self, head: "ClassHead") -> torch.Tensor:
        """The input ``head`` reads: the tokens, with the mask-pooled features when it has ``pool_dim``."""
        return torch.cat([self.tokens(), self.pooled()], dim=1) if head.pool_dim else self.tokens()


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
    when ``model`` has a class head, add the cross-entropy of its predictions for the step's prompts
    against ``batch["category_ids"]`` (per image (N_i,), in prompt order). The trainer's loop calls
    this around its loss; without a head it is ``step()``."""
    head = class_head_of(model)
    if head is None:
        return step()
    with MaskTokenCapture(model.sam) as cap:
        lo = step()
    tokens = cap.features(head)
    cats = [c.reshape(-1) for c in batch["category_ids"]]
    target = torch.cat(cats) if cats else torch.zeros(0, dtype=torch.int64)
    if tokens.shape[0] != target.shape[0]:
        raise TrainingError(
            f"the class head saw {tokens.shape[0]} decoder prompts for {target.shape[0]} instances; "
            "--classify trains on the box-prompted step only (train_prompts [box], click_rounds 0)"
        )
    if tokens.shape[0] == 0:
        return lo
    ce = F.cross_entropy(head(tokens), head.targets(target.to(tokens.device)))
    return dataclasses.replace(lo, loss=lo.loss + weight * ce)
