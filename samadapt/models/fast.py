"""Fast paths for the upstream image encoder, switched on and off in place.

Both swap the class of upstream module instances (``module.__class__``) for a subclass that only
overrides how the module runs. Parameters, buffers, state-dict keys, peft's LoRA layers (which
replace ``attn.qkv``) and the hooks the adapter strategy registers on ``block.attn``,
``block.mlp`` and the block itself are untouched, and swapping back restores upstream exactly.

- :func:`enable_sdpa_attention`: encoder attention through
  ``torch.nn.functional.scaled_dot_product_attention`` with SAM's decomposed relative-position
  bias as the additive attention mask. Same numbers as upstream (to float rounding), lets PyTorch
  pick a fused kernel, and never keeps the pre-softmax and softmax maps for backward.
- :func:`enable_activation_checkpointing`: each encoder block runs under
  ``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)``: its activations are recomputed in
  backward instead of kept. Hooks (the adapter strategy's) run again inside the recomputation.
  Only matters while training through the encoder (``lora``, ``adapter``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Attention, Block, get_rel_pos
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = [
    "CheckpointedBlock", "SdpaAttention", "decomposed_rel_pos_bias", "disable_activation_checkpointing",
    "disable_sdpa_attention", "enable_activation_checkpointing", "enable_sdpa_attention",
    "activation_checkpointing_enabled", "sdpa_attention_enabled",
]


def decomposed_rel_pos_bias(
    q: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    q_size: tuple[int, int],
    k_size: tuple[int, int],
) -> torch.Tensor:
    """SAM's decomposed relative-position term (upstream ``add_decomposed_rel_pos``) as a bias.

    Args:
        q: (B, heads, q_h * q_w, C) queries, unscaled (as upstream uses them).
        rel_pos_h, rel_pos_w: (2 * size - 1, C) the block's relative-position tables.

    Returns:
        (B, heads, q_h * q_w, k_h * k_w) bias to add to the attention logits, in ``q``'s dtype.
    """
    q_h, q_w = q_size
    k_h, k_w = k_size
    rh = get_rel_pos(q_h, k_h, rel_pos_h)  # (q_h, k_h, C)
    rw = get_rel_pos(q_w, k_w, rel_pos_w)  # (q_w, k_w, C)
    b, heads, _, dim = q.shape
    r_q = q.reshape(b * heads, q_h, q_w, dim)
    rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, rh)  # (B*heads, q_h, q_w, k_h)
    rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, rw)  # (B*heads, q_h, q_w, k_w)
    bias = rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]
    return bias.reshape(b, heads, q_h * q_w, k_h * k_w)


class SdpaAttention(Attention):
    """Upstream encoder ``Attention`` computed with ``scaled_dot_product_attention``.

    Only ``forward`` differs; modules become this class through :func:`enable_sdpa_attention`.
    Input and output (B, H, W, dim) as upstream.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        # (3, B, heads, H*W, C) like upstream, without folding B and heads together
        qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        bias = None
        if self.use_rel_pos:
            bias = decomposed_rel_pos_bias(q, self.rel_pos_h, self.rel_pos_w, (h, w), (h, w)).to(q.dtype)
        # SDPA's default scale is head_dim ** -0.5, upstream's self.scale
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        out = out.permute(0, 2, 1, 3).reshape(b, h, w, -1)
        return self.proj(out)


class CheckpointedBlock(Block):
    """Upstream encoder ``Block`` whose whole call (pre-hooks, forward, hooks) is checkpointed while
    gradients are being recorded. Modules become this class through
    :func:`enable_activation_checkpointing`."""

    def __call__(self, *args, **kwargs):
        if torch.is_grad_enabled():
            # super().__call__ is nn.Module.__call__: the recomputation in backward re-runs the
            # block's pre-hooks and its submodules' hooks, so adapters see the same inputs again.
            return checkpoint(super().__call__, *args, use_reentrant=False, **kwargs)
        return super().__call__(*args, **kwargs)


def _encoder(sam_or_encoder: nn.Module) -> nn.Module:
    return getattr(sam_or_encoder, "image_encoder", sam_or_encoder)


def _swap(modules, old: type, new: type) -> int:
    n = 0
    for m in modules:
        if type(m) is old:
            m.__class__ = new
            n += 1
    return n


def enable_sdpa_attention(sam: nn.Module) -> int:
    """Compute every upstream encoder attention of ``sam`` (a ``Sam`` or its image encoder) with
    SDPA. Returns how many modules are on the SDPA path (modules of other classes are left alone)."""
    enc = _encoder(sam)
    _swap(enc.modules(), Attention, SdpaAttention)
    return sum(type(m) is SdpaAttention for m in enc.modules())


def disable_sdpa_attention(sam: nn.Module) -> int:
    """Back to upstream ``Attention.forward``. Returns how many modules were switched back."""
    return _swap(_encoder(sam).modules(), SdpaAttention, Attention)


def sdpa_attention_enabled(sam: nn.Module) -> bool:
    """True when every encoder attention module runs on the SDPA path (and there is at least one)."""
    kinds = [type(m) for m in _encoder(sam).modules() if isinstance(m, Attention)]
    return bool(kinds) and all(k is SdpaAttention for k in kinds)


def enable_activation_checkpointing(sam: nn.Module, every: int = 1) -> int:
    """Checkpoint encoder blocks 0, every, 2*every, ... of ``sam`` (a ``Sam`` or its image encoder).

    ``every=1`` checkpoints all blocks (least memory); larger values trade memory for less
    recomputation. Calling it again re-chooses the blocks. Returns how many blocks are checkpointed.

    The recomputation in backward must see the same module state as the forward did: hooks that
    read tensors stashed by an earlier module (the adapter strategy's prompt generator) are exact as
    long as each forward is followed by its backward before the next forward.
    """
    if not isinstance(every, int) or every < 1:
        raise ValueError(f"`every` should be a positive integer, got {every!r}")
    blocks = [m for m in _encoder(sam).modules() if isinstance(m, Block)]
    _swap(blocks, CheckpointedBlock, Block)
    _swap(blocks[::every], Block, CheckpointedBlock)
    return sum(type(m) is CheckpointedBlock for m in blocks)


def disable_activation_checkpointing(sam: nn.Module) -> int:
    """Run every encoder block plainly again. Returns how many blocks were switched back."""
    return _swap(_encoder(sam).modules(), CheckpointedBlock, Block)


def activation_checkpointing_enabled(sam: nn.Module) -> bool:
    """True when at least one encoder block is checkpointed."""
    return any(type(m) is CheckpointedBlock for m in _encoder(sam).modules())
