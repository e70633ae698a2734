"""The jobs ``benchmarks/peers.py`` runs, one per tool, each in a fresh process:

    python benchmarks/_peer_jobs.py SPEC.json      # prints one line: @@RESULT@@ {json}

- ``train_samadapt``: ``samadapt.training.train`` (what ``samadapt train`` runs), decoder strategy,
  its defaults but for the shared settings below and box prompts only, one decoder pass a step
  (``--train-prompts box --click-rounds 0``, the protocol of "Don't waste SAM", which the peers'
  loops also follow); epoch 1 includes filling the embedding cache.
- ``train_transformers``: the loop of NielsRogge's SAM fine-tuning tutorial
  (Transformers-Tutorials, "Fine-tune SAM (segment anything) on a custom dataset"): ``SamProcessor``
  on every sample inside the Dataset, ``SamModel`` with the vision and prompt encoders frozen (the
  vision encoder still runs every step), ``multimask_output=False``, monai's ``DiceCELoss(sigmoid=True,
  squared_pred=True)``, ``Adam(mask_decoder, lr=1e-5)``.
- ``train_microsam``: micro-sam's trainer (``micro_sam.training``) as ``train_sam`` assembles it,
  decoder-only (``freeze=["image_encoder", "prompt_encoder"]``), with its box-prompt trainer
  (``MedSAMTrainer``: one box per object, one decoder pass per step); runs in micro-sam's own
  environment, so this module imports nothing of samadapt at its top.
- ``predict_samadapt`` / ``predict_segment_anything``: ``AdaptedSam.predict_batch`` vs a loop of
  upstream ``SamPredictor.set_image`` + ``predict_torch``.

Shared by every training job: the same weights (one SAM-format file), the same frames
(``peers.py`` writes them as .npz: image, instance masks, exact boxes, instance label map), batch 1,
every instance of a frame prompted by its exact box, the same number of epochs and the same frame
order per epoch (``orders``). Each job times its epochs' training loop (no validation), records
its own loss, the peak resident memory of its process (CPU) or ``max_memory_allocated`` (CUDA), and
writes its final mask-decoder weights, in upstream ``segment_anything`` names, for ``peers.py`` to
score all tools the same way.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

RESULT_TAG = "@@RESULT@@ "
HERE = Path(__file__).resolve().parent


# ------------------------------------------------------------------------------------------ shared
def peak_memory_mib(device: str) -> float:
    """Peak resident set of this process (CPU: VmHWM) or peak CUDA tensor memory, in MiB."""
    if device == "cuda":
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    m = re.search(r"^VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    return round(int(m.group(1)) / 1024, 1) if m else float("nan")


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def clock(device: str) -> tuple[float, float]:
    """(wall-clock, this process's CPU time) after the device's queued work: on a shared CPU the CPU
    time of these one-thread jobs counts their own work, the wall-clock also the other jobs' load."""
    sync(device)
    return time.perf_counter(), time.process_time()


def since(start: tuple[float, float], device: str) -> tuple[float, float]:
    now = clock(device)
    return now[0] - start[0], now[1] - start[1]


def load_frames(spec: dict[str, Any], key: str = "frames") -> list[dict[str, np.ndarray]]:
    return [dict(np.load(p)) for p in spec["data"][key]]


class EpochOrder(torch.utils.data.Sampler):
    """The frames in ``orders[e]`` at the e-th pass (samadapt's per-epoch order, for the peers)."""

    def __init__(self, orders: list[list[int]]) -> None:
        self.orders, self.passes = orders, 0

    def __iter__(self):
        order = self.orders[min(self.passes, len(self.orders) - 1)]
        self.passes += 1
        return iter(order)

    def __len__(self) -> int:
        return len(self.orders[0])


def save_decoder(state: dict[str, torch.Tensor], path: str) -> None:
    """Mask-decoder weights in upstream names (``mask_decoder.*``)."""
    from safetensors.torch import save_file

    save_file({k: v.detach().float().cpu().contiguous() for k, v in state.items()}, path)


# ------------------------------------------------------------------------------------------ samadapt
def register_variant(variant: dict[str, Any]) -> str:
    """The samadapt model type of a plan variant: the registered one, or (reduced input size) a card
    registered under a new name in this process, e.g. ``vit_b_s256``."""
    import dataclasses

    from samadapt.models.registry import MODEL_TYPES, get_model_card, register_model_type

    base = get_model_card(variant["model_type"])
    size = variant.get("image_size") or base.image_size
    if size == base.image_size:
        return base.name
    name = f"{base.name}_s{size}"
    if name not in MODEL_TYPES:
        register_model_type(
            dataclasses.replace(
                base,
                name=name,
                tag=f"{base.tag}s{size}",
                image_size=size,
                checkpoint=None,
                builtin_weights=None,
                description=f"{base.name} at {size} px (benchmark variant)",
            )
        )
    return name


def train_samadapt(spec: dict[str, Any]) -> dict[str, Any]:
    import samadapt.training.cache as cache_module
    from samadapt.config import TrainConfig
    from samadapt.training.state import STATE_DIR, latest_state

    model_type = register_variant(spec["variant"])
    d = spec["data"]
    out = Path(spec["work"])
    fills: list[tuple[float, float]] = []
    fill = cache_module.fill_embedding_cache

    def timed_fill(*a, **kw):  # the trainer's own function, timed: the cache fill belongs to epoch 1
        t0 = clock(spec["device"])
        n = fill(*a, **kw)
        fills.append(since(t0, spec["device"]))
        return n

    cache_module.fill_embedding_cache = timed_fill  # looked up there by fill_run_caches
    cfg = TrainConfig(
        strategy="decoder",
        model=model_type,
        checkpoint=spec["checkpoint"],
        dataset="coco",
        images_root=d["train_root"],
        annotation_file=d["train_json"],
        val_images_root=d["val_root"],
        val_annotation_file=d["val_json"],
        epochs=spec["epochs"],
        batch_size=1,
        prompts_per_image=spec["prompts"],
        box_noise=0.0,  # the exact box, as every tool here gets
        # one box pass per instance and step, as the peers train (samadapt's default adds a click
        # prompt for 30% of the instances and 3 corrective click rounds: 4 decoder passes a step)
        train_prompts=["box"],
        click_rounds=0,
        patience=0,
        zero_shot=False,
        mixed_precision="no",
        cache_dir=str(out / "cache"),  # a fresh cache per repeat: epoch 1 encodes every image
        output_dir=str(out / "run"),
        overwrite=True,
        publish=False,
        progress=False,
        log_with="none",
        num_examples=1,
        seed=spec["seed"],
    )
    from samadapt.training.trainer import train

    result = train(cfg)
    history = result.history
    epoch_s = [h["seconds"] for h in history]
    epoch_cpu_s = [h["cpu_seconds"] for h in history]
    epoch_s[0] += fills[0][0]
    epoch_cpu_s[0] += fills[0][1]
    from safetensors.torch import load_file

    last = load_file(str(latest_state(Path(cfg.output_dir) / STATE_DIR) / "trainable_0.safetensors"))
    save_decoder({k: v for k, v in last.items() if k.startswith("mask_decoder.")}, spec["decoder_out"])
    return {
        "epoch_s": epoch_s,
        "epoch_cpu_s": epoch_cpu_s,
        "cache_fill_s": round(fills[0][0], 3),
        "loss_by_epoch": [h["train_loss"] for h in history],
        "loss_name": "SamLoss: 20 focal + 1 dice + 1 IoU-head MSE (samadapt's default)",
        "optimizer": f"AdamW lr {cfg.lr} (cosine, {cfg.warmup_steps} warm-up steps), grad clip {cfg.max_grad_norm}",
        "encoder_forwards_in_epochs": [h["encoder_images"] for h in history],
        "dtype": "fp32",
    }


# ------------------------------------------------------------------------------------------ transformers
def train_transformers(spec: dict[str, Any]) -> dict[str, Any]:
    import monai
    from transformers import SamModel, SamProcessor

    dev = spec["device"]
    frames = load_frames(spec)
    processor = SamProcessor.from_pretrained(spec["hf_dir"])
    model = SamModel.from_pretrained(spec["hf_dir"]).to(dev)

    class SAMDataset(torch.utils.data.Dataset):  # the tutorial's, with every box of the frame
        def __len__(self):
            return len(frames)

        def __getitem__(self, idx):
            f = frames[idx]
            inputs = processor(
                f["image"], input_boxes=[f["boxes"].tolist()], segmentation_maps=f["labels"], return_tensors="pt"
            )
            inputs = {k: v.squeeze(0) for k, v in inputs.items()}
            # the processor resizes and pads the label map to the 256 x 256 frame of pred_masks
            ids = torch.arange(1, len(f["boxes"]) + 1)
            inputs["ground_truth_mask"] = (inputs.pop("labels")[None] == ids[:, None, None]).float()
            return inputs

    loader = torch.utils.data.DataLoader(SAMDataset(), batch_size=1, sampler=EpochOrder(spec["data"]["orders"]))
    for name, param in model.named_parameters():
        if name.startswith("vision_encoder") or name.startswith("prompt_encoder"):
            param.requires_grad_(False)
    optimizer = torch.optim.Adam(model.mask_decoder.parameters(), lr=1e-5, weight_decay=0)
    seg_loss = monai.losses.DiceCELoss(sigmoid=True, squared_pred=True, reduction="mean")
    model.train()
    epoch_s, epoch_cpu_s, loss_by_epoch = [], [], []
    for _ in range(spec["epochs"]):
        t0 = clock(dev)
        losses = []
        for batch in loader:
            outputs = model(
                pixel_values=batch["pixel_values"].to(dev),
                input_boxes=batch["input_boxes"].to(dev),
                multimask_output=False,
            )
            predicted_masks = outputs.pred_masks.squeeze(2)  # (B, boxes, 256, 256)
            ground_truth_masks = batch["ground_truth_mask"].float().to(dev)
            loss = seg_loss(predicted_masks, ground_truth_masks)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        wall, cpu = since(t0, dev)
        epoch_s.append(wall)
        epoch_cpu_s.append(cpu)
        loss_by_epoch.append(float(np.mean(losses)))
    save_decoder({f"mask_decoder.{k}": v for k, v in model.mask_decoder.state_dict().items()}, spec["decoder_out"])
    return {
        "epoch_s": epoch_s,
        "epoch_cpu_s": epoch_cpu_s,
        "loss_by_epoch": loss_by_epoch,
        "loss_name": "monai DiceCELoss(sigmoid=True, squared_pred=True) (the tutorial's)",
        "optimizer": "Adam lr 1e-05 on the mask decoder (the tutorial's)",
        "encoder_forwards_in_epochs": [len(frames)] * spec["epochs"],
        "dtype": "fp32",
        "attention": getattr(model.config, "_attn_implementation", None),
    }


# ------------------------------------------------------------------------------------------ micro-sam
class LabelFrames(torch.utils.data.Dataset):
    """(x, y) as micro-sam's loaders give them: (3, H, W) float pixels 0..255, (1, H, W) instance ids.
    (At module level: torch_em pickles the loaders' datasets into its checkpoints.)"""

    def __init__(self, frames):
        self.frames = frames

    def __len__(self):
        return len(self.frames)

    def __getitem__(self, i):
        f = self.frames[i]
        x = torch.from_numpy(f["image"]).permute(2, 0, 1).float()
        return x, torch.from_numpy(f["labels"].astype(np.float32))[None]


def train_microsam(spec: dict[str, Any]) -> dict[str, Any]:
    from micro_sam.training import ConvertToSamInputs, MedSAMTrainer, SamLogger, get_trainable_sam_model

    dev = spec["device"]
    card = spec["card"]

    train = torch.utils.data.DataLoader(
        LabelFrames(load_frames(spec)), batch_size=1, sampler=EpochOrder(spec["data"]["orders"])
    )
    val = torch.utils.data.DataLoader(LabelFrames(load_frames(spec, "val_frames")), batch_size=1)
    kwargs = {} if card["image_size"] == 1024 else {"image_size": card["image_size"]}
    # train_sam's steps, with its documented decoder-only setting
    model = get_trainable_sam_model(
        model_type=spec["variant"]["model_type"],
        device=dev,
        checkpoint_path=spec["checkpoint"],
        freeze=["image_encoder", "prompt_encoder"],
        **kwargs,
    )
    convert_inputs = ConvertToSamInputs(transform=model.transform, box_distortion_factor=None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.9, patience=3)
    epoch_s: list[float] = []
    epoch_cpu_s: list[float] = []
    step_losses: list[float] = []

    class Timed(MedSAMTrainer):  # measurement only: the epoch's training loop and each step's loss
        def _train_epoch_impl(self, progress, forward_context, backprop):
            t0 = clock(dev)
            r = super()._train_epoch_impl(progress, forward_context, backprop)
            wall, cpu = since(t0, dev)
            epoch_s.append(wall)
            epoch_cpu_s.append(cpu)
            return r

        def _interactive_train_iteration(self, x, y):
            out = super()._interactive_train_iteration(x, y)
            step_losses.append(float(out[0].detach()))
            return out

    trainer = Timed(
        name="peers",
        save_root=spec["work"],
        train_loader=train,
        val_loader=val,
        model=model,
        optimizer=optimizer,
        device=dev,
        lr_scheduler=scheduler,
        logger=SamLogger,
        log_image_interval=100,
        # train_sam hard-codes mixed precision, which torch_em runs as bf16 autocast on a CPU: on
        # a CPU without bf16 units (AVX2) the encoder then takes minutes per image, so fp32 there
        mixed_precision=dev == "cuda",
        convert_inputs=convert_inputs,
        n_objects_per_batch=spec["prompts"],
        compile_model=False,
        early_stopping=None,
    )
    trainer.fit(epochs=spec["epochs"])
    n = len(train.dataset)
    save_decoder({f"mask_decoder.{k}": v for k, v in model.sam.mask_decoder.state_dict().items()}, spec["decoder_out"])
    return {
        "epoch_s": epoch_s,
        "epoch_cpu_s": epoch_cpu_s,
        "loss_by_epoch": [float(np.mean(step_losses[e * n : (e + 1) * n])) for e in range(len(epoch_s))],
        "loss_name": "micro-sam: dice (torch_em DiceLoss) + IoU-head MSE",
        "optimizer": "AdamW lr 1e-05, ReduceLROnPlateau (train_sam's)",
        "encoder_forwards_in_epochs": [n] * len(epoch_s),
        "dtype": "bf16 autocast" if dev == "cuda" else "fp32",
    }


# ------------------------------------------------------------------------------------------ prediction
def _predict_inputs(spec):
    frames = load_frames(spec)
    return [f["image"] for f in frames], [f["boxes"] for f in frames]


def predict_samadapt(spec: dict[str, Any]) -> dict[str, Any]:
    import samadapt
    from samadapt.models.registry import build_sam

    model = samadapt.adapt(build_sam(register_variant(spec["variant"]), spec["checkpoint"]), "decoder")
    model.to(spec["device"]).eval()
    images, boxes = _predict_inputs(spec)

    def run(imgs, bxs):
        return model.predict_batch(imgs, bxs, batch_size=spec["batch_size"])

    return _time_prediction(spec, run, images, boxes, "AdaptedSam.predict_batch (fast paths on: library defaults)")


def predict_segment_anything(spec: dict[str, Any]) -> dict[str, Any]:
    from segment_anything import SamPredictor

    from samadapt.models.registry import build_sam_architecture, get_model_card

    sam = build_sam_architecture(get_model_card(register_variant(spec["variant"])))
    sam.load_state_dict(torch.load(spec["checkpoint"], map_location="cpu"))  # plain upstream modules
    predictor = SamPredictor(sam.to(spec["device"]).eval())
    images, boxes = _predict_inputs(spec)

    def run(imgs, bxs):
        out = []
        for im, bx in zip(imgs, bxs):
            predictor.set_image(im)
            tb = predictor.transform.apply_boxes_torch(torch.as_tensor(bx, device=spec["device"]), im.shape[:2])
            masks, scores, _ = predictor.predict_torch(None, None, boxes=tb, multimask_output=False)
            out.append((masks[:, 0].cpu().numpy(), scores[:, 0].float().cpu().numpy()))
        return out

    return _time_prediction(spec, run, images, boxes, "SamPredictor.set_image + predict_torch(boxes) per image")


def _time_prediction(spec, run, images, boxes, what: str) -> dict[str, Any]:
    dev = spec["device"]
    with torch.inference_mode():
        run(images[:1], boxes[:1])  # warm-up on one image
        times, cpu_times, out = [], [], None
        for _ in range(spec["passes"]):
            t0 = clock(dev)
            out = run(images, boxes)
            wall, cpu = since(t0, dev)
            times.append(wall)
            cpu_times.append(cpu)
    np.savez_compressed(spec["masks_out"], *[m for m, _ in out])
    return {"epoch_s": times, "epoch_cpu_s": cpu_times, "what": what, "dtype": "fp32"}


# ------------------------------------------------------------------------------------------ entry
JOBS = {
    "train_samadapt": train_samadapt,
    "train_transformers": train_transformers,
    "train_microsam": train_microsam,
    "predict_samadapt": predict_samadapt,
    "predict_segment_anything": predict_segment_anything,
}


#: the distributions behind each job (their versions go into its result)
PACKAGES = {
    "train_samadapt": ["samadapt"],
    "train_transformers": ["transformers", "monai"],
    "train_microsam": ["micro_sam", "torch_em", "segment-anything-py"],
    "predict_samadapt": ["samadapt"],
    "predict_segment_anything": ["segment_anything"],
}


def versions(job: str) -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for dist in PACKAGES[job]:
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


def main(path: str) -> int:
    spec = json.loads(Path(path).read_text())
    torch.set_num_threads(int(spec["threads"])) if spec.get("threads") else None
    torch.manual_seed(spec["seed"])
    np.random.seed(spec["seed"])
    t0 = time.perf_counter()
    result = JOBS[spec["job"]](spec)
    result.update(
        peak_memory_mib=peak_memory_mib(spec["device"]),
        job_s=round(time.perf_counter() - t0, 2),
        torch=torch.__version__,
        versions=versions(spec["job"]),
        threads=torch.get_num_threads(),
        pid=os.getpid(),
    )
    print(RESULT_TAG + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
