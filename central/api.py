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
from pydantic import BaseModel, ConfigDict, Field, field_validator

from central.chain import GenerationParams, GenerationResult
from shared.config import Settings, parse_size
from shared.errors import InvalidInput
from shared.sampler import MAX_SEED
from shared.stages import MAX_GUIDANCE_SCALE
from shared.tokenizer import MAX_PROMPT_CHARS

DEFAULT_GUIDANCE_SCALE = 7.5


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
    guidance_scale: float = Field(default=DEFAULT_GUIDANCE_SCALE, ge=0, le=MAX_GUIDANCE_SCALE)
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
            width=width,
            height=height,
            steps=self.steps or settings.default_steps,
            guidance_scale=self.guidance_scale,
            seed=self.seed,
            n=self.n,
        )


class HfParameters(BaseModel):
    """`parameters` of a Hugging Face text-to-image request."""

    model_config = ConfigDict(extra="ignore")

    negative_prompt: str | list[str] | None = None
    height: float | None = Field(default=None, gt=0)
    width: float | None = Field(default=None, gt=0)
    num_inference_steps: int | None = Field(default=None, ge=1)
    guidance_scale: float = Field(default=DEFAULT_GUIDANCE_SCALE, ge=0, le=MAX_GUIDANCE_SCALE)
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
            width=int(p.width) if p.width else default_width,
            height=int(p.height) if p.height else default_height,
            steps=p.num_inference_steps or settings.default_steps,
            guidance_scale=p.guidance_scale,
            seed=p.seed,
            n=1,
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
