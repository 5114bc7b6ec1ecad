"""The gateway's serving work: edit decoding, off-loop decoding and encoding, responses."""

from __future__ import annotations

import asyncio
import base64
import io
import threading

import numpy as np
import pytest
from PIL import Image, ImageFile

from central import serving
from central.schemas import ImageEditFields
from central.serving import (
    MaskPolarity,
    decode_edit,
    edit_from_json,
    encode_pngs,
    images_response,
)
from shared.config import Settings
from shared.errors import InvalidInput, UnsupportedSize
from shared.pipeline.types import GenerationResult, StageTiming
from tests.utils.gateway import SETTINGS


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


RED = png(Image.new("RGB", (64, 64), (200, 30, 30)))


@pytest.mark.parametrize(
    ("image_size", "size", "param"), [((96, 96), None, "image"), ((64, 64), "96x96", "size")]
)
def test_an_unserved_edit_size_is_unsupported_size_naming_the_field(
    image_size: tuple[int, int], size: str | None, param: str
) -> None:
    image = png(Image.new("RGB", image_size))
    fields = ImageEditFields(prompt="x", size=size)
    with pytest.raises(UnsupportedSize) as raised:
        decode_edit(fields, SETTINGS, image, None, mask_polarity="white-repaints")
    assert raised.value.param == param and raised.value.error_type == "unsupported_size"
    assert "96x96 is not a served size (64x64)" in raised.value.message


def test_both_mask_polarities_mean_the_same_region() -> None:
    region = (16, 16, 48, 48)
    white = Image.new("L", (64, 64), 0)
    white.paste(255, region)
    alpha = Image.new("RGBA", (64, 64), (0, 0, 0, 255))
    alpha.paste((0, 0, 0, 0), region)
    fields = ImageEditFields(prompt="x")
    _, grey = decode_edit(fields, SETTINGS, RED, png(white), mask_polarity="white-repaints")
    _, openai = decode_edit(fields, SETTINGS, RED, png(alpha), mask_polarity="openai-alpha")
    assert grey.mask is not None and openai.mask is not None
    assert np.array_equal(grey.mask, openai.mask) and grey.mask.sum() == 32 * 32
    assert np.array_equal(grey.image, np.asarray(Image.open(io.BytesIO(RED))))


@pytest.mark.parametrize("polarity", ["openai-alpha", "white-repaints"])
def test_with_no_mask_the_images_own_fully_transparent_pixels_are_the_mask(
    polarity: MaskPolarity,
) -> None:
    fields = ImageEditFields(prompt="x")
    image = Image.new("RGBA", (64, 64), (200, 0, 0, 255))
    image.paste((0, 0, 0, 0), (16, 16, 48, 48))
    image.paste((200, 0, 0, 128), (0, 0, 8, 8))  # partly transparent: kept
    _, edit = decode_edit(fields, SETTINGS, png(image), None, mask_polarity=polarity)
    assert edit.mask is not None and edit.mask.sum() == 32 * 32
    assert edit.mask[16:48, 16:48].all() and edit.image.shape == (64, 64, 3)
    palette = Image.new("P", (64, 64), 1)
    palette.putpalette([0, 0, 0, 200, 0, 0])
    palette.paste(0, (0, 0, 16, 64))
    palette.info["transparency"] = 0  # tRNS: palette entry 0 is transparent
    _, edit = decode_edit(fields, SETTINGS, png(palette), None, mask_polarity=polarity)
    assert edit.mask is not None and edit.mask.sum() == 16 * 64


@pytest.mark.parametrize("polarity", ["openai-alpha", "white-repaints"])
def test_with_no_mask_an_opaque_image_is_image_to_image(polarity: MaskPolarity) -> None:
    fields = ImageEditFields(prompt="x")
    opaque = png(Image.new("RGBA", (64, 64), (200, 0, 0, 255)))
    partial = png(Image.new("RGBA", (64, 64), (200, 0, 0, 1)))
    for image in (RED, opaque, partial):
        _, edit = decode_edit(fields, SETTINGS, image, None, mask_polarity=polarity)
        assert edit.mask is None


