"""SAM-Adapter: bottleneck adapters in every image-encoder block, optionally with the
high-frequency prompt generator of Chen et al. 2023 (arXiv 2304.09148).

Placements (REFERENCE section 3):
- ``"attn"``: a bottleneck with a skip connection after each block's attention (Medical SAM Adapter);
- ``"mlp"``: a bottleneck in parallel with each block's MLP, scaled by ``scale`` (AdaptFormer /
  Medical SAM Adapter).
On SAM 2.1 the bottlenecks go into every Hiera block (``image_encoder.trunk.blocks.N``), each as wide
as its block's output (``block.dim_out``: the width doubles per stage); the prompt generator needs a
plain ViT's single width and is refused there.
Each up-projection (and the prompt generator's shared MLP) starts at zero, so the adapted model
starts identical to SAM. The adapters are attached with forward hooks on the upstream modules, so the
upstream parameter names (and official checkpoints) are untouched; the new parameters are named
``image_encoder.blocks.N.adapter_{attn,mlp}.*`` and ``image_encoder.prompt_generator.*``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from segment_anything.modeling import Sam
from torch import nn

from ..errors import ConfigError
from ..models.family import family_of
from ..options import option
from .base import Strategy, StrategyConfig, register_strategy

PLACEMENTS = ("attn", "mlp")


class Bottleneck(nn.Module):
    """Linear(D -> hidden) - GELU - Linear(hidden -> D), the up-projection zero-initialised.

    Input and output (..., D)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.down = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.up = nn.Linear(hidden, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(x)))


