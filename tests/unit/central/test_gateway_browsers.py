"""Browsers and the gateway, in process over the real tiny chain: another site's page is
refused before any work, the gateway's own page and listed origins are served, rebinding
Hosts are refused; and a stage accepts every token of its list while one rotates."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import httpx
import pytest
from PIL import Image
from pydantic import SecretStr

import central.routes.images as images_routes
from central.app import create_central_app
from services.routes import create_stage_app
from shared.config import Settings
from shared.pipeline.chain import Chain
from shared.pipeline.local.base import LocalStage
from shared.pipeline.remote import RemoteStage
from tests.utils.gateway import SETTINGS, client_for

GENERATION = {"prompt": "a lighthouse", "size": "64x64", "steps": 2, "seed": 3}
EVIL = "http://evil.example"
APP_ORIGIN = "https://app.example.com"


def png(mode: str, color: Any) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (64, 64), color).save(buffer, format="PNG")
    return buffer.getvalue()


EDIT_FORM: dict[str, Any] = {
    "data": {"prompt": "a door", "steps": "2", "strength": "0.5", "seed": "9"},
    "files": {
        "image": ("i.png", png("RGB", (30, 90, 200))),
        "mask": ("m.png", png("RGBA", (0, 0, 0, 0))),
    },
}


class Spy:
    """Counts the work the images routes start: reading an edit, running the chain."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, chain: Chain) -> None:
        self.calls: list[str] = []
        read_edit, generate = images_routes.read_edit, chain.generate

        async def counted_read_edit(*args: Any, **kwargs: Any) -> Any:
            self.calls.append("read_edit")
            return await read_edit(*args, **kwargs)

        async def counted_generate(*args: Any, **kwargs: Any) -> Any:
            self.calls.append("generate")
            return await generate(*args, **kwargs)

        monkeypatch.setattr(images_routes, "read_edit", counted_read_edit)
        monkeypatch.setattr(chain, "generate", counted_generate)


def run(app: Any, *requests: dict[str, Any]) -> list[httpx.Response]:
    async def main() -> list[httpx.Response]:
        async with client_for(app) as client:
            return [await client.request(**request) for request in requests]

    return asyncio.run(main())


def refused_status(app: Any) -> int:
    metrics = run(app, {"method": "GET", "url": "/metrics"})[0].text
    return sum(
        int(float(line.rsplit(" ", 1)[1]))
        for line in metrics.splitlines()
        if line.startswith("sdserve_http_requests_total{") and 'status="403"' in line
    )


