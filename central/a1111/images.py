"""An img2img request's images, made what our edits take: where A1111 reads them
otherwise, the image or mask is re-encoded (only then; blocking, so run off the loop).

- A mask with `inpainting_mask_invert: 1` repaints its black: it is inverted.
- An init image with transparency and no mask: A1111 flattens it onto white and runs
  image to image; our edits would repaint its transparent pixels, so it is flattened.

Headers are checked (format, dimensions) before anything is decoded, as for every upload.
"""

from __future__ import annotations

import base64

import numpy as np
from PIL import Image, ImageOps

from central.serving import b64_bytes, encode_png, open_image
from shared.config import Settings
from shared.uploads import load_upload

IMAGE = "init_images.0"


def _b64_png(image: Image.Image) -> str:
    return base64.b64encode(encode_png(np.asarray(image))).decode("ascii")


def _has_alpha(image: Image.Image) -> bool:
    return "A" in image.getbands() or "transparency" in image.info


def edit_images(
    image: str, mask: str | None, *, invert_mask: bool, settings: Settings
) -> tuple[str, str | None]:
    """The base64 image and mask to send as an edit (those given, unless changed)."""
    if mask is not None and invert_mask:
        opened = open_image(b64_bytes(mask, param="mask"), param="mask", settings=settings)
        grey = load_upload(opened, param="mask").convert("L")
        mask = _b64_png(ImageOps.invert(grey))
    if mask is None:
        opened = open_image(b64_bytes(image, param=IMAGE), param=IMAGE, settings=settings)
        if _has_alpha(opened):
            rgba = load_upload(opened, param=IMAGE).convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            image = _b64_png(Image.alpha_composite(white, rgba).convert("RGB"))
    return image, mask
