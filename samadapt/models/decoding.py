"""Mask decoding for several images at once.

Upstream ``MaskDecoder.forward`` takes ONE image embedding and repeats it for each prompt
(``repeat_interleave``). Training and batched prediction need several images, each with its own
number of prompts, in one pass: :func:`decode_masks` gathers each prompt's image embedding by index
and runs the same upstream submodules (transformer, upscaling, hypernetworks, IoU head) in the same
order, so its output equals upstream's, prompt for prompt.

Shared image work (on by default, :func:`set_shared_image_decoding` turns it off). Without a mask
prompt, every prompt of one image enters the two-way transformer with the same image tokens, and
they only start to differ after the first block's image-to-token attention. Upstream still
computes, once per prompt, three (HW x C) -> (HW x C/2) projections of those identical tokens in
the first block (the token-to-image keys and values and the image-to-token queries): about 0.4 of
the 1.8 GMACs a ViT-B/H-size decoder spends per prompt. The shared path computes them once per
image and gathers them per prompt; the rest of the first block and every later module are the
upstream modules, called in upstream's order. With a mask prompt (dense embeddings that differ per
prompt) the upstream transformer runs unchanged.
"""

from __future__ import annotations

import math

import torch
from segment_anything.modeling import MaskDecoder
from torch import nn

__all__ = ["decode_masks", "set_shared_image_decoding", "shared_image_decoding_enabled"]

_SHARED_ATTR = "samadapt_shared_image_decoding"


def set_shared_image_decoding(mask_decoder: MaskDecoder, enabled: bool) -> None:
    """Switch the shared first-block image work of :func:`decode_masks` on or off for this decoder.

    The choice is stored on the decoder module, so it travels with the model."""
    setattr(mask_decoder, _SHARED_ATTR, bool(enabled))


def shared_image_decoding_enabled(mask_decoder: MaskDecoder) -> bool:
    return bool(getattr(mask_decoder, _SHARED_ATTR, True))


def _dense_is_shared(dense: torch.Tensor) -> bool:
    """True when every prompt has the same dense embedding: a size-1 batch, or the prompt encoder's
    no-mask embedding broadcast with ``expand`` (stride 0 over prompts)."""
    return dense.shape[0] == 1 or dense.stride(0) == 0


