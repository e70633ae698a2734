"""On-disk cache of image embeddings for strategies that keep the image encoder frozen.

With the ``decoder`` strategy the encoder never changes, so each training image is encoded once and
its embedding is reused every epoch (MedSAM v0 did this; by FLOPs decoder-only training on cached
embeddings needs ~70x fewer operations than re-running ViT-H each step).

Embeddings are stored in bf16 (or fp16) as one ``.npy`` file each (bf16 as its raw 16 bits), read
back memory-mapped; a SAM 2.1 model's features (the image embedding and two high-resolution maps,
``Sam2Features``: 16 MiB per 1024 px image in fp32, 8 MiB in bf16) as one ``.safetensors`` file
each, by their names. The trainer keeps validation images in fp32, so that validation scores exactly
what the model predicts from the image. The cache is a folder per *namespace*: a hash of the model
type, the base weights id (checkpoint sha256), the input size, the preprocessing version and the
dtype, so changing any of them reads from a different folder (the old entries are never confused
with new ones). Entries are keyed by the image's content (sha1 of its file bytes), not its path.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch

from ..errors import ConfigError, TrainingError
from ..paths import samadapt_home

if TYPE_CHECKING:
    from ..adapted import AdaptedSam

PREPROCESSING_VERSION = "resize-longest-side+normalize+pad-br/v1"
#: SAM 2.1's (``Sam2Transform``): a square resize that does not keep the aspect ratio
SAM2_PREPROCESSING_VERSION = "resize-square-antialias+normalize/v1"
_DTYPES = {
    torch.bfloat16: ("bf16", np.uint16),
    torch.float16: ("fp16", np.float16),
    torch.float32: ("fp32", np.float32),
}


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    writes: int = 0

    @property
    def hit_rate(self) -> float:
        n = self.hits + self.misses
        return self.hits / n if n else 0.0


@dataclass
class EmbeddingCache:
    """Embeddings (C, h, w) by image key, under ``directory/<namespace>/``."""

    directory: Path
    model_type: str
    base_id: str
    image_size: int
    dtype: torch.dtype = torch.bfloat16
    stats: CacheStats = field(default_factory=CacheStats)
    family: str = "sam"  # "sam2": entries are Sam2Features, one safetensors file each

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise ConfigError(f"cache dtype must be torch.bfloat16, torch.float16 or torch.float32, got {self.dtype}")
        self.directory = Path(self.directory)
        self.path.mkdir(parents=True, exist_ok=True)
        info = self.path / "namespace.json"
        if not info.exists():
            tmp = info.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(self.namespace_fields, indent=2))
            os.replace(tmp, info)

    @property
    def namespace_fields(self) -> dict[str, str]:
        fields = {
            "model_type": self.model_type,
            "base_id": self.base_id,
            "image_size": str(self.image_size),
            "preprocessing": PREPROCESSING_VERSION,
            "dtype": _DTYPES[self.dtype][0],
        }
        if self.family == "sam2":  # SAM 1's fields stay as they were: its caches keep their folders
            fields.update(preprocessing=SAM2_PREPROCESSING_VERSION, family="sam2")
        return fields

    @property
    def suffix(self) -> str:
        return ".safetensors" if self.family == "sam2" else ".npy"

    @property
    def namespace(self) -> str:
        blob = json.dumps(self.namespace_fields, sort_keys=True).encode()
        return f"{self.model_type}-{hashlib.sha1(blob).hexdigest()[:16]}"

    @property
    def path(self) -> Path:
        return self.directory / self.namespace

    def _file(self, image_key: str) -> Path:
        return self.path / f"{image_key}{self.suffix}"

    def __contains__(self, image_key: str) -> bool:
        return self._file(image_key).is_file()

    def get(self, image_key: str):
        """The cached embedding (C, h, w) in the cache dtype (SAM 2.1: the image's ``Sam2Features``),
        or None (counted as a miss)."""
        try:
            features = self._read(self._file(image_key))
        except (FileNotFoundError, ValueError, OSError):
            self.stats.misses += 1
            return None
        self.stats.hits += 1
        return features

    def _read(self, f: Path):
        if self.family == "sam2":
            from safetensors import SafetensorError
            from safetensors.torch import load_file

            from ..models.sam2_family import Sam2Features

            try:
                return Sam2Features.from_named(load_file(str(f)))
            except (SafetensorError, KeyError) as e:
                raise ValueError(f"{f}: {e}") from e
        arr = np.load(f, mmap_mode="r")
        t = torch.from_numpy(np.array(arr))  # copy out of the memory map: the tensor outlives it
        return t.view(torch.bfloat16) if self.dtype is torch.bfloat16 else t

    def put(self, image_key: str, embedding) -> None:
        """Store one embedding (C, h, w) (SAM 2.1: one image's ``Sam2Features``); written to a temp
        file then renamed (safe for several processes)."""
        f = self._file(image_key)
        tmp = f.with_name(f"{f.stem}.tmp{os.getpid()}{self.suffix}")
        try:
            if self.family == "sam2":
                from safetensors.torch import save_file

                named = {n: t.detach().to("cpu", self.dtype).contiguous() for n, t in embedding.named_tensors().items()}
                save_file(named, str(tmp))
            else:
                t = embedding.detach().to("cpu", self.dtype).contiguous()
                np.save(tmp, t.view(torch.uint16).numpy() if self.dtype is torch.bfloat16 else t.numpy())
            os.replace(tmp, f)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self.stats.writes += 1

    def _entries(self) -> list[Path]:
        # another process' temp files (``<key>.tmp<pid>.npy``) are not entries
        return [f for f in self.path.glob(f"*{self.suffix}") if ".tmp" not in f.name]

    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self._entries())

    def __len__(self) -> int:
        return len(self._entries())

    def summary(self) -> str:
        text = f"embedding cache {self.path}: {len(self)} embeddings, {self.size_bytes() / 2**20:.1f} MiB"
        if self.stats.hits + self.stats.misses:  # no reads yet: a hit rate would say nothing
            text += f", {self.stats.hits} hits / {self.stats.misses} misses (hit rate {self.stats.hit_rate:.0%})"
        return text


def cached_embedding(cache: EmbeddingCache, key: str, what: str):
    """The cached embedding of an image the run encoded into ``cache`` at its start."""
    emb = cache.get(key)
    if emb is None:
        raise TrainingError(
            f"{what} is missing from the embedding cache {cache.path} (deleted during the run?); "
            f"delete that folder and rerun"
        )
    return emb


def fill_embedding_cache(
    accelerator,
    model: AdaptedSam,
    dataset,
    cache: EmbeddingCache,
    *,
    batch_size: int,
    progress: bool,
    indices: Sequence[int] | None = None,
    autocast: bool = True,
    desc: str = "encoding images for the cache",
) -> int:
    """Encode every image of ``dataset`` (a ``SamPromptDataset`` with images; only ``indices`` if
    given) missing from the cache, the images split between processes, under the run's mixed
    precision unless ``autocast`` is False. Returns how many this process encoded. Where its time
    goes, beside the encoder: ``benchmarks/cache_fill.py``."""
    from accelerate.utils import broadcast_object_list
    from tqdm.auto import tqdm

    # The main process' list for every process: lists made by each process could differ (another
    # process may already have written some entries), and splitting different lists would leave
    # images that no process encodes.
    indices = range(len(dataset)) if indices is None else indices
    todo = [i for i in indices if dataset.image_key(i) not in cache] if accelerator.is_main_process else None
    todo = broadcast_object_list([todo])[0]
    encoded = 0
    with accelerator.split_between_processes(todo) as mine:
        bar = tqdm(total=len(todo), desc=desc, disable=not (progress and accelerator.is_local_main_process))
        for start in range(0, len(mine), batch_size):
            chunk = mine[start : start + batch_size]
            keys = [dataset.image_key(i) for i in chunk]
            x = torch.stack([dataset.transform.preprocess_image(dataset.instances.load_image(i)) for i in chunk])
            x = x.to(accelerator.device)
            with torch.no_grad(), accelerator.autocast() if autocast else contextlib.nullcontext():
                emb = model.encode(x)
            for k, e in zip(keys, emb):
                cache.put(k, e)
            encoded += len(chunk)
            bar.update(len(chunk) * accelerator.num_processes)
        bar.close()
    accelerator.wait_for_everyone()
    return encoded


def fill_run_caches(
    accelerator,
    model: AdaptedSam,
    train_keyed,
    val_keyed,
    *,
    directory: str | Path | None,
    batch_size: int,
    progress: bool,
    say,
) -> tuple[EmbeddingCache, Callable[[int], torch.Tensor]]:
    """The embedding caches of a training run, filled: the training images' in bf16 (what the
    decoder trains on) and the validation images' in fp32, read by every validation, so that it
    scores exactly what the model predicts. ``train_keyed`` / ``val_keyed``: ``SamPromptDataset``
    of each split with images; ``directory``: the caches' folder (default ``SAMADAPT_HOME/cache``).
    Returns the training cache and validation index -> embedding."""
    kw = dict(
        directory=Path(directory) if directory else samadapt_home() / "cache",
        model_type=model.model_type,
        base_id=model.base.base_id,
        image_size=model.transform.image_size,
        family=model.family.name,
    )
    cache = EmbeddingCache(**kw)
    encoded = fill_embedding_cache(accelerator, model, train_keyed, cache, batch_size=batch_size, progress=progress)
    say(f"{cache.summary()}; encoded {encoded} new image(s) on this process")
    val_cache = EmbeddingCache(**kw, dtype=torch.float32)
    encoded = fill_embedding_cache(
        accelerator,
        model,
        val_keyed,
        val_cache,
        batch_size=batch_size,
        progress=progress,
        autocast=False,
        desc="encoding validation images for the cache",
    )
    say(
        f"validation images: fp32 embedding cache {val_cache.path} ({len(val_cache)} embeddings); encoded "
        f"{encoded} new image(s) on this process"
    )

    def val_embeddings(i: int) -> torch.Tensor:
        return cached_embedding(
            val_cache, val_keyed.image_key(i), f"validation image {val_keyed.instances.image_path(i)}"
        )

    return cache, val_embeddings
