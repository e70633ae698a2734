"""Mask decoding for several images at once.

Upstream ``MaskDecoder.forward`` takes ONE image embedding and repeats it for each prompt
(``repeat_interleave``). Training and batched prediction need several images, each with its own
number of prompts, in one pass: :func:`decode_masks` gathers each prompt's image embedding by index
and runs the same upstream submodules (transformer, upscaling, hypernetworks, IoU head) in the same
order, so its output equals upstream's, prompt for prompt.
"""

from __future__ import annotations

import torch
from segment_anything.modeling import MaskDecoder


def decode_masks(
    mask_decoder: MaskDecoder,
    image_embeddings: torch.Tensor,
    image_pe: torch.Tensor,
    sparse_embeddings: torch.Tensor,
    dense_embeddings: torch.Tensor,
    image_index: torch.Tensor,
    *,
    multimask: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode N prompts over B images.

    Args:
        image_embeddings: (B, C, h, w) from the image encoder.
        image_pe: (1, C, h, w) dense positional encoding (``prompt_encoder.get_dense_pe()``).
        sparse_embeddings: (N, T, C) point/box tokens from the prompt encoder.
        dense_embeddings: (N, C, h, w) mask-prompt embeddings (or the broadcast no-mask embedding).
        image_index: (N,) int64, the image each prompt belongs to.
        multimask: return the 3 multimask outputs instead of the single-mask output.

    Returns:
        low-resolution mask logits (N, M, 4h, 4w) and predicted IoU (N, M), M = 3 or 1.
    """
    md = mask_decoder
    n = sparse_embeddings.shape[0]
    output_tokens = torch.cat([md.iou_token.weight, md.mask_tokens.weight], dim=0)
    output_tokens = output_tokens.unsqueeze(0).expand(n, -1, -1)
    tokens = torch.cat((output_tokens, sparse_embeddings), dim=1)

    src = image_embeddings.index_select(0, image_index) + dense_embeddings
    pos_src = image_pe.expand(n, -1, -1, -1)
    b, c, h, w = src.shape

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
