"""Public request and response shapes of the gateway (OpenAI Images, Hugging Face).

Unknown fields are ignored and omitted ones defaulted, because existing clients (the
`openai` package, `huggingface_hub.InferenceClient`) send only what they know about.
"""

from __future__ import annotations

import base64
import io
import time
from typing import Any, Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from shared.config import MAX_GUIDANCE_SCALE, Settings, parse_size
from shared.errors import InvalidInput, PayloadTooLarge
from shared.families import FAMILY_NAMES, get_family
from shared.pipeline.types import (
    MAX_RESAMPLES,
    DenoiseParams,
    EditInputs,
    GenerationParams,
    GenerationResult,
)
from shared.sampler import MAX_SEED
from shared.tokenizer import MAX_PROMPT_CHARS

GUIDANCE_DESCRIPTION = (
    "Classifier-free guidance scale. Omitted: SDSERVE_DEFAULT_GUIDANCE_SCALE, else the model "
    "family's ("
    + ", ".join(f"{n} {get_family(n).spec.default_guidance_scale:g}" for n in FAMILY_NAMES)
    + "); see /v1/info."
)
# Uploaded images are decoded only if their header says they are at most this big.
MAX_UPLOAD_PIXELS = 4096 * 4096
UPLOAD_FORMATS = ("PNG", "JPEG", "WEBP")
MAX_MASK_BLUR = 8


def _or_default(guidance_scale: float | None, settings: Settings) -> float:
    return settings.guidance_scale if guidance_scale is None else guidance_scale


class ImageGenerationRequest(BaseModel):
    """OpenAI `images.generate` body, plus Stable Diffusion's own fields."""

    model_config = ConfigDict(extra="ignore")

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    n: int = Field(default=1, ge=1, description="Number of images.")
    size: str | None = Field(
        default=None, description='"WxH"; one of the served sizes (default: the first).'
    )
    response_format: Literal["b64_json", "url"] = Field(
        default="b64_json", description="url gives a data: URL (nothing is stored)."
    )
    negative_prompt: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS)
    steps: int | None = Field(default=None, ge=1, description="Denoising steps.")
    guidance_scale: float | None = Field(
        default=None, ge=0, le=MAX_GUIDANCE_SCALE, description=GUIDANCE_DESCRIPTION
    )
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED, description="Image i uses seed+i.")

    def to_params(self, settings: Settings) -> GenerationParams:
        if self.size is None:
            width, height = settings.sizes[0]
        else:
            try:
                width, height = parse_size(self.size)
            except ValueError:
                raise InvalidInput(
                    f"size {self.size!r} is not like 512x512", param="size"
                ) from None
        return GenerationParams(
            prompt=self.prompt,
            negative_prompt=self.negative_prompt,
            denoise=DenoiseParams(
                width=width,
                height=height,
                steps=self.steps or settings.default_steps,
                guidance_scale=_or_default(self.guidance_scale, settings),
                seed=self.seed,
                n=self.n,
            ),
        )


class ImageEditFields(BaseModel):
    """The fields of an edit besides the image and mask (multipart sends them as strings)."""

    model_config = ConfigDict(extra="ignore")

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    n: int = Field(default=1, ge=1)
    size: str | None = Field(default=None, description='"WxH"; default: the image\'s size.')
    response_format: Literal["b64_json", "url"] = "b64_json"
    negative_prompt: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS)
    strength: float = Field(default=0.8, gt=0, le=1, description="How far to move from the image.")
    steps: int | None = Field(default=None, ge=1)
    guidance_scale: float | None = Field(
        default=None, ge=0, le=MAX_GUIDANCE_SCALE, description=GUIDANCE_DESCRIPTION
    )
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    num_resamples: int = Field(default=1, ge=1, le=MAX_RESAMPLES, description="RePaint resamples.")
    mask_blur: int = Field(default=0, ge=0, le=MAX_MASK_BLUR, description="Feather, latent cells.")
    keep_unmasked: bool = Field(
        default=True,
        description="Inpainting: pixels outside the mask come back exactly as sent (not "
        "after a trip through the VAE); false returns the decoded image as it is.",
    )

    def to_params(self, settings: Settings, width: int, height: int) -> GenerationParams:
        return GenerationParams(
            prompt=self.prompt,
            negative_prompt=self.negative_prompt,
            denoise=DenoiseParams(
                width=width,
                height=height,
                steps=self.steps or settings.default_steps,
                guidance_scale=_or_default(self.guidance_scale, settings),
                seed=self.seed,
                n=self.n,
                strength=self.strength,
                num_resamples=self.num_resamples,
            ),
        )


class ImageEditJson(ImageEditFields):
    """The JSON form of an edit: base64 image and an optional greyscale mask (white = repaint,
    as in diffusers)."""

    image: str = Field(min_length=1, description="Base64 PNG/JPEG/WebP.")
    mask: str | None = Field(default=None, description="Base64 greyscale; white = repaint.")


