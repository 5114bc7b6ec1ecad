"""What the stages take and give: parameters, results and their checks. No I/O here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

from shared.batching import Timing
from shared.config import MAX_GUIDANCE_SCALE, Settings, Size, format_size
from shared.errors import InvalidInput, UnsupportedSize
from shared.families.vocabulary import PromptWarning
from shared.noise_schedule import MAX_SEED
from shared.pipeline.contract import tensor, wire
from shared.sampler_names import DEFAULT_SAMPLER, SAMPLER_NAMES, SamplerName, canonical_sampler

MAX_RESAMPLES = 20
SAMPLER_DESCRIPTION = (
    "The sampler: " + ", ".join(SAMPLER_NAMES) + ", or a name other front ends use for one "
    '(any case: "DPM++ 2M Karras", "Euler a", "k_euler_a", "DPMSolverMultistepScheduler", '
    "...; the gateway's /v1/info lists them all)."
)


def _sampler_field(value: object) -> SamplerName:
    try:
        return canonical_sampler(value)
    except ValueError as exc:
        raise PydanticCustomError("unknown_sampler", str(exc)) from None


# A sampler field: any accepted name, validated to its canonical id (422 naming the
# field otherwise, with the accepted names).
Sampler = Annotated[SamplerName, BeforeValidator(_sampler_field)]
MAX_PIXELS_PER_SIDE = 8192

# A context is (batch, max_tokens, context_dim); a latent (batch, h, w, latent_channels).
CONTEXT_SHAPE = (None, "max_tokens", "context_dim")
LATENT_SHAPE = (None, None, None, "latent_channels")


class EncodeRequest(BaseModel):
    """Prompts to encode (a JSON body)."""

    prompts: list[str] = Field(min_length=1, description="One prompt per image row.")
    negative_prompts: list[str | None] | None = Field(
        default=None, description="Same length as prompts; null or '' means unconditional."
    )


@wire
class EncodedPrompts:
    context: np.ndarray = tensor("float32", CONTEXT_SHAPE, fp16=True)
    unconditional_context: np.ndarray = tensor("float32", CONTEXT_SHAPE, fp16=True)
    token_counts: list[int] = tensor("int32", (None,), wire_name="token_count")
    truncated: list[bool] = tensor("bool", (None,))
    timing: Timing | None = None


@dataclass(frozen=True)
class PromptRow:
    """One prompt's share of a text encoder batch."""

    context: np.ndarray  # (T, D)
    unconditional_context: np.ndarray  # (T, D)
    token_count: int
    truncated: bool


class DenoiseParams(BaseModel):
    """The diffusion stage's scalar parameters: one field each, with its static range.

    Ranges that depend on the deployment (served sizes, max steps, max n) are checked by
    `check_denoise_params`. On the wire these are the diffusion routes' query parameters.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    width: int = Field(ge=1, le=MAX_PIXELS_PER_SIDE)
    height: int = Field(ge=1, le=MAX_PIXELS_PER_SIDE)
    steps: int = Field(ge=1, description="Denoising steps.")
    guidance_scale: float = Field(ge=0, le=MAX_GUIDANCE_SCALE)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED, description="Image i: seed + i.")
    n: int = Field(default=1, ge=1, description="Images.")
    strength: float = Field(
        default=1.0, gt=0, le=1, description="img2img/inpaint: how far toward noise."
    )
    num_resamples: int = Field(
        default=1, ge=1, le=MAX_RESAMPLES, description="inpaint: RePaint resamples per step."
    )
    sampler: Sampler = Field(default=DEFAULT_SAMPLER, description=SAMPLER_DESCRIPTION)


def denoise_defaults(settings: Settings) -> dict[str, Any]:
    """The diffusion parameters a deployment fills in when a caller leaves them out."""
    return {
        "steps": settings.steps,
        "guidance_scale": settings.guidance_scale,
        "sampler": settings.sampler,
    }


@wire(frozen=True)
class DenoiseRequest:
    """txt2img; img2img with `init_latent`; inpaint with `init_latent` and `mask`."""

    context: np.ndarray = tensor("float32", CONTEXT_SHAPE, fp16=True)
    unconditional_context: np.ndarray = tensor("float32", CONTEXT_SHAPE, fp16=True)
    params: DenoiseParams
    init_latent: np.ndarray | None = tensor("float32", LATENT_SHAPE, fp16=True, default=None)
    # On the latent grid, in [0, 1], 1 = repaint.
    mask: np.ndarray | None = tensor("float32", (None, None, None, 1), fp16=True, default=None)


@wire
class DenoiseResult:
    latent: np.ndarray = tensor("float32", LATENT_SHAPE, fp16=True)
    seeds: list[int] = tensor("int64", (None,))
    timing: Timing | None = None


@wire(frozen=True)
class DecodeRequest:
    latent: np.ndarray = tensor("float32", LATENT_SHAPE, fp16=True)


@wire
class DecodeResult:
    images: np.ndarray = tensor("uint8", (None, None, None, 3))
    timing: Timing | None = None


@wire(frozen=True)
class EncodeImageRequest:
    images: np.ndarray = tensor("uint8", (None, None, None, 3))


@wire
class EncodeImageResult:
    latent: np.ndarray = tensor("float32", LATENT_SHAPE, fp16=True)
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
    # Which of the gateway's models (None: its default).
    model: str | None = None


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
    model: str = ""  # the model that drew it, and its weights
    weights: str = ""
    sampler: SamplerName = DEFAULT_SAMPLER  # the sampler that ran
    # Prompt words the model was not trained on (shared.families.vocabulary).
    warnings: list[PromptWarning] = field(default_factory=list)


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
    """The deployment's limits; the static ranges are DenoiseParams' own fields."""
    if not 1 <= params.steps <= settings.max_steps:
        raise InvalidInput(f"steps must be between 1 and {settings.max_steps}", param="steps")
    if not 1 <= params.n <= settings.max_images_per_request:
        raise InvalidInput(f"n must be between 1 and {settings.max_images_per_request}", param="n")
