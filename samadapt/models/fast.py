"""Fast paths for the upstream image encoder, switched on and off in place.

Both swap the class of upstream module instances (``module.__class__``) for a subclass that only
overrides how the module runs. Parameters, buffers, state-dict keys, peft's LoRA layers (which
replace ``attn.qkv``) and the hooks the adapter strategy registers on ``block.attn``,
``block.mlp`` and the block itself are untouched, and swapping back restores upstream exactly.

- :func:`enable_sdpa_attention`: encoder attention through
  ``torch.nn.functional.scaled_dot_product_attention`` with SAM's decomposed relative-position
  bias as the additive attention mask (``rel_pos="bias"``, the default), or folded into the
  query-key product (``rel_pos="fold"``: no L x L tensor at all, so fused O(L)-memory kernels also
  serve training on CPU). Same numbers as upstream to float rounding.
- :func:`enable_activation_checkpointing`: each encoder block's ``forward`` runs under
  ``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)``: its activations are recomputed in
  backward instead of kept. Hooks inside the block (the adapter bottlenecks on ``attn`` / ``mlp``)
  run again in the recomputation; the block's own pre-hook (the adapter prompt) runs once.
  Only matters while training through the encoder (``lora``, ``adapter``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Attention, Block, get_rel_pos
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import ConfigError

__all__ = [
    "CheckpointedBlock",
    "REL_POS_MODES",
    "SdpaAttention",
    "decomposed_rel_pos_bias",
    "disable_activation_checkpointing",
    "disable_sdpa_attention",
    "enable_activation_checkpointing",
    "enable_sdpa_attention",
    "activation_checkpointing_enabled",
    "sdpa_attention_enabled",
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


def _folded_rel_pos_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    size: tuple[int, int],
) -> torch.Tensor:
    """SDPA with the decomposed relative-position bias folded into the dot product, so no
    (L x L) mask exists and PyTorch can use a fused kernel that keeps O(L) memory.

    bias[i, j] = rel_h[i, row(j)] + rel_w[i, col(j)] = [rel_h[i], rel_w[i]] . [onehot(row(j)), onehot(col(j))],
    so q' = [q * scale, rel_h, rel_w] and k' = [k, onehot rows, onehot cols] give
    q' . k' = scale * q . k + bias exactly (the extra products are by 0 and 1). v is zero-padded to
    q's width (fused kernels want one head size) and the padding cut from the output. q, k, v:
    (B, heads, H*W, C); returns (B, heads, H*W, C).
    """
    h, w = size
    b, heads, n, c = q.shape
    rel = decomposed_rel_pos_terms(q, rel_pos_h, rel_pos_w, size)
    rows = torch.eye(h, dtype=q.dtype, device=q.device).repeat_interleave(w, 0)  # (H*W, h): token j -> its row
    cols = torch.eye(w, dtype=q.dtype, device=q.device).repeat(h, 1)  # (H*W, w): token j -> its column
    qa = torch.cat([q * scale, rel[0].reshape(b, heads, n, h), rel[1].reshape(b, heads, n, w)], dim=-1)
    ka = torch.cat([k, rows.expand(b, heads, n, h), cols.expand(b, heads, n, w)], dim=-1)
    width = -(-qa.shape[-1] // 8) * 8  # a multiple of 8, which the fused CUDA kernels need
    qa = F.pad(qa, (0, width - qa.shape[-1]))
    ka = F.pad(ka, (0, width - ka.shape[-1]))
    va = F.pad(v, (0, width - c))
    return F.scaled_dot_product_attention(qa, ka, va, scale=1.0)[..., :c]


def decomposed_rel_pos_terms(
    q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor, size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Upstream's ``rel_h`` (B*heads, h, w, h) and ``rel_w`` (B*heads, h, w, w) for square attention
    (queries and keys on the same h x w grid); q: (B, heads, h*w, C)."""
    h, w = size
    b, heads, _, dim = q.shape
    r_q = q.reshape(b * heads, h, w, dim)
    rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, get_rel_pos(h, h, rel_pos_h))
    rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, get_rel_pos(w, w, rel_pos_w))
    return rel_h, rel_w


REL_POS_MODES = ("bias", "fold")