def _attend(attn: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Upstream ``transformer.Attention.forward`` from already projected q (N, Lq, Ci), k, v (N, Lk, Ci)."""
    q = attn._separate_heads(q, attn.num_heads)
    k = attn._separate_heads(k, attn.num_heads)
    v = attn._separate_heads(v, attn.num_heads)
    c_per_head = q.shape[-1]
    weights = q @ k.permute(0, 1, 3, 2)
    weights = weights / math.sqrt(c_per_head)
    weights = torch.softmax(weights, dim=-1)
    return attn.out_proj(attn._recombine_heads(weights @ v))


def _shared_transformer(
    transformer: nn.Module,
    image_tokens: torch.Tensor,
    image_pe: torch.Tensor,
    point_embedding: torch.Tensor,
    image_index: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Upstream ``TwoWayTransformer.forward`` for prompts whose image tokens are shared per image.

    Args:
        image_tokens: (B, HW, C) image embedding + dense embedding of each image, flattened.
        image_pe: (1, HW, C) flattened positional encoding.
        point_embedding: (N, T, C) output tokens + prompt tokens.
        image_index: (N,) the image of each prompt.

    Returns:
        queries (N, T, C) and keys (N, HW, C), as upstream.
    """
    first = transformer.layers[0]
    queries = point_embedding
    query_pe = point_embedding

    # Block 0, self attention of the tokens (as upstream, per prompt)
    if first.skip_first_layer_pe:
        queries = first.self_attn(q=queries, k=queries, v=queries)
    else:
        q = queries + query_pe
        queries = queries + first.self_attn(q=q, k=q, v=queries)
    queries = first.norm1(queries)

    # Tokens attend to the image: keys and values are projections of the shared image tokens
    keys_pe = image_tokens + image_pe  # (B, HW, C)
    t2i = first.cross_attn_token_to_image
    k = t2i.k_proj(keys_pe).index_select(0, image_index)
    v = t2i.v_proj(image_tokens).index_select(0, image_index)
    queries = queries + _attend(t2i, t2i.q_proj(queries + query_pe), k, v)
    queries = first.norm2(queries)

    queries = queries + first.mlp(queries)
    queries = first.norm3(queries)

    # The image attends to the tokens: its queries are a projection of the shared image tokens
    i2t = first.cross_attn_image_to_token
    q = queries + query_pe
    attn_out = _attend(i2t, i2t.q_proj(keys_pe).index_select(0, image_index), i2t.k_proj(q), i2t.v_proj(queries))
    keys = image_tokens.index_select(0, image_index) + attn_out
    keys = first.norm4(keys)

    # From here on every prompt has its own image tokens: upstream modules, broadcasting image_pe
    for layer in transformer.layers[1:]:
        queries, keys = layer(queries=queries, keys=keys, query_pe=point_embedding, key_pe=image_pe)
    q = queries + point_embedding
    k = keys + image_pe
    queries = queries + transformer.final_attn_token_to_image(q=q, k=k, v=keys)
    queries = transformer.norm_final_attn(queries)
    return queries, keys


def decode_masks(
    mask_decoder: MaskDecoder,
    image_embeddings: torch.Tensor,
    image_pe: torch.Tensor,
    sparse_embeddings: torch.Tensor,
    dense_embeddings: torch.Tensor,
    image_index: torch.Tensor,
    *,
    multimask: bool,
    share_image_work: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode N prompts over B images.

    Args:
        image_embeddings: (B, C, h, w) from the image encoder.
        image_pe: (1, C, h, w) dense positional encoding (``prompt_encoder.get_dense_pe()``).
        sparse_embeddings: (N, T, C) point/box tokens from the prompt encoder.
        dense_embeddings: (N, C, h, w) mask-prompt embeddings, or the no-mask embedding broadcast
            over prompts (what the prompt encoder returns without masks), or (1, C, h, w).
        image_index: (N,) int64, the image each prompt belongs to.
        multimask: return the 3 multimask outputs instead of the single-mask output.
        share_image_work: compute the first transformer block's image projections once per image
            when the dense embedding is the same for all prompts (see the module docstring).
            None: the decoder's setting (:func:`set_shared_image_decoding`, on by default).

    Returns:
        low-resolution mask logits (N, M, 4h, 4w) and predicted IoU (N, M), M = 3 or 1.
    """
    md = mask_decoder
    n = sparse_embeddings.shape[0]
    output_tokens = torch.cat([md.iou_token.weight, md.mask_tokens.weight], dim=0)
    output_tokens = output_tokens.unsqueeze(0).expand(n, -1, -1)
    tokens = torch.cat((output_tokens, sparse_embeddings), dim=1)
    b, c, h, w = n, *image_embeddings.shape[1:]

    if share_image_work is None:
        share_image_work = shared_image_decoding_enabled(md)
    if share_image_work and _dense_is_shared(dense_embeddings):
        image_tokens = (image_embeddings + dense_embeddings[:1]).flatten(2).permute(0, 2, 1)
        pe_tokens = image_pe.flatten(2).permute(0, 2, 1)
        hs, src = _shared_transformer(md.transformer, image_tokens, pe_tokens, tokens, image_index)
    else:
        src = image_embeddings.index_select(0, image_index) + dense_embeddings
        pos_src = image_pe.expand(n, -1, -1, -1)
        hs, src = md.transformer(src, pos_src, tokens)
    iou_token_out = hs[:, 0, :]
    mask_tokens_out = hs[:, 1 : (1 + md.num_mask_tokens), :]

    src = src.transpose(1, 2).reshape(b, c, h, w)
    upscaled = md.output_upscaling(src)
    hyper_in = torch.stack(
        [md.output_hypernetworks_mlps[i](mask_tokens_out[:, i, :]) for i in range(md.num_mask_tokens)], dim=1
    )
    b, c, h, w = upscaled.shape
    masks = (hyper_in @ upscaled.view(b, c, h * w)).view(b, -1, h, w)
    iou_pred = md.iou_prediction_head(iou_token_out)

    sl = slice(1, None) if multimask else slice(0, 1)
    return masks[:, sl, :, :], iou_pred[:, sl]
