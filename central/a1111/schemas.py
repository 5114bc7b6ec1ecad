"""AUTOMATIC1111's request and response shapes, and how a request maps onto ours.

Field names, defaults and response fields follow A1111's `modules/api/models.py` and
`Processed.js()`. Every request field is optional (A1111's are; clients send `null` for
"default"); fields we do not support are accepted, and those whose value asks for
something (not A1111's default, not empty) are listed in the info as ignored.

What maps where (ours: a /v1/jobs body, which validates and runs it):

    prompt, negative_prompt            prompt, negative_prompt
    seed (-1: random)                  seed (image i: seed + i, as A1111's all_seeds)
    batch_size x n_iter                n (one batch)
    steps, cfg_scale                   steps, guidance_scale (omitted: the gateway's)
    width, height (omitted: served)    size "WxH" (a served size, else 422 naming it)
    sampler_name / sampler_index       central/a1111/samplers.py
    override_settings.sd_model_checkpoint, else POST /options'   model
    init_images[0], mask               image, mask (white repaints; inverted first when
                                       inpainting_mask_invert is 1)
    denoising_strength                 strength
    mask_blur (pixels)                 mask_blur (latent cells: pixels / the family's
                                       downsampling factor, rounded up, at most 8)
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from central.a1111.samplers import SamplerChoice
from central.schemas import MAX_MASK_BLUR
from shared.config import MAX_GUIDANCE_SCALE, Settings, Size, format_size
from shared.errors import InvalidInput, UnsupportedSize
from shared.noise_schedule import MAX_SEED

CHECKPOINT = "sd_model_checkpoint"

# --------------------------------------------------------------------------- requests


class GenerationFields(BaseModel):
    """What txt2img and img2img share (A1111's StableDiffusionProcessing fields)."""

    model_config = ConfigDict(extra="allow")

    prompt: str | None = ""
    negative_prompt: str | None = ""
    seed: int | None = Field(default=-1, ge=-1, le=MAX_SEED, description="-1: random.")
    sampler_name: str | None = None
    sampler_index: str | None = Field(default=None, description="Older name of sampler_name.")
    scheduler: str | None = None
    batch_size: int | None = Field(default=1, ge=1)
    n_iter: int | None = Field(default=1, ge=1)
    steps: int | None = Field(default=None, ge=1, description="Omitted: the gateway's.")
    cfg_scale: float | None = Field(default=None, ge=0, le=MAX_GUIDANCE_SCALE)
    width: int | None = Field(default=None, ge=1, description="Omitted: the first served.")
    height: int | None = Field(default=None, ge=1)
    override_settings: dict[str, Any] | None = None
    send_images: bool | None = True
    save_images: bool | None = False

    @property
    def n(self) -> int:
        return (self.batch_size or 1) * (self.n_iter or 1)

    @property
    def requested_sampler(self) -> str | None:
        return self.sampler_name or self.sampler_index

    @property
    def checkpoint(self) -> str | None:
        """The model override_settings names, if any."""
        value = (self.override_settings or {}).get(CHECKPOINT)
        return str(value) if value else None

    def size(self, sizes: list[Size]) -> Size:
        """The size asked for, if served (422 naming width or height otherwise)."""
        default_width, default_height = sizes[0]
        width, height = self.width or default_width, self.height or default_height
        if (width, height) not in sizes:
            served = ", ".join(format_size(size) for size in sizes)
            # Name the side that is off: height when the width is a served one.
            param = "height" if width in {w for w, _ in sizes} else "width"
            raise UnsupportedSize(
                f"{param}: {width}x{height} is not a served size ({served})", param=param
            )
        return width, height

    def check_n(self, settings: Settings) -> None:
        limit = settings.max_images_per_request
        if self.n > limit:
            param = "batch_size" if (self.batch_size or 1) > limit else "n_iter"
            raise InvalidInput(
                f"{param}: batch_size x n_iter is {self.n}; at most {limit} images a request",
                param=param,
            )

    def job_fields(
        self, settings: Settings, size: Size, model: str, sampler: SamplerChoice
    ) -> dict[str, Any]:
        """The /v1/jobs body fields of this request."""
        self.check_n(settings)
        return {
            "prompt": self.prompt or "",
            "negative_prompt": self.negative_prompt or None,
            "n": self.n,
            "steps": self.steps or settings.steps,
            "guidance_scale": settings.guidance_scale if self.cfg_scale is None else self.cfg_scale,
            "seed": None if self.seed in (None, -1) else self.seed,
            "size": format_size(size),
            "model": model,
            "response_format": "b64_json",
            "sampler": sampler.ran.id,
        }

    def parameters(self) -> dict[str, Any]:
        """The request as the response echoes it (A1111's `parameters`)."""
        return self.model_dump()

    def denoising(self) -> float | None:
        """The info's denoising_strength (img2img's; none in txt2img without hires fix)."""
        return None

    def extra_generation_params(self) -> dict[str, Any]:
        return {}

    def ignored(self) -> list[str]:
        """The fields asked for that we do not do (see `_IGNORED_UNLESS`)."""
        found = [
            name
            for name, value in (self.model_extra or {}).items()
            if not name.startswith(_HIRES_PREFIXES) and _asks_for_something(name, value)
        ]
        found += [
            f"override_settings.{name}"
            for name, value in (self.override_settings or {}).items()
            if name != CHECKPOINT and _asks_for_something(name, value)
        ]
        if self.scheduler and self.scheduler.lower() != "automatic":
            found.append("scheduler")
        if self.save_images:
            found.append("save_images")
        return found


class Txt2ImgRequest(GenerationFields):
    """`POST /sdapi/v1/txt2img` (A1111's StableDiffusionProcessingTxt2Img)."""


class Img2ImgRequest(GenerationFields):
    """`POST /sdapi/v1/img2img` (A1111's StableDiffusionProcessingImg2Img): with `mask`,
    inpainting (white repaints); without, image to image."""

    init_images: list[str] = Field(min_length=1, description="Base64 images; the first is used.")
    denoising_strength: float | None = Field(default=0.75, gt=0, le=1)
    mask: str | None = Field(default=None, description="Base64; white = repaint.")
    mask_blur: int | None = Field(default=4, ge=0, le=64, description="Pixels.")
    inpainting_mask_invert: int | None = Field(default=0, ge=0, le=1, description="1: black.")
    inpaint_full_res: bool | None = Field(
        default=True, description="Accepted; we always inpaint at the whole picture's size."
    )
    inpainting_fill: int | None = Field(
        default=None, ge=0, le=3, description="Accepted; we always start from the original."
    )
    include_init_images: bool | None = False

    @property
    def strength(self) -> float:
        return 0.75 if self.denoising_strength is None else self.denoising_strength

    def latent_mask_blur(self, downsampling_factor: int) -> int:
        """mask_blur in pixels as our latent cells (rounded up, at most MAX_MASK_BLUR)."""
        pixels = 4 if self.mask_blur is None else self.mask_blur
        return min(MAX_MASK_BLUR, math.ceil(pixels / downsampling_factor))

    def ignored(self) -> list[str]:
        found = super().ignored()
        if len(self.init_images) > 1:
            found.append("init_images[1:]")
        if self.mask:
            if self.inpaint_full_res is not False:
                found.append("inpaint_full_res")
            if self.inpainting_fill not in (None, 1):
                found.append("inpainting_fill")
        return found

    def denoising(self) -> float | None:
        return self.strength

    def extra_generation_params(self) -> dict[str, Any]:
        return {"Mask blur": 4 if self.mask_blur is None else self.mask_blur} if self.mask else {}

    def parameters(self) -> dict[str, Any]:
        """The request as the response echoes it: without its images unless asked."""
        echoed = self.model_dump()
        if not self.include_init_images:
            echoed["init_images"] = echoed["mask"] = None
        return echoed


# Unsupported fields and the values of theirs that ask for nothing we skip (besides empty
# ones: None, False, 0, "", [], {}): A1111's defaults and what clients send when a
# feature is off. ANY: nothing to do whatever the value (we never save files, say).
ANY = object()
_IGNORED_UNLESS: dict[str, Any] = {
    "eta": (1, 1.0),  # A1111's ancestral default (0: DDIM's)
    "s_noise": (1, 1.0),
    "s_min_uncond": ANY,
    "subseed": (-1,),
    "seed_resize_from_h": (-1,),
    "seed_resize_from_w": (-1,),
    "initial_noise_multiplier": (1, 1.0),
    "image_cfg_scale": ANY,  # instruct-pix2pix models only
    "override_settings_restore_afterwards": ANY,
    "do_not_save_samples": ANY,
    "do_not_save_grid": ANY,
    "denoising_strength": ANY,  # in txt2img: the hires fix's (enable_hr)
    "firstphase_width": ANY,
    "firstphase_height": ANY,
    "inpaint_full_res_padding": ANY,
    "refiner_switch_at": ANY,
    "script_args": ANY,  # script_name says whether a script was asked for
    "force_task_id": ANY,
    "infotext": ANY,
    "comments": ANY,
    "disable_extra_networks": ANY,
    "CLIP_stop_at_last_layers": (1,),  # an override setting: clip skip 1 is ours
}
_HIRES_PREFIXES = ("hr_",)  # the hires fix's own fields: enable_hr says whether it is on


def _asks_for_something(name: str, value: Any) -> bool:
    if value is None or value is False or value in ("", 0) or value == [] or value == {}:
        return False
    neutral = _IGNORED_UNLESS.get(name, ())
    return neutral is not ANY and value not in neutral


# -------------------------------------------------------------------------- responses


class TextToImageResponse(BaseModel):
    """A1111's TextToImageResponse and ImageToImageResponse."""

    images: list[str] = Field(description="The images, base64 PNG (no data: prefix).")
    parameters: dict[str, Any] = Field(description="The request, with its defaults.")
    info: str = Field(description="JSON: seeds, sampler, steps, size... (Processed.js()).")


class ProgressResponse(BaseModel):
    progress: float = Field(description="The current job's share done, 0 to 1.")
    eta_relative: float = Field(description="Seconds it has left, by its pace so far.")
    state: dict[str, Any] = Field(description="skipped, interrupted, job, job_count...")
    current_image: str | None = Field(default=None, description="Latest preview, base64 PNG.")
    textinfo: str | None = None


class SamplerItem(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, Any]


class SDModelItem(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    title: str
    model_name: str
    hash: str | None
    sha256: str | None
    filename: str
    config: str | None


class UpscalerItem(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    name: str
    model_name: str | None
    model_path: str | None
    model_url: str | None
    scale: float | None


class ScriptsList(BaseModel):
    txt2img: list[str]
    img2img: list[str]


class LoraItem(BaseModel):
    """As A1111's Lora extension lists one."""

    name: str
    alias: str
    path: str | None
    metadata: dict[str, Any]


class Options(BaseModel):
    """The options that mean something here (A1111 has hundreds; clients read these)."""

    model_config = ConfigDict(extra="allow")

    sd_model_checkpoint: str = Field(description="The selected model (GET /sd-models).")
    sd_checkpoint_hash: str | None = None
    samples_format: str = "png"
    CLIP_stop_at_last_layers: int = 1


class Empty(BaseModel):
    """`{}`, as A1111 answers /interrupt."""


class ValidationItem(BaseModel):
    loc: list[str | int] = Field(description='Where: ["body", field, ...].')
    msg: str
    type: str


class ValidationErrorBody(BaseModel):
    """A1111's 422 (FastAPI's request validation shape)."""

    detail: list[ValidationItem]


class ErrorBody(BaseModel):
    """A1111's other errors (its API's exception handler's shape)."""

    error: str = Field(description="The error's type.")
    detail: str
    body: str
    errors: str