def test_an_openai_mask_without_alpha_and_a_mismatched_mask_are_refused() -> None:
    fields = ImageEditFields(prompt="x")
    grey = png(Image.new("L", (64, 64), 0))
    with pytest.raises(InvalidInput, match="alpha channel") as raised:
        decode_edit(fields, SETTINGS, RED, grey, mask_polarity="openai-alpha")
    assert raised.value.param == "mask"
    small = png(Image.new("L", (32, 32), 0))
    with pytest.raises(InvalidInput, match="mask is 32x32") as raised:
        decode_edit(fields, SETTINGS, RED, small, mask_polarity="white-repaints")
    assert raised.value.param == "mask"


def test_uploads_are_decoded_and_pngs_encoded_off_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    threads: list[int] = []
    real_open, real_encode = serving.open_image, serving.encode_png

    def recording_open(data: bytes, *, param: str, settings: Settings) -> Image.Image:
        threads.append(threading.get_ident())
        return real_open(data, param=param, settings=settings)

    def recording_encode(image: np.ndarray) -> bytes:
        threads.append(threading.get_ident())
        return real_encode(image)

    monkeypatch.setattr(serving, "open_image", recording_open)
    monkeypatch.setattr(serving, "encode_png", recording_encode)
    payload = {"prompt": "x", "image": base64.b64encode(RED).decode()}

    async def main() -> int:
        await edit_from_json(payload, lambda _model: SETTINGS)
        await encode_pngs(np.zeros((2, 8, 8, 3), np.uint8))
        return threading.get_ident()

    loop_thread = asyncio.run(main())
    assert len(threads) == 3 and loop_thread not in threads


def test_the_images_response_carries_one_form_per_image() -> None:
    result = GenerationResult(
        images=np.zeros((2, 8, 8, 3), np.uint8),
        seeds=[7, 8],
        timings={"diffusion": StageTiming(1.234, 5.678, 0.0)},
        prompt_tokens=3,
        model="tiny",
        weights="embedded",
    )
    pngs = [b"a", b"b"]
    b64 = images_response(result, pngs, "b64_json").model_dump(exclude_unset=True)
    url = images_response(result, pngs, "url").model_dump(exclude_unset=True)
    assert b64["data"] == [{"seed": 7, "b64_json": "YQ=="}, {"seed": 8, "b64_json": "Yg=="}]
    assert url["data"][0] == {"seed": 7, "url": "data:image/png;base64,YQ=="}
    assert b64["timings"] == {"diffusion": {"queue_ms": 1.23, "compute_ms": 5.68, "transfer_ms": 0}}
    assert b64["model"] == "tiny" and b64["weights"] == "embedded" and b64["prompt_tokens"] == 3
    assert b64["prompt_truncated"] is False


def test_both_headers_are_checked_before_any_pixel_is_decoded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_decoding(self: Image.Image) -> None:
        raise AssertionError("pixels decoded")

    fields = ImageEditFields(prompt="x")
    small, unserved = png(Image.new("L", (32, 32), 0)), png(Image.new("RGB", (96, 96)))
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(InvalidInput, match="mask is 32x32"):
        decode_edit(fields, SETTINGS, RED, small, mask_polarity="white-repaints")
    with pytest.raises(UnsupportedSize):
        decode_edit(fields, SETTINGS, unserved, None, mask_polarity="white-repaints")


def test_base64_is_decoded_in_pieces_as_one_call_would(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serving, "B64_PIECE_CHARS", 8)
    data = bytes(range(256)) * 3 + b"xy"
    text = base64.b64encode(data).decode()
    assert serving.b64_bytes(text, param="image") == data
    assert serving.b64_bytes("data:image/png;base64," + text, param="image") == data
    for bad in ("AA==AAAA", "AAAAAA==AAAA", "AAA", "AAAA AAAA", "é"):
        with pytest.raises(InvalidInput, match="mask is not valid base64") as raised:
            serving.b64_bytes(bad, param="mask")
        assert raised.value.param == "mask"