def validated(model: type[BaseModel], data: Any) -> Any:
    """pydantic validation outside FastAPI's own, with the same 422 naming the field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or "body"
        raise InvalidInput(f"{param}: {first['msg']}", param=param) from None


def b64_bytes(text: str, *, param: str) -> bytes:
    try:
        return base64.b64decode(
            text.split(",", 1)[-1] if text.startswith("data:") else text, validate=True
        )
    except ValueError:
        raise InvalidInput(f"{param} is not valid base64", param=param) from None


def open_image(data: bytes, *, param: str) -> Image.Image:
    """Decode an uploaded image, refusing non-images and oversize ones before decoding."""
    try:
        image = Image.open(io.BytesIO(data))
    except Exception:
        raise InvalidInput(f"{param} is not an image (PNG, JPEG or WebP)", param=param) from None
    if image.format not in UPLOAD_FORMATS:
        raise InvalidInput(f"{param} must be PNG, JPEG or WebP, not {image.format}", param=param)
    if image.width * image.height > MAX_UPLOAD_PIXELS:
        raise PayloadTooLarge(
            f"{param} is {image.width}x{image.height}; at most {MAX_UPLOAD_PIXELS} pixels",
            param=param,
        )
    try:
        image.load()
    except Exception:
        raise InvalidInput(f"{param} is truncated or corrupt", param=param) from None
    return image


def edit_inputs(
    fields: ImageEditFields,
    settings: Settings,
    image_bytes: bytes,
    mask_bytes: bytes | None,
    *,
    mask_polarity: Literal["openai-alpha", "white-repaints"],
) -> tuple[GenerationParams, EditInputs]:
    image = open_image(image_bytes, param="image")
    mask_image = open_image(mask_bytes, param="mask") if mask_bytes is not None else None
    if mask_image is not None and mask_image.size != image.size:
        raise InvalidInput(
            f"mask is {mask_image.width}x{mask_image.height} but image is "
            f"{image.width}x{image.height}",
            param="mask",
        )
    if fields.size is None:
        width, height = image.size
    else:
        try:
            width, height = parse_size(fields.size)
        except ValueError:
            raise InvalidInput(f"size {fields.size!r} is not like 512x512", param="size") from None
    if (width, height) not in settings.sizes:
        served = ", ".join(f"{w}x{h}" for w, h in settings.sizes)
        which = "size" if fields.size is not None else "image"
        raise InvalidInput(
            f"{width}x{height} is not a served size ({served}); send one or set size",
            param=which,
        )
    rgb = image.convert("RGB")
    if rgb.size != (width, height):
        rgb = rgb.resize((width, height), Image.Resampling.LANCZOS)
    mask = None
    if mask_image is not None:
        if mask_polarity == "openai-alpha":
            if "A" not in mask_image.getbands() and "transparency" not in mask_image.info:
                raise InvalidInput(
                    "mask needs an alpha channel: fully transparent pixels are repainted",
                    param="mask",
                )
            alpha = mask_image.convert("RGBA").getchannel("A")
            repaint = np.asarray(alpha.resize((width, height), Image.Resampling.NEAREST)) == 0
        else:
            grey = mask_image.convert("L").resize((width, height), Image.Resampling.NEAREST)
            repaint = np.asarray(grey) > 127
        mask = repaint.astype(np.float32)
    params = fields.to_params(settings, width, height)
    return params, EditInputs(
        np.asarray(rgb, dtype=np.uint8), mask, fields.mask_blur, fields.keep_unmasked
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
            denoise=DenoiseParams(
                width=int(p.width) if p.width else default_width,
                height=int(p.height) if p.height else default_height,
                steps=p.num_inference_steps or settings.default_steps,
                guidance_scale=_or_default(p.guidance_scale, settings),
                seed=p.seed,
                n=1,
            ),
        )


def encode_png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG")
    return buffer.getvalue()


def generation_response(
    result: GenerationResult, pngs: list[bytes], response_format: str, chain_info: dict[str, Any]
) -> dict[str, Any]:
    data = []
    for png, seed in zip(pngs, result.seeds, strict=True):
        encoded = base64.b64encode(png).decode("ascii")
        item: dict[str, Any] = {"seed": seed}
        if response_format == "url":
            item["url"] = f"data:image/png;base64,{encoded}"
        else:
            item["b64_json"] = encoded
        data.append(item)
    return {
        "created": int(time.time()),
        "data": data,
        "timings": {name: t.as_dict() for name, t in result.timings.items()},
        "prompt_tokens": result.prompt_tokens,
        "prompt_truncated": result.prompt_truncated,
        **chain_info,
    }
