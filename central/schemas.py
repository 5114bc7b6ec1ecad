"""The gateway's public request and response shapes (OpenAI Images, Hugging Face, jobs).

Unknown request fields are ignored and omitted ones defaulted, because existing clients
(the `openai` package, `huggingface_hub.InferenceClient`) send only what they know about.
Responses are built with only the fields they carry and rendered with `exclude_unset`, so
an image has `b64_json` or `url` (never both, never null) and a job has `result` or
`error` only once it has one.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.config import MAX_GUIDANCE_SCALE, Settings, parse_size
from shared.errors import InvalidInput, UnsupportedSize
from shared.families import FAMILY_NAMES, get_family
from shared.http import ServiceInfo
from shared.noise_schedule import MAX_SEED
from shared.pipeline.contract import validated
from shared.pipeline.types import (
    MAX_RESAMPLES,
    SAMPLER_DESCRIPTION,
    DenoiseParams,
    GenerationParams,
    Sampler,
    denoise_defaults,
)
from shared.sampler_names import SamplerName
from shared.tokenizer import MAX_PROMPT_CHARS

GUIDANCE_DESCRIPTION = (
    "Classifier-free guidance scale. Omitted: SDSERVE_DEFAULT_GUIDANCE_SCALE, else the model "
    "family's ("
    + ", ".join(f"{n} {get_family(n).spec.default_guidance_scale:g}" for n in FAMILY_NAMES)
    + "); see /v1/info."
)
MAX_MASK_BLUR = 8

ResponseFormat = Literal["b64_json", "url"]
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
JobKind = Literal["generation", "edit"]


def denoise_params(fields: dict[str, Any]) -> DenoiseParams:
    """The diffusion parameters of a request; out of range is a 4xx naming the field
    (width and height come from `size`)."""
    try:
        return validated(DenoiseParams, fields)
    except InvalidInput as exc:
        if exc.param in ("width", "height"):
            raise UnsupportedSize(f"size: {exc.message}", param="size") from None
        raise


def _or_default(guidance_scale: float | None, settings: Settings) -> float:
    return settings.guidance_scale if guidance_scale is None else guidance_scale


def parse_size_field(size: str) -> tuple[int, int]:
    try:
        return parse_size(size)
    except ValueError:
        raise InvalidInput(f"size {size!r} is not like 512x512", param="size") from None


# --------------------------------------------------------------------------- requests


class StableDiffusionFields(BaseModel):
    """What generations and edits share: the prompts and the diffusion parameters."""

    model_config = ConfigDict(extra="ignore")

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    n: int = Field(default=1, ge=1, description="Number of images.")
    negative_prompt: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS)
    steps: int | None = Field(default=None, ge=1, description="Denoising steps.")
    guidance_scale: float | None = Field(
        default=None, ge=0, le=MAX_GUIDANCE_SCALE, description=GUIDANCE_DESCRIPTION
    )
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED, description="Image i uses seed+i.")
    sampler: Sampler | None = Field(
        default=None, description=SAMPLER_DESCRIPTION + " Omitted: the deployment's default."
    )
    model: str | None = Field(
        default=None, description="Which model draws it (GET /v1/models); default: the first."
    )

    def generation_params(self, settings: Settings, width: int, height: int) -> GenerationParams:
        """The chain's parameters: every field this request shares with DenoiseParams (by
        name), the deployment's defaults for those left out."""
        given = {
            name: getattr(self, name)
            for name in DenoiseParams.model_fields
            if name in type(self).model_fields and getattr(self, name) is not None
        }
        fields = {**denoise_defaults(settings), "width": width, "height": height, **given}
        return GenerationParams(
            prompt=self.prompt,
            negative_prompt=self.negative_prompt,
            denoise=denoise_params(fields),
            model=self.model,
        )


class ImageGenerationRequest(StableDiffusionFields):
    """OpenAI `images.generate` body, plus Stable Diffusion's own fields."""

    size: str | None = Field(
        default=None, description='"WxH"; one of the served sizes (default: the first).'
    )
    response_format: ResponseFormat = Field(
        default="b64_json", description="url gives a data: URL (nothing is stored)."
    )

    def to_params(self, settings: Settings) -> GenerationParams:
        width, height = settings.sizes[0] if self.size is None else parse_size_field(self.size)
        return self.generation_params(settings, width, height)


