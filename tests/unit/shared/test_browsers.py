"""What browsers may make a part do (shared.browsers) and the internal-token list: the rules
and the settings, without a model."""

from __future__ import annotations

import asyncio
import logging

import pytest
from fastapi import FastAPI

from shared.browsers import LOOPBACK_HOSTS, allowed_hosts, is_loopback, same_origin
from shared.config import ConfigError, Settings, load_settings
from shared.http import create_app
from tests.utils.gateway import client_for


class NoModel:
    """A part with nothing to load: the guards run before any route anyway."""

    name = "test"

    def load(self) -> None: ...

    def describe(self) -> dict[str, str]:
        return {}

    def batching_sources(self) -> list[object]:
        return []

    def close(self) -> None: ...


def app_for(public_api: bool = True, **settings: object) -> FastAPI:
    app = create_app(
        NoModel(),  # type: ignore[arg-type]
        Settings(**settings),  # type: ignore[arg-type]
        title="test",
        version="0",
        public_api=public_api,
    )

    @app.post("/work")
    async def work() -> dict[str, bool]:
        return {"worked": True}

    return app


def call(app: FastAPI, method: str, path: str, headers: dict[str, str]) -> tuple[int, object]:
    async def main() -> tuple[int, object]:
        async with client_for(app) as client:
            response = await client.request(method, path, headers=headers)
            return response.status_code, response.json()

    return asyncio.run(main())


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("sd.example.com", False),
    ],
)
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_allowed_hosts_follow_the_bind_address_and_the_list() -> None:
    assert allowed_hosts(Settings(host="127.0.0.1"), public_api=True) == list(LOOPBACK_HOSTS)
    # Bound to every address with no list: any Host (Services, pod IPs, ingress names).
    assert allowed_hosts(Settings(host="0.0.0.0"), public_api=True) == ["*"]
    listed = Settings(host="0.0.0.0", allowed_hosts="sd.example.com,*.corp.example")
    assert allowed_hosts(listed, public_api=True) == [
        *LOOPBACK_HOSTS,
        "sd.example.com",
        "*.corp.example",
    ]
    # Stages ignore the gateway's list: central calls them by Service name or pod IP.
    assert allowed_hosts(listed, public_api=False) == ["*"]
    assert allowed_hosts(Settings(host="::1"), public_api=False) == list(LOOPBACK_HOSTS)


@pytest.mark.parametrize(
    ("origin", "host", "same"),
    [
        ("http://127.0.0.1:8000", "127.0.0.1:8000", True),
        ("http://LOCALHOST:8000", "localhost:8000", True),
        ("https://sd.example.com", "sd.example.com", True),  # TLS proxy: Host without port
        ("https://sd.example.com", "sd.example.com:443", True),
        ("http://[::1]:8000", "[::1]:8000", True),
        ("http://127.0.0.1:8000", "127.0.0.1:8001", False),
        ("http://localhost:8000", "127.0.0.1:8000", False),
        ("https://sd.example.com", "sd.example.com:80", False),
        ("http://evil.example", "127.0.0.1:8000", False),
        ("null", "127.0.0.1:8000", False),
        ("http://127.0.0.1:8000", None, False),
    ],
)
def test_same_origin_is_the_requests_host_and_port(
    origin: str, host: str | None, same: bool
) -> None:
    assert same_origin(origin, host) is same


def test_host_and_origin_settings_parse_and_refuse_nonsense(monkeypatch) -> None:
    monkeypatch.setenv("SDSERVE_ALLOWED_HOSTS", " SD.example.com, [::1] ,*.corp.example,")
    monkeypatch.setenv("SDSERVE_CORS_ORIGINS", "https://App.example.com/, http://localhost:3000")
    settings = load_settings()
    assert settings.allowed_hosts == ["sd.example.com", "[::1]", "*.corp.example"]
    assert settings.cors_origins == ["https://app.example.com", "http://localhost:3000"]
    for env, value in [
        ("SDSERVE_ALLOWED_HOSTS", "sd.example.com:8000"),
        ("SDSERVE_ALLOWED_HOSTS", "sd.*.com"),
        ("SDSERVE_CORS_ORIGINS", "app.example.com"),
        ("SDSERVE_CORS_ORIGINS", "https://app.example.com/path"),
    ]:
        monkeypatch.setenv(env, value)
        with pytest.raises(ConfigError, match=env):
            load_settings()
        monkeypatch.delenv(env)


def test_internal_token_is_a_list_central_sends_the_first_of() -> None:
    assert Settings().internal_tokens == []
    assert Settings(internal_token=" new , old,").internal_tokens == ["new", "old"]  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="internal_token"):
        Settings(environment="production", weights="embedded", internal_token=" , ")  # type: ignore[arg-type]


def test_a_host_not_allowed_gets_400_in_the_error_body_before_any_work() -> None:
    app = app_for()  # bound to 127.0.0.1 (the default)
    for host in ("evil.example", "evil.example:8000", "10.0.0.5"):
        status, body = call(app, "POST", "/work", {"host": host})
        assert status == 400, body
        assert body["error"]["type"] == "invalid_host"  # type: ignore[index]
        assert body["error"]["param"] == "Host"  # type: ignore[index]
    for host in ("localhost:8000", "127.0.0.1:1234", "[::1]:8000", "LOCALHOST"):
        assert call(app, "POST", "/work", {"host": host}) == (200, {"worked": True}), host


def test_probes_answer_any_host() -> None:
    # The kubelet's Host is the pod IP; Prometheus scrapes pod addresses.
    app = app_for(allowed_hosts="sd.example.com")
    assert call(app, "GET", "/healthz", {"host": "10.1.2.3:8000"})[0] == 200
    assert call(app, "GET", "/readyz", {"host": "10.1.2.3:8000"})[0] == 503  # not loaded
    assert call(app, "GET", "/v1/info", {"host": "10.1.2.3:8000"})[0] == 400
    assert call(app, "GET", "/v1/info", {"host": "sd.example.com"})[0] == 200


def test_any_host_when_bound_to_all_addresses_says_so(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="shared.browsers"):
        app = app_for(host="0.0.0.0")
    assert "DNS rebinding" in caplog.text and "SDSERVE_ALLOWED_HOSTS" in caplog.text
    assert call(app, "POST", "/work", {"host": "central.sdserve.svc:8000"})[0] == 200
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="shared.browsers"):
        app_for(host="0.0.0.0", allowed_hosts="*")  # chosen: no warning
    assert not caplog.text


def test_a_stage_refuses_every_origin() -> None:
    app = app_for(public_api=False, cors_origins="http://localhost:3000")
    for origin in ("http://localhost:8000", "http://localhost:3000", "http://evil.example"):
        status, body = call(app, "POST", "/work", {"host": "localhost:8000", "origin": origin})
        assert status == 403 and body["error"]["type"] == "forbidden", body  # type: ignore[index]
    assert call(app, "POST", "/work", {"host": "localhost:8000"})[0] == 200
