"""Uploads are opened header first: allowed formats only, bounded dimensions, then pixels."""

from __future__ import annotations

import pytest
from PIL import Image, ImageFile

from shared.errors import InvalidInput
from shared.uploads import load_upload, max_upload_side, open_upload
from tests.utils.images import blank_png, encoded


def test_the_bound_is_twice_the_largest_served_side() -> None:
    assert max_upload_side([(512, 512)]) == 1024
    assert max_upload_side([(64, 64), (128, 96), (96, 256)]) == 512


@pytest.mark.parametrize("format", ["PNG", "JPEG", "WEBP"])
def test_png_jpeg_and_webp_open_and_load(format: str) -> None:
    data = encoded(Image.new("RGB", (48, 32), (10, 200, 30)), format)
    image = open_upload(data, param="image", max_side=64)
    assert image.format == format and image.size == (48, 32)
    assert load_upload(image, param="image").getpixel((0, 0)) is not None


@pytest.mark.parametrize("format", ["GIF", "BMP", "TIFF", "ICO", "PPM"])
def test_other_formats_are_refused_naming_the_field(format: str) -> None:
    data = encoded(Image.new("RGB", (16, 16)), format)
    with pytest.raises(InvalidInput, match="mask is not an image") as raised:
        open_upload(data, param="mask", max_side=64)
    assert raised.value.param == "mask"


def test_the_allow_list_is_the_callers() -> None:
    data = encoded(Image.new("RGB", (16, 16)), "WEBP")
    with pytest.raises(InvalidInput, match=r"\(PNG or JPEG\)"):
        open_upload(data, param="inputs", max_side=64, formats=("PNG", "JPEG"))


def test_a_huge_image_is_refused_from_its_header(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decoding(self: Image.Image) -> None:
        raise AssertionError("pixels decoded")

    huge, wide = blank_png(4096, 4096), blank_png(1025, 16)
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(InvalidInput, match="image is 4096x4096; at most 1024x1024") as raised:
        open_upload(huge, param="image", max_side=1024)
    assert raised.value.param == "image"
    with pytest.raises(InvalidInput, match="image is 1025x16"):
        open_upload(wide, param="image", max_side=1024)
    assert open_upload(blank_png(1024, 16), param="image", max_side=1024).size == (1024, 16)


def test_a_decompression_bomb_is_refused_not_warned_about() -> None:
    # 400 M pixels: beyond twice Pillow's MAX_IMAGE_PIXELS, which it refuses itself.
    with pytest.raises(InvalidInput, match="image is too large") as raised:
        open_upload(blank_png(20000, 20000), param="image", max_side=1024)
    assert raised.value.param == "image"


@pytest.mark.parametrize("data", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\0" * 40])
def test_garbage_is_not_an_image(data: bytes) -> None:
    with pytest.raises(InvalidInput, match="image is not an image"):
        open_upload(data, param="image", max_side=64)


def test_a_truncated_image_opens_but_does_not_load() -> None:
    noise = Image.frombytes("RGB", (64, 64), bytes(range(256)) * 48)
    whole = encoded(noise)
    image = open_upload(whole[: len(whole) // 2], param="image", max_side=64)
    with pytest.raises(InvalidInput, match="image is truncated or corrupt"):
        load_upload(image, param="image")
    corrupt = bytearray(whole)
    corrupt[len(whole) // 2 : len(whole) // 2 + 64] = b"\xff" * 64
    with pytest.raises(InvalidInput, match="truncated or corrupt"):
        load_upload(open_upload(bytes(corrupt), param="image", max_side=64), param="image")
