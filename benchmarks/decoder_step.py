"""``decoder_step``: the batched decoder with and without the shared first-block image work, with a
``torch.profiler`` table of where the step's time goes."""

from __future__ import annotations

from typing import Any

import _common as C
import torch


def plan(mode: str, models: list[str]) -> dict[str, Any]:
    if mode == "smoke":
        return {"decoders": ["mini"], "images": 1, "prompts": 2, "reps": 1, "profile": False}
    if mode == "quick":
        return {"decoders": ["mini", "vit_b"], "images": 1, "prompts": 8, "reps": 1, "profile": True}
    return {"decoders": ["mini", "vit_b"], "images": 4, "prompts": 8, "reps": 10, "profile": True}


def _decoder_parts(model_type: str, device: str):
    """Prompt encoder and mask decoder of a registered model type (random weights), without its encoder."""
    from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

    card = C.variant_card(model_type)
    e = card.embedding_size
    torch.manual_seed(0)
    pe = PromptEncoder(
        embed_dim=card.prompt_embed_dim,
        image_embedding_size=(e, e),
        input_image_size=(card.image_size, card.image_size),
        mask_in_chans=card.mask_in_chans,
    )
    md = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(
            depth=2, embedding_dim=card.prompt_embed_dim, mlp_dim=card.decoder_mlp_dim, num_heads=card.decoder_num_heads
        ),
        transformer_dim=card.prompt_embed_dim,
        iou_head_depth=3,
        iou_head_hidden_dim=card.iou_head_hidden_dim,
    )
    return card, pe.to(device).eval(), md.to(device).train()


def run(args, cfg) -> C.Bench:
    """The batched decoder step (forward + backward as in decoder-only training, and no-grad as in
    prediction) with and without the shared first-block image work."""
    from samadapt.models.decoding import decode_masks

    dev = args.device
    b = C.Bench("decoder_step", args, args.mode)
    b.data["setup"] = {
        **cfg,
        "what": "decode_masks over B images x P box prompts from embeddings (no encoder): "
        "training step = forward + SamLoss-like loss + backward of the decoder "
        "parameters; prediction = forward under no_grad",
        "shared": "first two-way block's image projections once per image (decoding.py)",
        "unshared": "upstream order: every projection once per prompt",
    }
    rows = []
    for mt in cfg["decoders"]:
        card, pe, md = _decoder_parts(mt, dev)
        e, n_img, p = card.embedding_size, cfg["images"], cfg["prompts"]
        emb = torch.randn(n_img, card.prompt_embed_dim, e, e, device=dev)
        _, boxes, gt = C.random_training_batch(n_img, p, card.image_size, seed=6, device=dev)
        index = torch.arange(n_img, device=dev).repeat_interleave(p)
        with torch.no_grad():
            sparse, dense = pe(points=None, boxes=torch.cat(boxes), masks=None)
            image_pe = pe.get_dense_pe()
            ref = torch.cat(
                [md(emb[i : i + 1], image_pe, sparse[index == i], dense[index == i], True)[0] for i in range(n_img)]
            )

        def train_step(share):
            with C.autocast(dev, args.dtype):
                lo, iou = decode_masks(md, emb, image_pe, sparse, dense, index, multimask=True, share_image_work=share)
            loss = (
                torch.nn.functional.binary_cross_entropy_with_logits(lo.float(), gt[:, None].expand_as(lo))
                + iou.float().square().mean()
            )
            loss.backward()
            md.zero_grad(set_to_none=True)
            return lo

        def predict(share):
            with torch.no_grad(), C.autocast(dev, args.dtype):
                return decode_masks(md, emb, image_pe, sparse, dense, index, multimask=True, share_image_work=share)[0]

        for share in (True, False):
            d = C.max_rel_diff(predict(share), ref)
            b.check(
                f"{mt}: decode_masks(share_image_work={share}) == upstream MaskDecoder per image",
                d <= (1e-5 if args.dtype == "fp32" else 5e-2),
                max_rel_diff=d,
            )
        times = {}
        for kind, fn in (("train", train_step), ("predict", predict)):
            walls = {True: [], False: []}
            for r in range(cfg["reps"] + 1):  # alternate; the first round warms up
                for share in (True, False):
                    w, _, _ = C.time_call(lambda: fn(share), dev)
                    if r:
                        walls[share].append(w)
            times[kind] = {s: min(ws) for s, ws in walls.items()}
        row = {"decoder": f"{mt} ({card.prompt_embed_dim}-d, {e}x{e} embedding)", "images": n_img, "prompts/image": p}
        for kind in ("train", "predict"):
            sh, un = times[kind][True], times[kind][False]
            row.update(
                {
                    f"{kind}_shared_s": round(sh, 4),
                    f"{kind}_unshared_s": round(un, 4),
                    f"{kind}_saving": round(1 - sh / un, 3),
                    f"{kind}_prompts/s": round(n_img * p / sh, 1),
                }
            )
        rows.append(row)
        if cfg.get("profile") and args.profile:
            b.data.setdefault("profiles", []).append(
                C.profile_table(
                    f"{mt}-size decoder training step ({n_img} image(s) x {p} prompts, shared), top ops by self "
                    f"{'CUDA' if dev == 'cuda' else 'CPU'} time",
                    lambda: train_step(True),
                    dev,
                )
            )
    b.table(
        "decoder step, shared vs per-prompt image work",
        [
            "decoder",
            "images",
            "prompts/image",
            "train_shared_s",
            "train_unshared_s",
            "train_saving",
            "train_prompts/s",
            "predict_shared_s",
            "predict_unshared_s",
            "predict_saving",
            "predict_prompts/s",
        ],
        rows,
    )
    return b
