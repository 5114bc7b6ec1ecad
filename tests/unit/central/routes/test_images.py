"""The images routes over a real in-process chain: answer shapes and both edit forms."""

from __future__ import annotations

import asyncio
import base64
import io
from typing import Any

import httpx
import pytest
from PIL import Image

from central.app import create_central_app
from shared.pipeline.chain import Chain
from tests.utils.gateway import SETTINGS, client_for

IMAGES_KEYS = {
    "created",
    "data",
    "timings",
    "prompt_tokens",
    "prompt_truncated",
    "model",
    "weights",
}


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def post_all(chain: Chain, *requests: dict[str, Any]) -> list[httpx.Response]:
    async def main() -> list[httpx.Response]:
        async with client_for(create_central_app(SETTINGS, chain)) as client:
            return [await client.post(**request) for request in requests]

    return asyncio.run(main())


def test_generations_answer_the_openai_shape_in_either_format(chain: Chain) -> None:
    body = {"prompt": "a lighthouse", "steps": 2, "seed": 4, "n": 2}
    b64, url = post_all(
        chain,
        {"url": "/v1/images/generations", "json": body},
        {"url": "/v1/images/generations", "json": {**body, "response_format": "url"}},
    )
    assert b64.status_code == 200 and url.status_code == 200, b64.text + url.text
    assert set(b64.json()) == IMAGES_KEYS and set(url.json()) == IMAGES_KEYS
    assert [set(item) for item in b64.json()["data"]] == [{"seed", "b64_json"}] * 2
    assert [item["seed"] for item in url.json()["data"]] == [4, 5]
    encoded = b64.json()["data"][0]["b64_json"]
    assert url.json()["data"][0] == {"seed": 4, "url": f"data:image/png;base64,{encoded}"}
    assert set(b64.json()["timings"]["diffusion"]) == {"queue_ms", "compute_ms", "transfer_ms"}


def test_an_edit_gives_the_same_pixels_as_multipart_and_as_json(chain: Chain) -> None:
    image = png(Image.new("RGB", (64, 64), (30, 90, 200)))
    region = (8, 8, 40, 40)
    white = Image.new("L", (64, 64), 0)
    white.paste(255, region)
    alpha = Image.new("RGBA", (64, 64), (0, 0, 0, 255))
    alpha.paste((0, 0, 0, 0), region)
    fields = {"prompt": "a door", "steps": "4", "strength": "0.5", "seed": "9"}
    multipart, as_json = post_all(
        chain,
        {
            "url": "/v1/images/edits",
            "data": fields,
            "files": {"image": ("i.png", image), "mask": ("m.png", png(alpha))},
        },
        {
            "url": "/v1/images/edits",
            "json": {
                **fields,
                "image": base64.b64encode(image).decode(),
                "mask": base64.b64encode(png(white)).decode(),
            },
        },
    )
    assert multipart.status_code == 200 and as_json.status_code == 200, multipart.text
    assert set(multipart.json()) == IMAGES_KEYS
    assert multipart.json()["data"] == as_json.json()["data"]
    assert "image_encoder" in multipart.json()["timings"]


@pytest.mark.parametrize("form", ["multipart", "json"])
def test_an_unserved_edit_size_is_422_unsupported_size_in_either_form(
    chain: Chain, form: str
) -> None:
    big = png(Image.new("RGB", (96, 96)))
    if form == "multipart":
        request: dict[str, Any] = {"data": {"prompt": "x"}, "files": {"image": ("i.png", big)}}
    else:
        request = {"json": {"prompt": "x", "image": base64.b64encode(big).decode()}}
    (response,) = post_all(chain, {"url": "/v1/images/edits", **request})
    assert response.status_code == 422
    assert response.json()["error"]["type"] == "unsupported_size"
    assert response.json()["error"]["param"] == "image"


def test_edits_refuse_other_media_types(chain: Chain) -> None:
    (response,) = post_all(
        chain,
        {"url": "/v1/images/edits", "content": b"x", "headers": {"content-type": "text/plain"}},
    )
    assert response.status_code == 415 and response.json()["error"]["param"] == "body"


def test_hugging_face_text_to_image_answers_a_png_and_its_seed(chain: Chain) -> None:
    (response,) = post_all(
        chain,
        {"url": "/", "json": {"inputs": "x", "parameters": {"seed": 3, "num_inference_steps": 2}}},
    )
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.headers["x-seed"] == "3"
    assert Image.open(io.BytesIO(response.content)).size == (64, 64)