class SdpaAttention(Attention):
    """Upstream encoder ``Attention`` computed with ``scaled_dot_product_attention``.

    Only ``forward`` differs; modules become this class through :func:`enable_sdpa_attention`,
    which also sets ``samadapt_rel_pos`` (how the relative-position term enters):

    - ``"bias"`` (default): the decomposed term as SDPA's additive ``attn_mask`` (B, heads, L, L).
    - ``"fold"``: folded into the query-key dot product (:func:`_folded_rel_pos_attention`): no
      L x L tensor at all; on CPU the fused kernel then also serves training (with a mask that needs a
      gradient, PyTorch's CPU SDPA falls back to its materialising math path).

    Input and output (B, H, W, dim) as upstream.
    """

    samadapt_rel_pos: str = "bias"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        # (3, B, heads, H*W, C) like upstream, without folding B and heads together
        qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if not self.use_rel_pos:
            out = F.scaled_dot_product_attention(q, k, v)
        elif self.samadapt_rel_pos == "fold":
            out = _folded_rel_pos_attention(q, k, v, self.scale, self.rel_pos_h, self.rel_pos_w, (h, w))
        else:
            bias = decomposed_rel_pos_bias(q, self.rel_pos_h, self.rel_pos_w, (h, w), (h, w)).to(q.dtype)
            # SDPA's default scale is head_dim ** -0.5, upstream's self.scale
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        out = out.permute(0, 2, 1, 3).reshape(b, h, w, -1)
        return self.proj(out)


class CheckpointedBlock(Block):
    """Upstream encoder ``Block`` whose ``forward`` is checkpointed while gradients are recorded.
    Modules become this class through :func:`enable_activation_checkpointing`.

    The checkpoint wraps ``forward``, not ``__call__``: hooks on the block itself (the adapter
    strategy's prompt pre-hook) run once, outside, and autograd keeps what they computed, while the
    hooks of the attention and MLP inside (the adapter bottlenecks) run again in the recomputation.
    So a pre-hook that reads state stashed by an earlier module (the prompt generator's patch
    features) stays exact even if another forward overwrites that state before this backward.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return checkpoint(super().forward, x, use_reentrant=False)
        return super().forward(x)


def _encoder(sam_or_encoder: nn.Module) -> nn.Module:
    return getattr(sam_or_encoder, "image_encoder", sam_or_encoder)


def _swap(modules, old: type, new: type) -> int:
    n = 0
    for m in modules:
        if type(m) is old:
            m.__class__ = new
            n += 1
    return n


def enable_sdpa_attention(sam: nn.Module, *, rel_pos: str = "bias") -> int:
    """Compute every upstream encoder attention of ``sam`` (a ``Sam`` or its image encoder) with
    SDPA. ``rel_pos``: ``"bias"`` or ``"fold"`` (see :class:`SdpaAttention`). Returns how many
    modules are on the SDPA path (modules of other classes are left alone)."""
    if rel_pos not in REL_POS_MODES:
        raise ConfigError(f"`rel_pos` should be one of {list(REL_POS_MODES)}, got {rel_pos!r}")
    enc = _encoder(sam)
    _swap(enc.modules(), Attention, SdpaAttention)
    for m in enc.modules():
        if type(m) is SdpaAttention:
            m.samadapt_rel_pos = rel_pos
    return sum(type(m) is SdpaAttention for m in enc.modules())


def disable_sdpa_attention(sam: nn.Module) -> int:
    """Back to upstream ``Attention.forward``. Returns how many modules were switched back."""
    enc = _encoder(sam)
    for m in enc.modules():
        if type(m) is SdpaAttention:
            m.__dict__.pop("samadapt_rel_pos", None)
    return _swap(enc.modules(), SdpaAttention, Attention)


def sdpa_attention_enabled(sam: nn.Module) -> bool:
    """True when every encoder attention module runs on the SDPA path (and there is at least one)."""
    kinds = [type(m) for m in _encoder(sam).modules() if isinstance(m, Attention)]
    return bool(kinds) and all(k is SdpaAttention for k in kinds)


def enable_activation_checkpointing(sam: nn.Module, every: int = 1) -> int:
    """Checkpoint encoder blocks 0, every, 2*every, ... of ``sam`` (a ``Sam`` or its image encoder).

    ``every=1`` checkpoints all blocks (least memory); larger values trade memory for less
    recomputation. Calling it again re-chooses the blocks. Returns how many blocks are checkpointed.
    Gradients are those of the plain blocks (see :class:`CheckpointedBlock` for hooks).
    """
    if not isinstance(every, int) or every < 1:
        raise ConfigError(f"`every` should be a positive integer, got {every!r}")
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
