"""The gateway's serving work, shared by the images routes and the jobs routes.

Edit parsing (multipart and JSON forms), upload decoding, PNG encoding and response
assembly. Pillow and base64 work on whole images runs in worker threads, never on the
event loop, so one large upload does not stall every other request: uploads (and large
JSON bodies) in central.bodies' bounded pool, after their headers are checked
(shared.uploads).
"""

from __future__ import annotations

import asyncio
import base64
import io
import time
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
from fastapi import Request
from PIL import Image
from starlette.datastructures import UploadFile

from central.bodies import media_type, off_loop, parse_json
from central.schemas import (
    ImageData,
    ImageEditFields,
    ImageEditJson,
    ImagesResponse,
    PromptWarningBody,
    StageTimingBody,
    parse_size_field,
)
from shared.config import Settings, format_size
from shared.errors import InvalidInput, UnsupportedMediaType, UnsupportedSize
from shared.http import cancel_on_disconnect
from shared.pipeline.catalog import Catalog
from shared.pipeline.contract import validated
from shared.pipeline.types import EditInputs, GenerationParams, GenerationResult
from shared.uploads import load_upload, max_upload_side, open_upload

MaskPolarity = Literal["openai-alpha", "white-repaints"]


async def read_json(request: Request) -> Any:
    """The request's JSON body (parsed off the event loop when large; 422 if malformed)."""
    return await parse_json(await request.body())


# Base64 is decoded this many characters (a multiple of 4) at a time: one call on 16 MiB
# holds the GIL, and so stalls the event loop, for ~50 ms; a piece for a few.
B64_PIECE_CHARS = 1 << 20


def b64_bytes(text: str, *, param: str) -> bytes:
    data = text.split(",", 1)[-1] if text.startswith("data:") else text
    try:
        if "=" in data[:-2]:  # padding only at the very end, as in one call
            raise ValueError
        return b"".join(
            base64.b64decode(data[start : start + B64_PIECE_CHARS], validate=True)
            for start in range(0, len(data), B64_PIECE_CHARS)
        )
    except ValueError:
        raise InvalidInput(f"{param} is not valid base64", param=param) from None


def open_image(data: bytes, *, param: str, settings: Settings) -> Image.Image:
    """An upload's header: PNG, JPEG or WebP, at most twice the largest served side (an
    edit's image is resized to the size it is served at). Nothing is decoded yet."""
    return open_upload(data, param=param, max_side=max_upload_side(settings.sizes))


def _transparent(alpha: Image.Image, width: int, height: int) -> np.ndarray:
    """Where an alpha channel is fully transparent (0), at the output size."""
    return np.asarray(alpha.resize((width, height), Image.Resampling.NEAREST)) == 0


def _own_transparency(image: Image.Image, width: int, height: int) -> np.ndarray | None:
    """The mask an image with no mask carries itself (OpenAI's rule): its fully
    transparent pixels are repainted. None when it has no alpha or none of it is 0; a
    partly transparent pixel (an antialiased edge) is kept, as in a mask's alpha."""
    if "A" not in image.getbands() and "transparency" not in image.info:
        return None
    alpha = image.convert("RGBA").getchannel("A")
    if alpha.histogram()[0] == 0:  # no pixel at alpha 0
        return None
    return _transparent(alpha, width, height).astype(np.float32)


def _repaint_mask(
    mask_image: Image.Image, width: int, height: int, polarity: MaskPolarity
) -> np.ndarray:
    """1.0 where the mask asks for repainting, at the output size."""
    if polarity == "openai-alpha":
        if "A" not in mask_image.getbands() and "transparency" not in mask_image.info:
            raise InvalidInput(
                "mask needs an alpha channel: fully transparent pixels are repainted",
                param="mask",
            )
        alpha = mask_image.convert("RGBA").getchannel("A")
        repaint = _transparent(alpha, width, height)
    else:
        grey = mask_image.convert("L").resize((width, height), Image.Resampling.NEAREST)
        repaint = np.asarray(grey) > 127
    return repaint.astype(np.float32)


def decode_edit(
    fields: ImageEditFields,
    settings: Settings,
    image_bytes: bytes,
    mask_bytes: bytes | None,
    *,
    mask_polarity: MaskPolarity,
) -> tuple[GenerationParams, EditInputs]:
    """The edit's parameters and its image (and mask) at the output size. Blocking.

    Both headers are checked (format, dimensions, mask against image, served size)
    before any pixel of either is decoded. With no mask, the image's fully transparent
    pixels (alpha 0) are the mask, in either form, as OpenAI's edits do; an image with
    no alpha, or none at 0, and no mask is image-to-image.
    """
    image = open_image(image_bytes, param="image", settings=settings)
    mask_image = (
        open_image(mask_bytes, param="mask", settings=settings) if mask_bytes is not None else None
    )
    if mask_image is not None and mask_image.size != image.size:
        raise InvalidInput(
            f"mask is {mask_image.width}x{mask_image.height} but image is "
            f"{image.width}x{image.height}",
            param="mask",
        )
    width, height = image.size if fields.size is None else parse_size_field(fields.size)
    if (width, height) not in settings.sizes:
        served = ", ".join(format_size(size) for size in settings.sizes)
        raise UnsupportedSize(
            f"{width}x{height} is not a served size ({served}); send one or set size",
            param="size" if fields.size is not None else "image",
        )
    load_upload(image, param="image")
    if mask_image is not None:
        load_upload(mask_image, param="mask")
    rgb = image.convert("RGB")
    if rgb.size != (width, height):
        rgb = rgb.resize((width, height), Image.Resampling.LANCZOS)
    mask: np.ndarray | None
    if mask_image is not None:
        mask = _repaint_mask(mask_image, width, height, mask_polarity)
    else:
        mask = _own_transparency(image, width, height)
    params = fields.to_params(settings, width, height)
    return params, EditInputs(
        np.asarray(rgb, dtype=np.uint8), mask, fields.mask_blur, fields.keep_unmasked
    )


