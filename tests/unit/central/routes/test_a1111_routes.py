"""The /sdapi/v1 routes over a real in-process chain: A1111-shaped refusals naming A1111's
fields, the API key as a bearer token or with HTTP basic auth, and /progress and
/interrupt acting on the caller's own jobs only. (A real client drives them end to end
in tests/e2e/test_a1111_clients.py.)"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
from typing import Any

import httpx
import pytest
from PIL import Image
from pydantic import SecretStr

from central.app import create_central_app
from central.jobs import JobRunner
from shared.pipeline.chain import Chain
from tests.utils.gateway import SETTINGS, client_for, wait_for_step

TXT2IMG = "/sdapi/v1/txt2img"
IMG2IMG = "/sdapi/v1/img2img"


def png_b64(size: tuple[int, int] = (64, 64)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def detail(response: httpx.Response) -> dict[str, Any]:
    """The one entry of an A1111 (FastAPI) validation error, checked for its shape."""
    assert response.status_code == 422, response.text
    body = response.json()
    assert set(body) == {"detail"} and len(body["detail"]) == 1, body
    entry: dict[str, Any] = body["detail"][0]
    assert set(entry) == {"loc", "msg", "type"}
    return entry


@pytest.mark.parametrize(
    ("path", "body", "loc", "error_type"),
    [
        (
            TXT2IMG,
            {"prompt": "x", "width": 512, "height": 512},
            ["body", "width"],
            "unsupported_size",
        ),
        (
            TXT2IMG,
            {"prompt": "x", "width": 64, "height": 96},
            ["body", "height"],
            "unsupported_size",
        ),
        (TXT2IMG, {"prompt": "x", "steps": 0}, ["body", "steps"], "invalid_request_error"),
        (TXT2IMG, {"prompt": "x", "steps": 5000}, ["body", "steps"], "invalid_request_error"),
        (
            TXT2IMG,
            {"prompt": "x", "cfg_scale": 1000},
            ["body", "cfg_scale"],
            "invalid_request_error",
        ),
        (TXT2IMG, {"prompt": "x", "seed": -2}, ["body", "seed"], "invalid_request_error"),
        (
            TXT2IMG,
            {"prompt": "x", "batch_size": 9},
            ["body", "batch_size"],
            "invalid_request_error",
        ),
        (
            TXT2IMG,
            {"prompt": "x", "batch_size": 2, "n_iter": 3},
            ["body", "n_iter"],
            "invalid_request_error",
        ),
        (TXT2IMG, {"prompt": ""}, ["body", "prompt"], "invalid_request_error"),
        (TXT2IMG, [1, 2], ["body"], "invalid_request_error"),
        (IMG2IMG, {"prompt": "x"}, ["body", "init_images"], "invalid_request_error"),
        (
            IMG2IMG,
            {"prompt": "x", "init_images": ["@@"]},
            ["body", "init_images", 0],
            "invalid_request_error",
        ),
        (
            IMG2IMG,
            {"prompt": "x", "init_images": [png_b64()], "denoising_strength": 0},
            ["body", "denoising_strength"],
            "invalid_request_error",
        ),
        (
            IMG2IMG,
            {"prompt": "x", "init_images": [png_b64((640, 640))]},
            ["body", "init_images", 0],
            "invalid_request_error",
        ),
        (
            IMG2IMG,
            {"prompt": "x", "init_images": [png_b64()], "mask": png_b64((32, 32))},
            ["body", "mask"],
            "invalid_request_error",
        ),
    ],
)
def test_bad_input_is_an_a1111_422_naming_the_field(
    chain: Chain, path: str, body: Any, loc: list[Any], error_type: str
) -> None:
    async def main() -> tuple[httpx.Response, int]:
        app = create_central_app(SETTINGS, chain)
        async with client_for(app) as client:
            return await client.post(path, json=body), len(app.state.jobs.store.jobs)

    response, jobs = asyncio.run(main())
    entry = detail(response)
    assert entry["loc"] == loc and entry["type"] == error_type
    field = ".".join(str(part) for part in loc[1:])
    assert field in entry["msg"], entry
    assert jobs == 0  # refused before a job was made


def test_other_errors_are_in_a1111s_exception_shape(chain: Chain) -> None:
    async def main() -> list[httpx.Response]:
        async with client_for(create_central_app(SETTINGS, chain)) as client:
            return [
                await client.post(
                    TXT2IMG,
                    json={"prompt": "x", "override_settings": {"sd_model_checkpoint": "sdxl"}},
                ),
                await client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "sdxl"}),
                await client.post(
                    TXT2IMG, content=b"prompt=x", headers={"content-type": "text/plain"}
                ),
                # The rest of the gateway keeps its own error body.
                await client.post("/v1/images/generations", json={"prompt": "x", "model": "sdxl"}),
            ]

    override, options, media, ours = asyncio.run(main())
    for response, status, error in (
        (override, 404, "model_not_found"),
        (options, 404, "model_not_found"),
        (media, 415, "unsupported_media_type"),
    ):
        assert response.status_code == status, response.text
        body = response.json()
        assert set(body) == {"error", "detail", "body", "errors"} and body["error"] == error
    assert "override_settings.sd_model_checkpoint" in override.json()["detail"]
    assert "sdxl" in options.json()["detail"] and "tiny" in options.json()["detail"]
    assert ours.json()["error"]["param"] == "model"


def test_the_key_is_taken_as_bearer_or_basic_auth(chain: Chain) -> None:
    settings = SETTINGS.model_copy(update={"api_keys": SecretStr("key-one,painter:s3cret")})
    options = "/sdapi/v1/options"

    async def main() -> dict[str, httpx.Response]:
        async with client_for(create_central_app(settings, chain)) as client:
            return {
                "none": await client.get(options),
                "bearer": await client.get(options, headers={"Authorization": "Bearer key-one"}),
                # --api-auth style: any user, the key as password...
                "password": await client.get(options, auth=("anyone", "key-one")),
                # ...or user:password as the key.
                "user:password": await client.get(options, auth=("painter", "s3cret")),
                "wrong": await client.get(options, auth=("painter", "nope")),
                "garbled": await client.get(options, headers={"Authorization": "Basic %%%"}),
                "models": await client.get("/sdapi/v1/sd-models", auth=("x", "key-one")),
                "ours": await client.post("/v1/images/generations", json={"prompt": "x"}),
                "ours with basic": await client.get("/v1/jobs/nope", auth=("x", "key-one")),
            }

    got = asyncio.run(main())
    for name in ("bearer", "password", "user:password", "models"):
        assert got[name].status_code == 200, (name, got[name].text)
    assert got["bearer"].json()["sd_model_checkpoint"] == "tiny"
    for name, status in (("none", 401), ("garbled", 401), ("wrong", 403)):
        body = got[name].json()
        assert got[name].status_code == status and set(body) == {
            "error",
            "detail",
            "body",
            "errors",
        }
    # A1111 answers a missing login with a basic auth challenge; we offer both schemes.
    assert "Basic" in got["none"].headers["www-authenticate"]
    assert "Bearer" in got["none"].headers["www-authenticate"]
    assert got["ours"].status_code == 401 and got["ours"].json()["error"]["type"] == "unauthorized"
    assert got["ours with basic"].status_code == 404  # the key got it past the guard


def test_progress_interrupt_and_options_are_per_api_key(chain: Chain) -> None:
    settings = SETTINGS.model_copy(update={"api_keys": SecretStr("key-one,key-two")})
    one, two = ({"Authorization": f"Bearer {key}"} for key in ("key-one", "key-two"))

    async def main() -> dict[str, Any]:
        app = create_central_app(settings, chain)
        runner: JobRunner = app.state.jobs
        got: dict[str, Any] = {}
        async with client_for(app) as client:
            job = (
                await client.post("/v1/jobs", json={"prompt": "x", "steps": 1000}, headers=one)
            ).json()
            await wait_for_step(runner.store, job["id"], 2)
            got["two sees"] = (await client.get("/sdapi/v1/progress", headers=two)).json()
            got["two interrupts"] = (await client.post("/sdapi/v1/interrupt", headers=two)).json()
            got["one sees"] = (await client.get("/sdapi/v1/progress", headers=one)).json()
            got["one interrupts"] = (await client.post("/sdapi/v1/interrupt", headers=one)).json()
            got["job"] = (await client.get(job["url"], headers=one)).json()
            got["one after"] = (await client.get("/sdapi/v1/progress", headers=one)).json()
            await client.post(
                "/sdapi/v1/options", json={"sd_model_checkpoint": "tiny"}, headers=one
            )
            got["selected"] = [
                await runner.store.setting(slot, "sd_model_checkpoint")
                for slot in (hashlib.sha256(b"key-one").hexdigest(), "", "key-two")
            ]
        return got

    got = asyncio.run(main())
    assert got["two sees"]["state"]["job_count"] == 0 and got["two sees"]["progress"] == 0
    assert got["two interrupts"] == {}
    state = got["one sees"]["state"]
    assert state["job_count"] == 1 and state["job"] == got["job"]["id"]
    assert state["sampling_steps"] == 1000 and state["sampling_step"] >= 2
    assert 0 < got["one sees"]["progress"] < 1
    assert got["job"]["status"] == "cancelled"  # key-one's interrupt, not key-two's
    assert got["one after"]["state"]["job_count"] == 0
    # key-one's choice is kept for key-one (under its digest, never the key itself).
    assert got["selected"] == ["tiny", None, None]