class ImageEditFields(StableDiffusionFields):
    """The fields of an edit besides the image and mask (multipart sends them as strings)."""

    size: str | None = Field(default=None, description='"WxH"; default: the image\'s size.')
    response_format: ResponseFormat = "b64_json"
    strength: float = Field(default=0.8, gt=0, le=1, description="How far to move from the image.")
    num_resamples: int = Field(default=1, ge=1, le=MAX_RESAMPLES, description="RePaint resamples.")
    mask_blur: int = Field(default=0, ge=0, le=MAX_MASK_BLUR, description="Feather, latent cells.")
    keep_unmasked: bool = Field(
        default=True,
        description="Inpainting: pixels outside the mask come back exactly as sent (not "
        "after a trip through the VAE); false returns the decoded image as it is.",
    )

    def to_params(self, settings: Settings, width: int, height: int) -> GenerationParams:
        return self.generation_params(settings, width, height)


class ImageEditJson(ImageEditFields):
    """The JSON form of an edit: base64 image and an optional greyscale mask (white = repaint,
    as in diffusers)."""

    image: str = Field(min_length=1, description="Base64 PNG/JPEG/WebP.")
    mask: str | None = Field(
        default=None,
        description="Base64 greyscale; white = repaint. Omitted: the image's fully "
        "transparent pixels are repainted; an opaque image is image-to-image.",
    )


class HfParameters(BaseModel):
    """`parameters` of a Hugging Face text-to-image request."""

    model_config = ConfigDict(extra="ignore")

    negative_prompt: str | list[str] | None = None
    height: float | None = Field(default=None, gt=0)
    width: float | None = Field(default=None, gt=0)
    num_inference_steps: int | None = Field(default=None, ge=1)
    guidance_scale: float | None = Field(
        default=None, ge=0, le=MAX_GUIDANCE_SCALE, description=GUIDANCE_DESCRIPTION
    )
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    scheduler: Sampler | None = Field(
        default=None,
        description="The sampler (InferenceClient's `scheduler`): a diffusers scheduler "
        "class such as DPMSolverMultistepScheduler, or any name `sampler` takes elsewhere.",
    )

    @field_validator("height", "width")
    @classmethod
    def _whole_pixels(cls, value: float | None) -> float | None:
        # InferenceClient may send 512.0; 512.5 pixels is a mistake, not a size.
        if value is not None and not float(value).is_integer():
            raise ValueError("must be a whole number of pixels")
        return value


class HfTextToImageRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    inputs: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    parameters: HfParameters = Field(default_factory=HfParameters)

    def to_params(self, settings: Settings) -> GenerationParams:
        p = self.parameters
        default_width, default_height = settings.sizes[0]
        negative = p.negative_prompt
        if isinstance(negative, list):
            negative = ", ".join(negative)
        return GenerationParams(
            prompt=self.inputs,
            negative_prompt=negative,
            denoise=denoise_params(
                {
                    "width": int(p.width) if p.width else default_width,
                    "height": int(p.height) if p.height else default_height,
                    "steps": p.num_inference_steps or settings.steps,
                    "guidance_scale": _or_default(p.guidance_scale, settings),
                    "seed": p.seed,
                    "n": 1,
                    "sampler": p.scheduler or settings.sampler,
                }
            ),
        )


# -------------------------------------------------------------------------- responses


class ImageData(BaseModel):
    """One image: `b64_json` (the PNG in base64) or `url` (a data: URL), and its seed."""

    seed: int
    b64_json: str | None = None
    url: str | None = None


class StageTimingBody(BaseModel):
    queue_ms: float
    compute_ms: float
    transfer_ms: float


class PromptWarningBody(BaseModel):
    code: str = Field(description="prompt_out_of_domain or negative_prompt_out_of_domain.")
    message: str
    param: str = Field(description="The request field it is about.")
    words: list[str] = Field(description="The words the model was not trained on.")


class ImagesResponse(BaseModel):
    """The OpenAI Images response, plus seeds, per-stage timings and the model served."""

    created: int
    data: list[ImageData]
    timings: dict[str, StageTimingBody] = Field(description="Per stage, in milliseconds.")
    prompt_tokens: int
    prompt_truncated: bool
    model: str
    weights: str
    sampler: SamplerName = Field(description="The sampler that drew the images.")
    warnings: list[PromptWarningBody] = Field(
        default_factory=list,
        description="Prompt words the model was not trained on (for a family that declares "
        "its vocabulary, such as tiny); empty when none.",
    )


class ErrorDetail(BaseModel):
    type: str
    message: str
    param: str | None = Field(default=None, description="The field at fault, when one is.")