# The settings of the model a request names (Catalog.settings_for): its family's
# defaults and sizes apply.
SettingsOf = Callable[[str | None], Settings]


async def edit_from_json(
    payload: Any, settings_of: SettingsOf
) -> tuple[ImageEditJson, GenerationParams, EditInputs]:
    """An edit's JSON form (base64 image, greyscale mask: white = repaint; no mask: the
    image's own transparency)."""
    body = validated(ImageEditJson, payload)
    settings = settings_of(body.model)

    def decode() -> tuple[GenerationParams, EditInputs]:
        image = b64_bytes(body.image, param="image")
        mask = b64_bytes(body.mask, param="mask") if body.mask else None
        return decode_edit(body, settings, image, mask, mask_polarity="white-repaints")

    params, edit = await off_loop(decode)
    return body, params, edit


async def edit_from_form(
    request: Request, settings_of: SettingsOf
) -> tuple[ImageEditFields, GenerationParams, EditInputs]:
    """An edit's OpenAI multipart form (image and mask files; mask alpha 0 = repaint; no
    mask: the image's own alpha 0)."""
    form = await request.form(max_files=2, max_fields=32)
    image, mask = form.get("image"), form.get("mask")
    if not isinstance(image, UploadFile):
        raise InvalidInput("image file is required", param="image")
    if mask is not None and not isinstance(mask, UploadFile):
        raise InvalidInput("mask must be a file", param="mask")
    fields = validated(
        ImageEditFields,
        {k: v for k, v in form.items() if k not in ("image", "mask") and isinstance(v, str)},
    )
    settings = settings_of(fields.model)
    image_bytes = await image.read()
    mask_bytes = await mask.read() if mask is not None else None
    params, edit = await off_loop(
        decode_edit, fields, settings, image_bytes, mask_bytes, mask_polarity="openai-alpha"
    )
    return fields, params, edit


async def read_edit(
    request: Request, settings_of: SettingsOf
) -> tuple[ImageEditFields, GenerationParams, EditInputs]:
    """An edit in either form the edits route takes, by its media type."""
    kind = media_type(request)
    if kind == "application/json":
        return await edit_from_json(await read_json(request), settings_of)
    if kind == "multipart/form-data":
        return await edit_from_form(request, settings_of)
    raise UnsupportedMediaType(
        "send the header Content-Type: multipart/form-data (OpenAI) or application/json",
        param="Content-Type",
    )


def encode_png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG")
    return buffer.getvalue()


async def encode_pngs(images: np.ndarray) -> list[bytes]:
    return await asyncio.to_thread(lambda: [encode_png(image) for image in images])


async def generate_pngs(
    request: Request, catalog: Catalog, params: GenerationParams, edit: EditInputs | None = None
) -> tuple[GenerationResult, list[bytes]]:
    """Run the chain for a request and encode its images.

    A client that hangs up cancels the chain, which closes the stage connections, which
    frees the request's diffusion rows and skips its decode.
    """
    result = await cancel_on_disconnect(request, catalog.generate(params, edit))
    return result, await encode_pngs(result.images)


def images_response(
    result: GenerationResult, pngs: list[bytes], response_format: str
) -> ImagesResponse:
    """The images response; render it with `exclude_unset` (an image has one of its forms)."""
    data = []
    for png, seed in zip(pngs, result.seeds, strict=True):
        encoded = base64.b64encode(png).decode("ascii")
        if response_format == "url":
            data.append(ImageData(seed=seed, url=f"data:image/png;base64,{encoded}"))
        else:
            data.append(ImageData(seed=seed, b64_json=encoded))
    return ImagesResponse(
        created=int(time.time()),
        data=data,
        timings={
            name: StageTimingBody(**timing.as_dict()) for name, timing in result.timings.items()
        },
        prompt_tokens=result.prompt_tokens,
        prompt_truncated=result.prompt_truncated,
        model=result.model,
        weights=result.weights,
        sampler=result.sampler,
        warnings=[
            PromptWarningBody(code=w.code, message=w.message, param=w.param, words=list(w.words))
            for w in result.warnings
        ],
    )
