"""The fast paths (SDPA encoder attention, activation checkpointing, shared-image batched decoding)
give upstream's numbers: each is checked against the upstream path on tiny configurations."""

from __future__ import annotations

import copy

import pytest
import torch
from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer
from segment_anything.modeling.image_encoder import Attention, Block

import samadapt
from samadapt.models.decoding import decode_masks
from samadapt.models.fast import (
    CheckpointedBlock,
    SdpaAttention,
    disable_activation_checkpointing,
    disable_sdpa_attention,
    enable_activation_checkpointing,
    enable_sdpa_attention,
)

ATOL = 1e-4


def _close(actual: torch.Tensor, expected: torch.Tensor, tol: float = ATOL) -> None:
    """Equal to ``tol`` relative to the tensor's scale (gradients can be tiny or large)."""
    scale = max(1.0, float(expected.detach().abs().max()))
    torch.testing.assert_close(actual, expected, rtol=0, atol=tol * scale)


def _randomise(module: torch.nn.Module, names=("rel_pos",), std: float = 0.3) -> None:
    """Give zero-initialised tensors (relative positions, zero-init adapter outputs) real values."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in module.named_parameters():
            if any(k in n for k in names):
                p.copy_(torch.randn(p.shape, generator=g) * std)


def _mini(strategy: str, **options) -> samadapt.AdaptedSam:
    torch.manual_seed(0)
    model = samadapt.adapt(samadapt.build_sam("mini", pretrained=False), strategy, **options)
    _randomise(model.sam, names=("rel_pos", "lora_B", ".up.", "shared_mlp"), std=0.05)
    return model


# ---------------------------------------------------------------------------------- SDPA attention
@pytest.mark.parametrize("rel_pos", ["bias", "fold"])
@pytest.mark.parametrize("window_size", [14, 0], ids=["windowed", "global"])
def test_sdpa_block_forward_and_backward_equal_upstream(window_size, rel_pos):
    torch.manual_seed(0)
    tokens = 20  # 20 is not a multiple of 14: the windowed block pads
    block = Block(
        768,
        12,
        use_rel_pos=True,
        window_size=window_size,
        input_size=(tokens, tokens) if window_size == 0 else (window_size, window_size),
    )
    _randomise(block)
    fast = copy.deepcopy(block)
    assert enable_sdpa_attention(fast, rel_pos=rel_pos) == 1 and type(fast.attn) is SdpaAttention
    assert fast.attn.samadapt_rel_pos == rel_pos
    x = torch.randn(2, tokens, tokens, 768)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = block(xa), fast(xb)
    _close(yb, ya)
    w = torch.randn_like(ya)
    (ya * w).sum().backward()
    (yb * w).sum().backward()
    _close(xb.grad, xa.grad)
    for pa, pb in zip(block.parameters(), fast.parameters()):
        _close(pb.grad, pa.grad)


def test_sdpa_interpolated_rel_pos_and_bf16_autocast():
    # rel_pos tables of another size are interpolated by upstream get_rel_pos: same on both paths
    torch.manual_seed(0)
    attn = Attention(64, 4, use_rel_pos=True, input_size=(12, 12))
    _randomise(attn)
    x = torch.randn(1, 8, 8, 64)
    ref = attn(x)
    enable_sdpa_attention(attn)
    _close(attn(x), ref)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attn(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.05)
    enable_sdpa_attention(attn, rel_pos="fold")
    _close(attn(x), ref)
    with pytest.raises(ValueError, match="rel_pos"):
        enable_sdpa_attention(attn, rel_pos="triton")
    disable_sdpa_attention(attn)
    assert type(attn) is Attention and "samadapt_rel_pos" not in attn.__dict__


def test_sdpa_on_by_default_switchable_and_state_dict_unchanged():
    model = _mini("decoder")
    attns = [m for m in model.sam.image_encoder.modules() if isinstance(m, Attention)]
    assert model.sdpa_attention and all(type(m) is SdpaAttention for m in attns)
    keys = list(model.sam.state_dict())
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        fast = model.encode(x)
        model.set_fast_paths(sdpa_attention=False)
        assert not model.sdpa_attention and all(type(m) is Attention for m in attns)
        plain = model.encode(x)
    _close(fast, plain)
    assert list(model.sam.state_dict()) == keys
    off = samadapt.adapt(samadapt.build_sam("mini", pretrained=False), "decoder", sdpa_attention=False)
    assert not off.sdpa_attention
    assert disable_sdpa_attention(off.sam) == 0  # already off: nothing to switch


# ---------------------------------------------------------------------------------- checkpointing
def _step(model, x, boxes, **fast):
    model.set_fast_paths(**fast)
    model.sam.zero_grad()
    out = model(x, boxes, multimask=True)
    loss = out.low_res_logits.sigmoid().mean() + out.iou_predictions.square().mean()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.sam.named_parameters() if p.requires_grad}
    return out.low_res_logits.detach(), grads


X = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(2))
BOXES = [torch.tensor([[10.0, 20, 120, 140], [60, 50, 250, 230]]), torch.tensor([[0.0, 0, 255, 255]])]


@pytest.mark.parametrize(
    "strategy,options",
    [("lora", {"rank": 2}), ("adapter", {"prompt_generator": True})],
    ids=["lora", "adapter+prompt_generator"],
)
def test_checkpointing_and_sdpa_give_plain_outputs_and_gradients(strategy, options):
    model = _mini(strategy, **options)
    plain_out, plain_grads = _step(
        model, X, BOXES, sdpa_attention=False, activation_checkpointing=False, shared_decoding=False
    )
    for fast in (
        {"sdpa_attention": True},
        {"sdpa_attention": False, "activation_checkpointing": True},
        {"sdpa_attention": True, "activation_checkpointing": True, "shared_decoding": True},
    ):
        out, grads = _step(model, X, BOXES, **fast)
        _close(out, plain_out)
        assert grads.keys() == plain_grads.keys()
        for name in grads:
            _close(grads[name], plain_grads[name])
    assert model.activation_checkpointing and model.sdpa_attention
    if strategy == "lora":  # peft's LoRA layer still sits in the swapped attention
        assert type(model.sam.image_encoder.blocks[0].attn.qkv).__module__.startswith("peft")


def test_checkpointing_exact_when_forwards_interleave():
    # The prompt generator stashes the patch features of the LAST forward; a second forward before
    # the first one's backward must not change the first one's gradients.
    model = _mini("adapter", prompt_generator=True)
    x2 = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(4))

    def grads(ckpt):
        model.set_fast_paths(activation_checkpointing=ckpt)
        model.sam.zero_grad()
        first = model(X[:1], BOXES[:1]).low_res_logits.tanh().mean()
        second = model(x2, BOXES[:1]).low_res_logits.tanh().mean()
        (first + 2 * second).backward()
        return {n: p.grad.clone() for n, p in model.sam.named_parameters() if p.grad is not None}

    plain, ckpt = grads(False), grads(True)
    for name in plain:
        _close(ckpt[name], plain[name])


def test_checkpointing_switches_and_no_grad():
    model = _mini("lora")
    blocks = list(model.sam.image_encoder.blocks)
    assert enable_activation_checkpointing(model.sam, every=2) == 2
    assert [type(b) is CheckpointedBlock for b in blocks] == [True, False, True, False]
    assert enable_activation_checkpointing(model.sam) == 4
    with torch.no_grad():
        a = model.encode(X[:1])
    assert disable_activation_checkpointing(model.sam) == 4 and all(type(b) is Block for b in blocks)
    with torch.no_grad():
        _close(model.encode(X[:1]), a)
    with pytest.raises(ValueError, match="every"):
        enable_activation_checkpointing(model.sam, every=0)


# ---------------------------------------------------------------------------------- batched decoding
def _decoder(dim=64, heads=4, emb=8):
    torch.manual_seed(0)
    pe = PromptEncoder(
        embed_dim=dim, image_embedding_size=(emb, emb), input_image_size=(16 * emb, 16 * emb), mask_in_chans=16
    )
    md = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=dim, mlp_dim=128, num_heads=heads),
        transformer_dim=dim,
        iou_head_depth=3,
        iou_head_hidden_dim=64,
    )
    return pe.eval(), md.eval()


@pytest.mark.parametrize("share", [True, False], ids=["shared", "unshared"])
@pytest.mark.parametrize("multimask", [True, False])
def test_batched_decode_equals_upstream_per_image(share, multimask):
    pe, md = _decoder()
    counts = [2, 0, 3]
    emb = torch.randn(3, 64, 8, 8)
    boxes = torch.rand(sum(counts), 4) * 64
    boxes[:, 2:] += boxes[:, :2]
    index = torch.repeat_interleave(torch.arange(3), torch.tensor(counts))
    with torch.no_grad():
        sparse, dense = pe(points=None, boxes=boxes, masks=None)
        lo, iou = decode_masks(
            md, emb, pe.get_dense_pe(), sparse, dense, index, multimask=multimask, share_image_work=share
        )
        for i, n in enumerate(counts):
            sel = index == i
            if n == 0:
                assert not sel.any()
                continue
            ref_lo, ref_iou = md(emb[i : i + 1], pe.get_dense_pe(), sparse[sel], dense[sel], multimask)
            torch.testing.assert_close(lo[sel], ref_lo, rtol=0, atol=1e-5)
            torch.testing.assert_close(iou[sel], ref_iou, rtol=0, atol=1e-5)


def test_decode_with_mask_prompts_and_gradients_to_embeddings():
    pe, md = _decoder()
    emb = torch.randn(2, 64, 8, 8)
    points = torch.rand(3, 2, 2) * 128
    labels = torch.tensor([[1, 0], [1, 1], [0, 1]])
    masks = torch.randn(3, 1, 32, 32)
    index = torch.tensor([0, 1, 1])
    with torch.no_grad():
        sparse, dense = pe(points=(points, labels), boxes=None, masks=masks)
        lo, _ = decode_masks(md, emb, pe.get_dense_pe(), sparse, dense, index, multimask=True)
        for i in range(2):
            sel = index == i
            ref, _ = md(emb[i : i + 1], pe.get_dense_pe(), sparse[sel], dense[sel], True)
            torch.testing.assert_close(lo[sel], ref, rtol=0, atol=1e-5)
    # gradients reaching the image embeddings (lora / adapter training) agree between the paths
    sparse, dense = pe(points=(points, labels), boxes=None, masks=None)
    grads = []
    for share in (True, False):
        e = emb.clone().requires_grad_()
        lo, iou = decode_masks(
            md, e, pe.get_dense_pe(), sparse.detach(), dense, index, multimask=True, share_image_work=share
        )
        (lo.tanh().sum() + iou.sum()).backward()
        grads.append(e.grad)
    _close(grads[0], grads[1], 1e-5)


def test_chunked_decode_equals_unchunked():
    model = _mini("decoder")
    emb = torch.randn(3, 128, 16, 16)
    g = torch.Generator().manual_seed(3)
    boxes = []
    for n in (3, 0, 4):
        b = torch.rand(n, 4, generator=g) * 120
        b[:, 2:] += b[:, :2]
        boxes.append(b)
    with torch.no_grad():
        model.max_prompts_per_pass = None
        whole = model.decode(emb, boxes, multimask=True)
        model.max_prompts_per_pass = 2
        chunked = model.decode(emb, boxes, multimask=True)
    torch.testing.assert_close(chunked.low_res_logits, whole.low_res_logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(chunked.iou_predictions, whole.iou_predictions, rtol=0, atol=1e-5)
    assert chunked.image_index.tolist() == [0, 0, 0, 2, 2, 2, 2]
