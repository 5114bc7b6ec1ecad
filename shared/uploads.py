"""Uploaded images, opened without trusting them: the gateway's edits, the HF decoder.

An upload is opened in two steps, so nothing is decoded before it is known to be
reasonable: `open_upload` reads only the header (the format from an allow-list, never
probing every format Pillow knows; the dimensions, refused beyond a bound), and
`load_upload` then decodes the pixels, refusing truncated or corrupt data. Both refuse
with InvalidInput (422) naming the field. Both block: callers run them off the event
loop.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence

from PIL import Image

from shared.errors import InvalidInput

UPLOAD_FORMATS = ("PNG", "JPEG", "WEBP")
# An upload may be larger than the size it is served at (an edit's image is resized to
# the requested size), but each side at most this many times the largest served side: a
# 512x512 deployment takes images up to 1024x1024 (4 MiB as RGBA), not the 4096x4096
# (64 MiB) or 20000x20000 (1.6 GB) a few KB of PNG can declare.
UPLOAD_SCALE = 2


def max_upload_side(sizes: Iterable[tuple[int, int]]) -> int:
    """The largest width or height an upload may have, for these served sizes."""
    return UPLOAD_SCALE * max(max(width, height) for width, height in sizes)


def _names(formats: Sequence[str]) -> str:
    names = ["WebP" if f == "WEBP" else f for f in formats]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def open_upload(
    data: bytes, *, param: str, max_side: int, formats: Sequence[str] = UPLOAD_FORMATS
) -> Image.Image:
    """The image's header: its format one of `formats`, each side at most `max_side`.

    No pixel is decoded here. Pillow's own decompression-bomb limit (MAX_IMAGE_PIXELS,
    about 89 M pixels) is far above `max_side`; an image beyond twice it, which Pillow
    refuses while opening, is refused here as the too-large image it is.
    """
    try:
        image = Image.open(io.BytesIO(data), formats=list(formats))
    except Image.DecompressionBombError:
        raise InvalidInput(
            f"{param} is too large; at most {max_side}x{max_side} pixels", param=param
        ) from None
    except Exception:
        raise InvalidInput(f"{param} is not an image ({_names(formats)})", param=param) from None
    width, height = image.size
    if width > max_side or height > max_side:
        image.close()
        raise InvalidInput(
            f"{param} is {width}x{height}; at most {max_side}x{max_side} pixels", param=param
        )
    return image


def load_upload(image: Image.Image, *, param: str) -> Image.Image:
    """Decode the pixels of an image `open_upload` accepted."""
    try:
        image.load()
    except Exception:
        raise InvalidInput(f"{param} is truncated or corrupt", param=param) from None
    return image