def test_another_sites_page_is_refused_before_any_work(
    chain: Chain, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = Spy(monkeypatch, chain)
    app = create_central_app(SETTINGS, chain)
    # The multipart edit is a CORS "simple" request: a browser sends it without asking.
    refused = run(
        app,
        {"method": "POST", "url": "/v1/images/edits", "headers": {"origin": EVIL}, **EDIT_FORM},
        {
            "method": "POST",
            "url": "/v1/images/generations",
            "headers": {"origin": EVIL},
            "json": GENERATION,
        },
        # A sandboxed frame or a file:// page says "null".
        {
            "method": "POST",
            "url": "/v1/images/generations",
            "headers": {"origin": "null"},
            "json": GENERATION,
        },
        # Same host, another port: another origin.
        {
            "method": "POST",
            "url": "/v1/images/generations",
            "headers": {"origin": "http://localhost:3000"},
            "json": GENERATION,
        },
        {"method": "POST", "url": "/v1/jobs", "headers": {"origin": EVIL}, "json": GENERATION},
    )
    for response in refused:
        assert response.status_code == 403, response.text
        error = response.json()["error"]
        assert error["type"] == "forbidden" and error["param"] == "Origin", error
        assert "access-control-allow-origin" not in response.headers
    assert spy.calls == []
    assert refused_status(app) == len(refused)


def test_the_gateways_own_page_is_served(chain: Chain, monkeypatch: pytest.MonkeyPatch) -> None:
    spy = Spy(monkeypatch, chain)
    # client_for's requests go to http://localhost: the page's own origin.
    generated, edited = run(
        create_central_app(SETTINGS, chain),
        {
            "method": "POST",
            "url": "/v1/images/generations",
            "headers": {"origin": "http://localhost"},
            "json": GENERATION,
        },
        {
            "method": "POST",
            "url": "/v1/images/edits",
            "headers": {"origin": "http://localhost"},
            **EDIT_FORM,
        },
    )
    assert generated.status_code == 200, generated.text
    assert edited.status_code == 200, edited.text
    assert spy.calls == ["generate", "read_edit", "generate"]


def test_listed_origins_get_cors_answers(chain: Chain) -> None:
    settings = SETTINGS.model_copy(update={"cors_origins": [APP_ORIGIN]})
    app = create_central_app(settings, chain)
    preflight, generated, other = run(
        app,
        {
            "method": "OPTIONS",
            "url": "/v1/images/generations",
            "headers": {
                "origin": APP_ORIGIN,
                "access-control-request-method": "POST",
                "access-control-request-headers": "authorization, content-type",
            },
        },
        {
            "method": "POST",
            "url": "/v1/images/generations",
            "headers": {"origin": APP_ORIGIN},
            "json": GENERATION,
        },
        {
            "method": "OPTIONS",
            "url": "/v1/images/generations",
            "headers": {"origin": EVIL, "access-control-request-method": "POST"},
        },
    )
    assert preflight.status_code == 200, preflight.text
    assert preflight.headers["access-control-allow-origin"] == APP_ORIGIN
    assert "POST" in preflight.headers["access-control-allow-methods"]
    allowed_headers = preflight.headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed_headers and "content-type" in allowed_headers
    assert "access-control-allow-credentials" not in preflight.headers
    assert generated.status_code == 200, generated.text
    assert generated.headers["access-control-allow-origin"] == APP_ORIGIN
    assert other.status_code == 403 and other.json()["error"]["type"] == "forbidden"
    assert "access-control-allow-origin" not in other.headers


def test_a_preflight_needs_no_api_key_but_the_request_does(chain: Chain) -> None:
    settings = SETTINGS.model_copy(
        update={"cors_origins": [APP_ORIGIN], "api_keys": SecretStr("k1")}
    )
    preflight, unkeyed = run(
        create_central_app(settings, chain),
        {
            "method": "OPTIONS",
            "url": "/v1/images/generations",
            "headers": {"origin": APP_ORIGIN, "access-control-request-method": "POST"},
        },
        {
            "method": "POST",
            "url": "/v1/images/generations",
            "headers": {"origin": APP_ORIGIN},
            "json": GENERATION,
        },
    )
    assert preflight.status_code == 200, preflight.text
    assert unkeyed.status_code == 401, unkeyed.text
    # The page of the listed origin can read why.
    assert unkeyed.headers["access-control-allow-origin"] == APP_ORIGIN


def test_a_rebinding_host_is_refused_on_a_loopback_gateway(
    chain: Chain, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = Spy(monkeypatch, chain)
    assert SETTINGS.host == "127.0.0.1"
    # evil.example now resolves to 127.0.0.1: to the browser the page is same-origin.
    rebound = {"host": "evil.example:8000", "origin": "http://evil.example:8000"}
    edit, generation, info, health = run(
        create_central_app(SETTINGS, chain),
        {"method": "POST", "url": "/v1/images/edits", "headers": rebound, **EDIT_FORM},
        {
            "method": "POST",
            "url": "/v1/images/generations",
            "headers": rebound,
            "json": GENERATION,
        },
        {"method": "GET", "url": "/v1/info", "headers": {"host": "evil.example:8000"}},
        {"method": "GET", "url": "/healthz", "headers": {"host": "10.0.0.7:8000"}},
    )
    for response in (edit, generation, info):
        assert response.status_code == 400, response.text
        assert response.json()["error"]["type"] == "invalid_host"
    assert health.status_code == 200  # probes answer any Host (the kubelet's is the pod IP)
    assert spy.calls == []


def stage_settings(tokens: str) -> Settings:
    return Settings.model_validate({**SETTINGS.model_dump(), "internal_token": tokens})


@pytest.mark.parametrize("tokens", ["new,old", " new , old "])
def test_a_stage_accepts_every_token_of_its_list(chain: Chain, tokens: str) -> None:
    stage = chain.stages["text_encoder"]
    assert isinstance(stage, LocalStage)
    app = create_stage_app(stage, stage_settings(tokens), title="text encoder")
    body = {"json": {"prompts": ["a cat"]}}
    answers = run(
        app,
        *[
            {
                "method": "POST",
                "url": "/v1/encode",
                "headers": {"authorization": f"Bearer {token}"},
                **body,
            }
            for token in ("new", "old", "third", "new,old")
        ],
        {"method": "POST", "url": "/v1/encode", **body},
    )
    new, old, third, both, missing = answers
    assert new.status_code == 200 and old.status_code == 200, new.text + old.text
    for refused in (third, both):
        assert refused.status_code == 403 and refused.json()["error"]["type"] == "forbidden"
    assert missing.status_code == 401 and missing.json()["error"]["type"] == "unauthorized"


def test_central_sends_the_first_token(chain: Chain) -> None:
    stage = chain.stages["text_encoder"]
    assert isinstance(stage, LocalStage)
    remote = RemoteStage(
        stage.contract, "http://127.0.0.1:9", stage_settings("new,old"), chain.family.spec
    )
    assert remote.pool.headers["Authorization"] == "Bearer new"
