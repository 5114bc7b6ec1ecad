"""The images routes over a real in-process chain: answer shapes and both edit forms."""

from __future__ import annotations

import asyncio
import base64
import io
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from central.app import create_central_app
from shared.pipeline.chain import Chain
from tests.utils.gateway import SETTINGS, client_for
from tests.utils.images import b64, blank_png, encoded

IMAGES_KEYS = {
    "created",
    "data",
    "timings",
    "prompt_tokens",
    "prompt_truncated",
    "model",
    "weights",
    "sampler",
    "warnings",
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


def test_generations_warn_of_prompt_words_outside_the_models_vocabulary(chain: Chain) -> None:
    known, unknown = post_all(
        chain,
        {"url": "/v1/images/generations", "json": {"prompt": "a red square", "steps": 1}},
        {"url": "/v1/images/generations", "json": {"prompt": "a photo of a cat", "steps": 1}},
    )
    assert known.status_code == 200 and unknown.status_code == 200, known.text + unknown.text
    assert known.json()["warnings"] == []
    (warning,) = unknown.json()["warnings"]
    assert warning["code"] == "prompt_out_of_domain" and warning["param"] == "prompt"
    assert warning["words"] == ["photo", "cat"] and "'photo', 'cat'" in warning["message"]


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
    assert response.status_code == 415 and response.json()["error"]["param"] == "Content-Type"


@pytest.mark.parametrize("url", ["/v1/images/generations", "/"])
@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_json_routes_refuse_bodies_not_sent_as_json(
    chain: Chain, url: str, content_type: str | None
) -> None:
    headers = {} if content_type is None else {"content-type": content_type}
    body = b'{"prompt": "x", "inputs": "x"}'
    (response,) = post_all(chain, {"url": url, "content": body, "headers": headers})
    assert response.status_code == 415
    error = response.json()["error"]
    assert error["type"] == "unsupported_media_type" and error["param"] == "Content-Type"
    assert "Content-Type: application/json" in error["message"]


def test_hugging_face_text_to_image_answers_a_png_and_its_seed(chain: Chain) -> None:
    (response,) = post_all(
        chain,
        {"url": "/", "json": {"inputs": "x", "parameters": {"seed": 3, "num_inference_steps": 2}}},
    )
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.headers["x-seed"] == "3"
    assert Image.open(io.BytesIO(response.content)).size == (64, 64)


def edit_request(form: str, image: bytes, mask: bytes | None = None) -> dict[str, Any]:
    if form == "multipart":
        files = {"image": ("i", image), **({"mask": ("m", mask)} if mask else {})}
        return {"url": "/v1/images/edits", "data": {"prompt": "x"}, "files": files}
    body = {"prompt": "x", "image": base64.b64encode(image).decode()}
    if mask is not None:
        body["mask"] = base64.b64encode(mask).decode()
    return {"url": "/v1/images/edits", "json": body}


@pytest.mark.parametrize("form", ["multipart", "json"])
@pytest.mark.parametrize("param", ["image", "mask"])
@pytest.mark.parametrize(
    ("upload", "message"),
    [
        ("gif", "is not an image (PNG, JPEG or WebP)"),
        ("huge", "is 4096x4096; at most 128x128 pixels"),
        ("bomb", "is too large"),
        ("truncated", "is truncated or corrupt"),
        ("garbage", "is not an image"),
    ],
)
def test_hostile_uploads_are_422_naming_the_field_in_either_form(
    chain: Chain, form: str, param: str, upload: str, message: str
) -> None:
    fine = png(Image.new("RGBA", (64, 64), (0, 0, 0, 0)))
    whole = png(Image.frombytes("RGB", (64, 64), bytes(range(256)) * 48))
    hostile = {
        "gif": lambda: encoded(Image.new("RGB", (64, 64)), "GIF"),
        "huge": lambda: blank_png(4096, 4096),
        "bomb": lambda: blank_png(20000, 20000),
        "truncated": lambda: whole[: len(whole) // 2],
        "garbage": lambda: b"GIF89a" + b"\0" * 100,
    }[upload]()
    image, mask = (hostile, fine) if param == "image" else (fine, hostile)
    (response,) = post_all(chain, edit_request(form, image, mask))
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["message"].startswith(f"{param} {message}")


def test_an_edit_image_up_to_twice_the_served_side_is_resized(chain: Chain) -> None:
    (response,) = post_all(
        chain,
        {
            "url": "/v1/images/edits",
            "json": {
                "prompt": "x",
                "steps": 1,
                "size": "64x64",
                "image": base64.b64encode(png(Image.new("RGB", (128, 128)))).decode(),
            },
        },
    )
    assert response.status_code == 200, response.text


def test_body_limits_are_per_route(chain: Chain) -> None:
    settings = SETTINGS.model_copy(
        update={"max_json_body_bytes": 4096, "max_edit_body_bytes": 65536}
    )
    padding = "x" * 8000  # an ignored field: over the JSON cap, under the edits cap
    image = base64.b64encode(png(Image.new("RGB", (64, 64)))).decode()

    async def main() -> list[httpx.Response]:
        async with client_for(create_central_app(settings, chain)) as client:
            return [
                await client.post("/v1/images/generations", json={"prompt": "x", "p": padding}),
                await client.post("/", json={"inputs": "x", "p": padding}),
                await client.post(
                    "/v1/images/edits",
                    json={"prompt": "x", "steps": 1, "image": image, "p": padding},
                ),
                await client.post(
                    "/v1/jobs",
                    json={"kind": "edit", "prompt": "x", "steps": 1, "image": image, "p": padding},
                ),
                await client.post("/v1/images/edits", json={"prompt": "x", "p": "x" * 70000}),
            ]

    generations, hf, edit, job, too_big = asyncio.run(main())
    for refused, limit in ((generations, 4096), (hf, 4096), (too_big, 65536)):
        error = refused.json()["error"]
        assert refused.status_code == 413 and error["param"] == "body", refused.text
        assert error["message"] == f"request body exceeds {limit} bytes"
    assert edit.status_code == 200, edit.text
    assert job.status_code == 202, job.text


def transparent_square_png() -> tuple[bytes, np.ndarray]:
    """An RGBA PNG whose square (8..40) is fully transparent (black under it), and its
    RGB, with a gradient so that image-to-image visibly moves its pixels."""
    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[..., 0] = np.arange(64, dtype=np.uint8)[None, :] * 4
    rgb[..., 1] = 120
    alpha = np.full((64, 64), 255, np.uint8)
    alpha[8:40, 8:40] = 0
    rgb[8:40, 8:40] = 0
    return png(Image.fromarray(np.dstack([rgb, alpha]), "RGBA")), rgb


def test_with_no_mask_a_transparent_png_is_inpainted_and_an_opaque_one_is_not(
    chain: Chain,
) -> None:
    openai = pytest.importorskip("openai")
    image, rgb = transparent_square_png()
    opaque = png(Image.fromarray(rgb, "RGB"))
    square = np.zeros((64, 64), bool)
    square[8:40, 8:40] = True

    async def edit(client: Any, upload: bytes, **extra: Any) -> np.ndarray:
        result = await client.images.edit(
            image=("i.png", upload, "image/png"),
            prompt="a door",
            size="64x64",
            response_format="b64_json",
            extra_body={"steps": 3, "seed": 5},
            **extra,
        )
        decoded = Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json)))
        return np.asarray(decoded.convert("RGB"))

    async def main() -> tuple[np.ndarray, ...]:
        async with client_for(create_central_app(SETTINGS, chain)) as http:
            client = openai.AsyncOpenAI(
                base_url="http://localhost/v1", api_key="unused", http_client=http
            )
            return (
                await edit(client, image),
                await edit(client, image, mask=("m.png", image, "image/png")),
                await edit(client, opaque),
            )

    no_mask, own_alpha_as_mask, image_to_image = asyncio.run(main())
    # Inpainted: the opaque area comes back exactly as sent, the transparent one is new,
    # and the image's alpha did what the same PNG sent as the mask does.
    assert np.array_equal(no_mask[~square], rgb[~square])
    assert not np.array_equal(no_mask[square], rgb[square])
    assert np.array_equal(no_mask, own_alpha_as_mask)
    # An opaque PNG and no mask: image-to-image, every pixel moves.
    assert not np.array_equal(image_to_image[~square], rgb[~square])
    (as_json,) = post_all(
        chain,
        {
            "url": "/v1/images/edits",
            "json": {"prompt": "a door", "steps": 3, "seed": 5, "image": b64(image)},
        },
    )
    assert as_json.status_code == 200, as_json.text
    from_json = Image.open(io.BytesIO(base64.b64decode(as_json.json()["data"][0]["b64_json"])))
    assert np.array_equal(np.asarray(from_json.convert("RGB")), no_mask)
