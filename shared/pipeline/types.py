"""What the stages take and give: parameters, results and their checks. No I/O here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shared.batching import Timing
from shared.config import MAX_GUIDANCE_SCALE, Settings, Size, format_size
from shared.errors import InvalidInput, UnsupportedSize
from shared.sampler import MAX_SEED

MAX_RESAMPLES = 20


@dataclass
class EncodedPrompts:
    context: np.ndarray  # (B, T, D)
    unconditional_context: np.ndarray  # (B, T, D)
    token_counts: list[int]
    truncated: list[bool]
    timing: Timing | None = None


@dataclass(frozen=True)
class PromptRow:
    """One prompt's share of a text encoder batch."""

    context: np.ndarray  # (T, D)
    unconditional_context: np.ndarray  # (T, D)
    token_count: int
    truncated: bool


@dataclass(frozen=True)
class DenoiseParams:
    width: int
    height: int
    steps: int
    guidance_scale: float
    seed: int | None = None
    n: int = 1
    # img2img / inpaint: how far toward noise the init image goes, in (0, 1].
    strength: float = 1.0
    # inpaint: RePaint resamples per step (1 = none).
    num_resamples: int = 1


@dataclass
class DenoiseResult:
    latent: np.ndarray  # (n, h, w, c) float32
    seeds: list[int]
    timing: Timing | None = None


@dataclass
class EncodeImageResult:
    latent: np.ndarray  # (B, h, w, c) float32
    timing: Timing | None = None


@dataclass
class DecodeResult:
    images: np.ndarray  # (B, H, W, 3) uint8
    timing: Timing | None = None


@dataclass
class StageInfo:
    """What /v1/info reports for a stage."""

    family: str
    weights: dict[str, str]
    random_weights: bool
    sizes: list[str]
    execution: dict[str, Any]
    load_seconds: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class GenerationParams:
    """One gateway request: the prompts and the diffusion parameters."""

    prompt: str
    negative_prompt: str | None
    denoise: DenoiseParams


@dataclass(frozen=True)
class EditInputs:
    """img2img / inpaint inputs, already at the output size."""

    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray | None = None  # (H, W) float32 in [0, 1], 1 = repaint
    mask_blur: int = 0
    keep_unmasked: bool = True  # inpainting: pixels outside the mask are the input's


@dataclass(frozen=True)
class StageTiming:
    """Where one stage's share of a request went, in milliseconds."""

    queue_ms: float
    compute_ms: float
    transfer_ms: float

    def as_dict(self) -> dict[str, float]:
        return {
            "queue_ms": round(self.queue_ms, 2),
            "compute_ms": round(self.compute_ms, 2),
            "transfer_ms": round(self.transfer_ms, 2),
        }


@dataclass
class GenerationResult:
    images: np.ndarray  # (n, H, W, 3) uint8
    seeds: list[int]
    timings: dict[str, StageTiming] = field(default_factory=dict)
    prompt_truncated: bool = False
    prompt_tokens: int = 0


def check_size(settings: Settings, width: int, height: int, *, param: str = "size") -> Size:
    size = (width, height)
    if size not in settings.sizes:
        served = ", ".join(format_size(s) for s in settings.sizes)
        raise UnsupportedSize(
            f"size {width}x{height} is not served here; served sizes: {served}", param=param
        )
    return size


def check_denoise_params(settings: Settings, params: DenoiseParams) -> None:
    check_size(settings, params.width, params.height)
    if not 1 <= params.steps <= settings.max_steps:
        raise InvalidInput(f"steps must be between 1 and {settings.max_steps}", param="steps")
    if not 1 <= params.n <= settings.max_images_per_request:
        raise InvalidInput(f"n must be between 1 and {settings.max_images_per_request}", param="n")
    if not (0.0 <= params.guidance_scale <= MAX_GUIDANCE_SCALE):
        raise InvalidInput(
            f"guidance_scale must be between 0 and {MAX_GUIDANCE_SCALE}", param="guidance_scale"
        )
    if params.seed is not None and not 0 <= params.seed <= MAX_SEED:
        raise InvalidInput(f"seed must be between 0 and {MAX_SEED}", param="seed")
    if not 0.0 < params.strength <= 1.0:
        raise InvalidInput("strength must be in (0, 1]", param="strength")
    if not 1 <= params.num_resamples <= MAX_RESAMPLES:
        raise InvalidInput(
            f"num_resamples must be between 1 and {MAX_RESAMPLES}", param="num_resamples"
        )
