"""What a user without samadapt runs on a ``sam`` export (``tests/exporters/test_export.py`` runs this file in a
fresh Python): upstream ``SamPredictor`` with box prompts, on ``sam_model_registry[type](checkpoint=...)``
or, for a model type upstream has no registry entry for (``mini``), on upstream's modules built at
the card's sizes as upstream's ``_build_sam`` builds them. samadapt is made unimportable first.

    python tests/upstream_sam_predict.py SPEC_JSON   # {"registry" | "card", "checkpoints", "image", "boxes", "outs"}
"""

import json
import sys

sys.modules["samadapt"] = None  # any import of samadapt now fails

from functools import partial  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from segment_anything import SamPredictor, sam_model_registry  # noqa: E402
from segment_anything.modeling import (  # noqa: E402
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)


def build(spec, checkpoint):
    if spec["registry"]:
        return sam_model_registry[spec["registry"]](checkpoint=checkpoint)
    # a SAM-architecture model of other sizes: upstream's _build_sam with the card's numbers
    c = spec["card"]
    emb = c["image_size"] // c["patch_size"]
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=c["encoder_depth"],
            embed_dim=c["encoder_embed_dim"],
            img_size=c["image_size"],
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=c["encoder_num_heads"],
            patch_size=c["patch_size"],
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=c["encoder_global_attn_indexes"],
            window_size=c["window_size"],
            out_chans=c["prompt_embed_dim"],
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=c["prompt_embed_dim"],
            image_embedding_size=(emb, emb),
            input_image_size=(c["image_size"], c["image_size"]),
            mask_in_chans=c["mask_in_chans"],
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=2,
                embedding_dim=c["prompt_embed_dim"],
                mlp_dim=c["decoder_mlp_dim"],
                num_heads=c["decoder_num_heads"],
            ),
            transformer_dim=c["prompt_embed_dim"],
            iou_head_depth=3,
            iou_head_hidden_dim=c["iou_head_hidden_dim"],
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    sam.load_state_dict(torch.load(checkpoint, weights_only=True), strict=True)
    return sam


def main(spec: dict) -> None:
    for checkpoint, out in zip(spec["checkpoints"], spec["outs"]):
        predictor = SamPredictor(build(spec, checkpoint).eval())
        predictor.set_image(np.load(spec["image"]))
        masks, scores = [], []
        for box in np.array(spec["boxes"], dtype=np.float32):
            m, s, _ = predictor.predict(box=box, multimask_output=False)
            masks.append(m[0])
            scores.append(s[0])
        np.savez(out, masks=np.stack(masks), scores=np.array(scores))


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
