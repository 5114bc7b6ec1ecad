"""Hugging Face Inference Endpoints handler: the sdserve decoder stage (the VAE).

Latents in, PNG images out; and, in ``encode-image`` mode, images in, latents out (the
init latent of image to image and inpainting). It runs `shared.pipeline.local.LocalDecoder`, the
object the sdserve decoder service wraps.

Decode (the default mode), JSON::

    {"inputs": "<base64 .npz: latent (B, h, w, C) float32 or float16>"}
    -> {"images": ["<base64 PNG>", ...]}          # B images, (h*f) x (w*f) RGB

The ``inputs`` is exactly the ``npz`` the diffusion handler returns.

Encode an image::

    {"inputs": "<base64 PNG or JPEG>" or ["<base64 ...>", ...],
     "parameters": {"mode": "encode-image", "fp16": false}}
    -> {"npz": "<base64 .npz: latent (B, h, w, C) float32>"}

A raw image body (Content-Type: image/png) reaches the handler as a PIL image and is
encoded too. Images must be of a served size (SDSERVE_SIZES); they are converted to RGB.

Tensors travel as base64 of sdserve's .npz wire format (``shared.wire``; uncompressed,
no pickles, checked before use), the only way to carry them in the toolkit's JSON. Bad
input raises ValueError naming the field (the toolkit answers 400).

Configuration: SDSERVE_* environment variables (SDSERVE_MODEL, SDSERVE_SIZES, ...). The
weights are SDSERVE_WEIGHTS when set, else the weights files in the repository, else
the family's default (tiny: its embedded weights; SD: keras-cv's published files).
Deploying: deploy/hf/README.md in sdserve.
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from shared.config import format_size
from shared.errors import InvalidInput
from shared.pipeline.hf import StageHandler, flag_param, split_request
from shared.pipeline.local.decoder import make_decoder
from shared.pipeline.stage_contracts import DECODE, ENCODE_IMAGE
from shared.pipeline.types import EncodeImageRequest
from shared.uploads import load_upload, max_upload_side, open_upload

MODES = ("decode", "encode-image")


def _png_b64(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class EndpointHandler(StageHandler):
    """Base64 .npz latent -> base64 PNGs; encode-image: images -> base64 .npz latent."""

    fields: ClassVar[dict[str, str]] = {"latent": "inputs (latent)", "images": "inputs"}

    def __init__(self, path: str = "") -> None:
        super().__init__(path, make_decoder)

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        inputs, parameters = split_request(data)
        default = "encode-image" if isinstance(inputs, Image.Image) else "decode"
        mode = parameters.get("mode") or default
        if mode not in MODES:
            raise ValueError(f"parameters.mode must be one of {', '.join(MODES)}; got {mode!r}")
        if mode == "decode":
            decoded = self.run(DECODE, self.request(DECODE, 0, inputs, parameters))
            return {"images": [_png_b64(image) for image in decoded.images]}
        encoded = self.run(ENCODE_IMAGE, EncodeImageRequest(self.read_images(inputs)))
        return self.answer(encoded, fp16=flag_param(parameters, "fp16"))

    def read_images(self, inputs: Any) -> np.ndarray:
        """PIL image, base64 image or list of base64 images -> uint8 (B, H, W, 3)."""
        items = inputs if isinstance(inputs, list) else [inputs]
        if not items or len(items) > self.settings.max_batch:
            raise ValueError(f"inputs must hold 1 to {self.settings.max_batch} images")
        served = ", ".join(format_size(s) for s in self.settings.sizes)
        arrays = []
        for i, item in enumerate(items):
            field = f"inputs[{i}]" if isinstance(inputs, list) else "inputs"
            image = item if isinstance(item, Image.Image) else self.open_image(item, field)
            # Check the size from the header, before decoding any pixels.
            if image.size not in self.settings.sizes:
                raise ValueError(
                    f"{field}: a {image.size[0]}x{image.size[1]} image is not of a served "
                    f"size; served sizes: {served}"
                )
            if not isinstance(item, Image.Image):
                self.load(image, field)
            arrays.append(np.asarray(image.convert("RGB"), dtype=np.uint8))
        if len({a.shape for a in arrays}) > 1:
            raise ValueError("inputs: every image of a call must have the same size")
        return np.stack(arrays)

    def open_image(self, item: Any, field: str) -> Image.Image:
        if not isinstance(item, str):
            raise ValueError(f"{field} must be a base64 string of a PNG or JPEG image")
        if len(item) > (self.settings.max_body_bytes + 2) // 3 * 4 + 4:
            raise ValueError(
                f"{field} is larger than the {self.settings.max_body_bytes}-byte limit"
            )
        try:
            body = base64.b64decode(item, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"{field} is not a base64 PNG or JPEG image") from None
        # The header only (format, dimensions): pixels are decoded once the size is known
        # to be a served one.
        try:
            return open_upload(
                body,
                param=field,
                max_side=max_upload_side(self.settings.sizes),
                formats=("PNG", "JPEG"),
            )
        except InvalidInput as exc:
            raise ValueError(exc.message) from None

    @staticmethod
    def load(image: Image.Image, field: str) -> None:
        try:
            load_upload(image, param=field)
        except InvalidInput as exc:
            raise ValueError(exc.message) from None
