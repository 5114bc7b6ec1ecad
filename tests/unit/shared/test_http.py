"""The app factory: lifecycle hooks and where /metrics is served."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx
from fastapi.testclient import TestClient

from shared.config import Settings
from shared.http import create_app
from shared.metrics import BatchingSource
from shared.service_process import free_port


class Nothing:
    """A part with no model."""

    name = "nothing"

    def load(self) -> None: ...

    def describe(self) -> Mapping[str, Any]:
        return {}

    def batching_sources(self) -> list[BatchingSource]:
        return []

    def close(self) -> None: ...


def test_startup_and_shutdown_hooks_run_with_the_lifespan() -> None:
    app = create_app(Nothing(), Settings(), title="t", version="0")
    calls: list[str] = []

    async def started() -> None:
        calls.append("started")

    app.router.on_startup.append(started)
    app.router.on_shutdown.append(lambda: calls.append("stopped"))
    with TestClient(app):
        assert calls == ["started"]
    assert calls == ["started", "stopped"]


def test_metrics_can_have_a_port_of_their_own() -> None:
    port = free_port()
    app = create_app(Nothing(), Settings(metrics_port=port), title="t", version="0")
    with TestClient(app) as client:
        assert client.get("/metrics").status_code == 404  # not on the main port
        scraped = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert scraped.status_code == 200 and "sdserve_http_requests" in scraped.text
    # Stopped with the app.
    try:
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
        stopped = False
    except httpx.HTTPError:
        stopped = True
    assert stopped
