"""SAM 2.1 on the CPU: parameters per model type and per strategy's trainable parts, the embedding
cache's bytes per image, and ``predict`` at full size beside upstream ``SAM2ImagePredictor``.

Parameters are counted on weightless builds (accelerate's ``init_empty_weights``) of upstream's
configs. Written in phase 1, before the strategies applied to SAM 2.1: its trainable parts are
counted from the strategies' definitions on SAM 1 applied to SAM 2.1's modules, with samadapt's
default options (what the strategies now train on SAM 2.1, counted from the adapted models:
``benchmarks/families.py``, docs/sam2.md "SAM 1 and SAM 2.1 side by side"):

- ``decoder``: ``sam_mask_decoder`` (its ``conv_s0`` / ``conv_s1`` included; ``decoder_cacheable``
  leaves those two 1x1 convolutions frozen, so that the cache can hold their outputs);
- ``lora``: rank-r A and B beside ``image_encoder.trunk.blocks.N.attn.qkv`` (the default target;
  ``lora_qkv_proj`` adds ``attn.proj``), plus the mask decoder (``train_decoder`` default);
- ``bitfit``: every bias of the image encoder (trunk and neck) plus the mask decoder;
- ``full``: every parameter the image path uses (encoder, prompt encoder, decoder, ``no_mem_embed``;
  the video modules are not used on images).

Adapter bytes: the trainable tensors in float32 (a safetensors file adds a header of a few kB).

``predict``: one RGB image (480 x 640) with 4 boxes at the model's full input size (1024 px for the
official types), random weights; samadapt's ``predict`` (encoder, then decoder and masks) and
upstream's ``set_image`` + ``predict`` take turns, minimum over ``--reps`` after one warm-up call;
their masks must agree (IoU >= 0.999, a check).

    python benchmarks/sam2_family.py                       # tiny: about 10 minutes on a busy 2-core CPU
    python benchmarks/sam2_family.py --models sam2.1_hiera_tiny,sam2.1_hiera_small --reps 2
    python benchmarks/sam2_family.py --smoke               # parameters, cache, and the test variant's predict

Writes ``benchmarks/results/sam2_family-cpu-full.json`` (``--smoke``: ``sam2_family-cpu.json``; ``--out``
to change the folder).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]
import _common as C  # noqa: E402

from samadapt.models.sam2_family import (  # noqa: E402
    SAM2_MODEL_TYPES,
    Sam2Transform,
    build_sam2_model,
    encode_images,
    get_sam2_card,
    predict,
)
from samadapt.models.sam2_family.build import build_sam2_architecture  # noqa: E402
from samadapt.strategies.lora import LoraConfig  # noqa: E402


def _count(named) -> int:
    return sum(p.numel() for _, p in named)


def parameter_rows() -> list[dict[str, Any]]:
    from accelerate import init_empty_weights

    lora = LoraConfig()
    rows = []
    for name, card in SAM2_MODEL_TYPES.items():
        with init_empty_weights():
            m = build_sam2_architecture(card, "meta")
        enc, dec = m.image_encoder, m.sam_mask_decoder
        n_dec = _count(dec.named_parameters())
        n_convs = _count(dec.conv_s0.named_parameters()) + _count(dec.conv_s1.named_parameters())
        image_path = (
            _count(enc.named_parameters())
            + _count(m.sam_prompt_encoder.named_parameters())
            + n_dec
            + m.no_mem_embed.numel()
        )

        def lora_params(layers: tuple[str, ...]) -> int:
            linears = [getattr(block.attn, layer) for block in enc.trunk.blocks for layer in layers]
            return sum(lora.rank * (lin.in_features + lin.out_features) for lin in linears)

        bias = sum(p.numel() for n, p in enc.named_parameters() if n.endswith(".bias"))
        rows.append(
            {
                "model_type": name,
                "total": _count(m.named_parameters()),
                "image_encoder": _count(enc.named_parameters()),
                "trunk": _count(enc.trunk.named_parameters()),
                "neck": _count(enc.neck.named_parameters()),
                "prompt_encoder": _count(m.sam_prompt_encoder.named_parameters()),
                "mask_decoder": n_dec,
                "conv_s0_s1": n_convs,
                "video_only": _count(m.named_parameters()) - image_path,
                "trainable_decoder": n_dec,
                "trainable_decoder_cacheable": n_dec - n_convs,
                "trainable_lora": lora_params(("qkv",)) + n_dec,
                "trainable_lora_qkv_proj": lora_params(("qkv", "proj")) + n_dec,
                "trainable_bitfit": bias + n_dec,
                "trainable_full": image_path,
                "lora_rank": lora.rank,
            }
        )
    return rows


def cache_rows() -> list[dict[str, Any]]:
    rows = []
    for name, card in SAM2_MODEL_TYPES.items():
        (h0, _), (h1, _), (e, _) = card.feature_sizes
        shapes = {"image_embed": (256, e, e), "high_res_feats_0": (32, h0, h0), "high_res_feats_1": (64, h1, h1)}
        floats = sum(int(np.prod(s)) for s in shapes.values())
        before_convs = 256 * e * e + 256 * (h0 * h0 + h1 * h1)  # the FPN levels before conv_s0 / conv_s1
        rows.append(
            {
                "model_type": name,
                "shapes": {k: list(v) for k, v in shapes.items()},
                "floats": floats,
                "mib_fp32": round(4 * floats / 2**20, 2),
                "mib_bf16": round(2 * floats / 2**20, 2),
                "mib_fp32_before_convs": round(4 * before_convs / 2**20, 2),
                "sam1_vit_mib_fp32": 4.0,
            }
        )
    return rows


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def predict_rows(models: list[str], reps: int, bench: C.Bench) -> list[dict[str, Any]]:
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    boxes = np.array([[40, 60, 300, 400], [350, 100, 620, 460], [10, 10, 630, 470], [200, 200, 260, 280]], np.float32)
    rows = []
    for name in models:
        card = get_sam2_card(name)
        torch.manual_seed(0)
        model = build_sam2_model(name)
        upstream = SAM2ImagePredictor(model)
        upstream._bb_feat_sizes = list(card.feature_sizes)  # equal to upstream's for the 1024 px types
        tf = Sam2Transform(card.image_size)

        def ours():
            return predict(model, image, boxes=boxes, multimask=False)

        def encoder_only():
            with torch.no_grad():
                return encode_images(model, tf.preprocess_image(image)[None])

        def theirs():
            upstream.set_image(image)
            return upstream.predict(box=boxes, multimask_output=False)

        for fn in (ours, theirs):
            C.time_call(fn, "cpu")  # warm-up
        t_ours, t_theirs, t_enc = [], [], []
        for _ in range(reps):
            t_ours.append(C.time_call(ours, "cpu")[0])
            t_enc.append(C.time_call(encoder_only, "cpu")[0])
            t_theirs.append(C.time_call(theirs, "cpu")[0])
        masks, _ = ours()
        ref, _, _ = theirs()
        ious = [iou(a, b) for a, b in zip(masks, ref[:, 0])]
        bench.check(f"{name}: predict masks equal SAM2ImagePredictor's", min(ious) >= 0.999, min_iou=min(ious))
        rows.append(
            {
                "model_type": name,
                "image_size": card.image_size,
                "prompts": len(boxes),
                "samadapt_predict_s": round(min(t_ours), 3),
                "of_which_encoder_s": round(min(t_enc), 3),
                "upstream_predictor_s": round(min(t_theirs), 3),
                "ratio_samadapt_over_upstream": round(min(t_ours) / min(t_theirs), 3),
                "reps": reps,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="sam2.1_hiera_tiny", help="model types whose predict is timed")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--smoke", action="store_true", help="the test variant only, one repetition")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    args.device, args.dtype = "cpu", "fp32"
    if args.threads:
        torch.set_num_threads(args.threads)
    args.threads_note = "torch's default thread count" if args.threads is None else f"--threads {args.threads}"
    mode = "smoke" if args.smoke else "full"
    models = ["sam2.1_hiera_test"] if args.smoke else args.models.split(",")
    reps = 1 if args.smoke else args.reps
    warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit.script in upstream's transforms
    bench = C.Bench("sam2_family", args, mode)
    bench.data["setup"] = {"predict_models": models, "reps": reps, "image": [480, 640], "boxes": 4, "weights": "random"}
    params = parameter_rows()
    bench.table(
        "parameters",
        ["model_type", "total", "image_encoder", "prompt_encoder", "mask_decoder", "conv_s0_s1", "video_only"],
        params,
    )
    bench.table(
        "trainable parameters per strategy (samadapt's defaults)",
        [
            "model_type",
            "trainable_decoder",
            "trainable_decoder_cacheable",
            "trainable_lora",
            "trainable_lora_qkv_proj",
            "trainable_bitfit",
            "trainable_full",
        ],
        params,
    )
    bench.table(
        "embedding cache per image",
        ["model_type", "floats", "mib_fp32", "mib_bf16", "mib_fp32_before_convs"],
        cache_rows(),
    )
    bench.table(
        "predict at full size, CPU",
        [
            "model_type",
            "image_size",
            "prompts",
            "samadapt_predict_s",
            "of_which_encoder_s",
            "upstream_predictor_s",
            "ratio_samadapt_over_upstream",
        ],
        predict_rows(models, reps, bench),
    )
    bench.write()
    return 0 if bench.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