class HighFrequencyPromptGenerator(nn.Module):
    """p_i = shared_mlp(mlp_i(F_hfc + F_pe)) added to the tokens before block i.

    F_pe = Linear(D -> D/r) of the patch tokens; F_hfc = Conv(3 -> D/r, patch x patch, stride patch)
    of the FFT high-pass image (the central ``mask_ratio`` of the spectrum zeroed).
    """

    def __init__(self, *, dim: int, depth: int, patch_size: int, ratio: int, mask_ratio: float = 0.25) -> None:
        super().__init__()
        hidden = max(1, dim // ratio)
        self.mask_ratio = mask_ratio
        self.embedding_generator = nn.Linear(dim, hidden)
        self.hfc_embed = nn.Conv2d(3, hidden, kernel_size=patch_size, stride=patch_size)
        self.lightweight_mlps = nn.ModuleList(nn.Sequential(nn.Linear(hidden, hidden), nn.GELU()) for _ in range(depth))
        self.shared_mlp = nn.Linear(hidden, dim)
        nn.init.zeros_(self.shared_mlp.weight)
        nn.init.zeros_(self.shared_mlp.bias)
        self._common: torch.Tensor | None = None

    def high_pass(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, 3, S, S) float32, low frequencies removed (FFT runs in fp32)."""
        with torch.autocast(device_type=image.device.type, enabled=False):
            x = image.float()
            h, w = x.shape[-2:]
            freq = torch.fft.fftshift(torch.fft.fft2(x, norm="forward"), dim=(-2, -1))
            half = int((h * w * self.mask_ratio) ** 0.5 // 2)
            keep = torch.ones(h, w, device=x.device)
            keep[h // 2 - half : h // 2 + half, w // 2 - half : w // 2 + half] = 0
            freq = freq * keep
            return torch.fft.ifft2(torch.fft.ifftshift(freq, dim=(-2, -1)), norm="forward").real

    def prepare(self, image: torch.Tensor, tokens: torch.Tensor) -> None:
        """Called on the patch embedding: image (B, 3, S, S), tokens (B, H, W, D)."""
        hfc = self.hfc_embed(self.high_pass(image).to(tokens.dtype)).permute(0, 2, 3, 1)
        self._common = hfc + self.embedding_generator(tokens)

    def prompt(self, index: int) -> torch.Tensor:
        """The prompt (B, H, W, D) for block ``index``."""
        if self._common is None:
            raise RuntimeError("prompt generator used before the patch embedding ran")
        return self.shared_mlp(self.lightweight_mlps[index](self._common))


def low_pass_matrix(n: int, half: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Real and imaginary parts (float32, (n, n)) of ``A = ifft(ifftshift(box * fftshift(fft(I))))``:
    ``A @ x`` keeps the ``2 * half`` centred frequencies of each column of ``x``, as the prompt
    generator's box does along one axis. Computed in float64 with numpy, so that a tracer records
    the result as a constant, not the FFTs."""
    spectrum = np.fft.fftshift(np.fft.fft(np.eye(n), axis=0, norm="forward"), axes=0)
    box = np.zeros(n)
    box[n // 2 - half : n // 2 + half] = 1
    a = np.fft.ifft(np.fft.ifftshift(spectrum * box[:, None], axes=0), axis=0, norm="forward")
    return torch.from_numpy(a.real.astype(np.float32)), torch.from_numpy(a.imag.astype(np.float32))


class MatrixHighPassPromptGenerator(HighFrequencyPromptGenerator):
    """The prompt generator with ``high_pass`` as matrix products (same numbers to float rounding).
    Modules become this class only while they are traced (:meth:`AdapterStrategy.tracing`): ONNX has
    no FFT the tracer can emit, so the high-pass filter (an FFT, a centred box of frequencies zeroed,
    an inverse FFT) is traced in its exact linear form, ``x - Re(A_h x A_w^T)`` with
    ``A = F^-1 diag(box) F`` precomputed in float64."""

    def high_pass(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 3, H, W) float32: ``x - Re(A_h x A_w^T)``, the complement of the box."""
        x = image.float()
        h, w = x.shape[-2:]
        half = int((h * w * self.mask_ratio) ** 0.5 // 2)  # HighFrequencyPromptGenerator.high_pass's box
        rh, ih = (t.to(x.device) for t in low_pass_matrix(h, half))
        rw, iw = (t.to(x.device) for t in low_pass_matrix(w, half))
        return x - (rh @ x @ rw.T - ih @ x @ iw.T)


@dataclass
class AdapterConfig(StrategyConfig):
    bottleneck_ratio: float = option(0.0625, "bottleneck width as a fraction of the encoder width D")
    scale: float = option(0.5, "scale of the parallel MLP adapter's output")
    placement: tuple[str, ...] = option(
        ("attn", "mlp"), "where the bottlenecks go: attn (after attention, with skip), mlp (parallel to the MLP)"
    )
    prompt_generator: bool = option(False, "add SAM-Adapter's high-frequency prompt generator (Chen et al. 2023)")
    prompt_ratio: int = option(32, "prompt generator width: D / prompt_ratio")
    train_decoder: bool = option(True, "also train the mask decoder")

    def __post_init__(self) -> None:
        if not 0 < self.bottleneck_ratio <= 1:
            raise ConfigError(f"adapter `bottleneck_ratio` should be in (0, 1], got {self.bottleneck_ratio!r}")
        if not self.scale > 0:
            raise ConfigError(f"adapter `scale` should be positive, got {self.scale!r}")
        self.placement = tuple(self.placement)
        bad = [p for p in self.placement if p not in PLACEMENTS]
        if bad or len(set(self.placement)) != len(self.placement):
            raise ConfigError(
                f"adapter `placement` {list(self.placement)} invalid; choose a subset of {list(PLACEMENTS)}"
            )
        if not self.placement and not self.prompt_generator:
            raise ConfigError("adapter strategy with no placement and no prompt generator adapts nothing")
        if not isinstance(self.prompt_ratio, int) or self.prompt_ratio < 1:
            raise ConfigError(f"adapter `prompt_ratio` should be a positive integer, got {self.prompt_ratio!r}")


def _sequential_hook(adapter: Bottleneck):
    def hook(module, inputs, output):
        return output + adapter(output)

    return hook


def _parallel_hook(adapter: Bottleneck, scale: float):
    def hook(module, inputs, output):
        return output + scale * adapter(inputs[0])

    return hook


def _prompt_prepare_hook(generator: HighFrequencyPromptGenerator):
    def hook(module, inputs, output):
        generator.prepare(inputs[0], output)

    return hook


def _prompt_add_hook(generator: HighFrequencyPromptGenerator, index: int):
    def hook(module, inputs):
        return (inputs[0] + generator.prompt(index),) + tuple(inputs[1:])

    return hook


def _add_prompt_generator(enc, dim: int, ratio: int, device) -> None:
    """A :class:`HighFrequencyPromptGenerator` on a ViT image encoder ``enc`` (SAM 1's), hooked
    into its patch embedding and before each block."""
    gen = HighFrequencyPromptGenerator(
        dim=dim, depth=len(enc.blocks), patch_size=enc.patch_embed.proj.kernel_size[0], ratio=ratio
    ).to(device)
    enc.prompt_generator = gen
    enc.patch_embed.register_forward_hook(_prompt_prepare_hook(gen))
    for i, block in enumerate(enc.blocks):
        block.register_forward_pre_hook(_prompt_add_hook(gen, i))


@register_strategy
class AdapterStrategy(Strategy):
    name = "adapter"
    config_class = AdapterConfig
    description = (
        "SAM-Adapter bottlenecks in every encoder block (+ optional high-frequency prompts); decoder trainable"
    )
    # image_encoder.blocks.N.adapter_{attn,mlp}.* and image_encoder.prompt_generator.* (the names of
    # every adapter file written so far)
    prefix = ("adapter_", "prompt_generator")

    def apply(self, sam: Sam, config: StrategyConfig) -> None:
        assert isinstance(config, AdapterConfig)
        parts = family_of(sam).parts(sam)
        if config.prompt_generator and len(set(parts.block_dims)) != 1:
            raise ConfigError(
                f"the adapter's prompt_generator needs an encoder of one width (a plain ViT, as SAM 1's); "
                f"this {family_of(sam).label} encoder's blocks have widths {sorted(set(parts.block_dims))}: "
                "use the bottlenecks alone (prompt_generator=False)"
            )
        self.freeze_all(sam)
        device = next(parts.encoder_blocks.parameters()).device
        for block, dim in zip(parts.encoder_blocks, parts.block_dims):
            hidden = max(1, round(dim * config.bottleneck_ratio))
            if "attn" in config.placement:
                block.adapter_attn = Bottleneck(dim, hidden).to(device)
                block.attn.register_forward_hook(_sequential_hook(block.adapter_attn))
            if "mlp" in config.placement:
                block.adapter_mlp = Bottleneck(dim, hidden).to(device)
                block.mlp.register_forward_hook(_parallel_hook(block.adapter_mlp, config.scale))
        if config.prompt_generator:
            _add_prompt_generator(parts.image_encoder, parts.block_dims[0], config.prompt_ratio, device)
        self.train_own(sam, train_decoder=config.train_decoder)

    @contextlib.contextmanager
    def tracing(self, sam: Sam) -> Iterator[Sam]:
        """The prompt generators of ``sam`` with their high-pass filter as matrix products
        (:class:`MatrixHighPassPromptGenerator`), restored afterwards."""
        swapped = [m for m in sam.modules() if type(m) is HighFrequencyPromptGenerator]
        for m in swapped:
            m.__class__ = MatrixHighPassPromptGenerator
        try:
            yield sam
        finally:
            for m in swapped:
                m.__class__ = HighFrequencyPromptGenerator