class ErrorResponse(BaseModel):
    """The one error body of every sdserve part."""

    error: ErrorDetail


class JobProgress(BaseModel):
    step: int
    total: int


class JobResource(BaseModel):
    """A job as `GET /v1/jobs/{id}` shows it; `result` or `error` once it has finished."""

    id: str
    object: Literal["job"]
    kind: JobKind
    status: JobStatus
    created: float
    started: float | None
    finished: float | None
    attempt: int = Field(
        description="Which run this is: 2 and up after the gateway replica running it "
        "stopped and another ran it again from the start (same seed, same image)."
    )
    progress: JobProgress
    url: str
    events_url: str
    result: ImagesResponse | None = None
    error: ErrorDetail | None = None


class GatewayLimits(BaseModel):
    max_images_per_request: int
    max_steps: int
    default_steps: int
    default_guidance_scale: float
    default_sampler: SamplerName


class SamplerBody(BaseModel):
    """One sampler a request may name (`sampler`), as /v1/info lists it."""

    name: SamplerName
    label: str = Field(description="What AUTOMATIC1111 calls it.")
    description: str
    aliases: list[str] = Field(description="Other names accepted for it (any case).")


class ModelCard(BaseModel):
    """One model, in OpenAI's `GET /v1/models` shape (plus its family and weights)."""

    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "sdserve"
    family: str
    weights: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class GatewayInfo(ServiceInfo):
    """`GET /v1/info` of the gateway: what it serves and how."""

    # Every key the gateway describes is declared here (a new one fails the tests).
    model_config = ConfigDict(extra="forbid")

    family: str  # the default model's
    weights: str
    models: list[str]  # every model's name; the first is the default
    random_weights: bool
    example_prompt: str
    api_key_required: bool
    topology: str
    job_store: Literal["memory", "redis"]  # where /v1/jobs keeps jobs (SDSERVE_JOB_STORE)
    sizes: list[str]
    samplers: list[SamplerBody]  # every sampler a request may name; DDIM first
    limits: GatewayLimits


# ------------------------------------------------------------------ OpenAPI documents

ERROR_DESCRIPTIONS = {
    401: "No API key (when the gateway requires one).",
    403: "Unknown API key.",
    404: "No such job (never existed, expired, or the gateway restarted).",
    413: "The body, or an uploaded image, is too large.",
    415: "The body is not in a media type the route reads.",
    422: "A field is missing, malformed, out of range, or the size is not served.",
    429: "This API key already has its allowed requests in flight.",
    500: "Internal error (details in the server log).",
    502: "A stage answered with something that is not a valid reply.",
    503: "Not ready, full (see Retry-After), shutting down, or a stage is unreachable.",
    504: "A stage did not answer in time.",
}
# What any public route may answer besides its success.
COMMON_ERRORS = (401, 403, 413, 422, 429, 500, 502, 503, 504)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` declaring the error body for these statuses."""
    return {
        status: {"model": ErrorResponse, "description": ERROR_DESCRIPTIONS[status]}
        for status in sorted(statuses)
    }


EDIT_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    **ImageEditFields.model_json_schema(),
                    "properties": {
                        **ImageEditFields.model_json_schema()["properties"],
                        "image": {"type": "string", "format": "binary"},
                        "mask": {
                            "type": "string",
                            "format": "binary",
                            "description": "Fully transparent pixels are repainted. "
                            "Omitted: the image's own are; an opaque image is "
                            "image-to-image.",
                        },
                    },
                    "required": ["image", "prompt"],
                }
            },
            "application/json": {"schema": ImageEditJson.model_json_schema()},
        },
    }
}

JOB_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "A generations body (`kind` omitted or `generation`), or an edits "
        'JSON body (base64 `image`, greyscale `mask`: white = repaint) with `"kind": "edit"`.',
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [
                        {
                            **ImageGenerationRequest.model_json_schema(),
                            "title": "GenerationJob",
                        },
                        {
                            **ImageEditJson.model_json_schema(),
                            "title": "EditJob",
                            "properties": {
                                "kind": {"type": "string", "enum": ["edit"]},
                                **ImageEditJson.model_json_schema()["properties"],
                            },
                            "required": ["kind", "prompt", "image"],
                        },
                    ]
                }
            }
        },
    }
}

JOB_EVENTS_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Server-Sent Events: `queued`, `progress` ({step, total}), `preview` "
        "({step, total, images: [PNG data URLs]}), then `done` ({result}), `error` ({error}) "
        "or `cancelled`; each `data` is JSON with the job's id, status, step and total.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}
