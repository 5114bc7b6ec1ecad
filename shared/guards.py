"""The ASGI guards every part's app puts in front of its routes: draining, API keys and
what each key holds, body sizes; and the one error response they (and the error
handlers in shared.http) answer with."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
from collections.abc import Mapping
from typing import Any

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.errors import (
    Forbidden,
    JobStoreUnavailable,
    PayloadTooLarge,
    SdserveError,
    ShuttingDown,
    Unauthorized,
    error_body,
    http_status_for,
)
from shared.key_slots import KeySlots, LocalKeySlots, Pool

log = logging.getLogger(__name__)


class DrainGuard:
    """While the process shuts down, new requests get 503 (health checks still answer)."""

    def __init__(self, app: ASGIApp, state: dict[str, Any]) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and self.state.get("draining")
            and scope.get("path") not in ("/healthz", "/readyz", "/metrics")
        ):
            await send_error(send, ShuttingDown("shutting down; retry on another replica"))
            return
        await self.app(scope, receive, send)


# Open on a protected gateway: probes, metrics, docs and the web page's static files.
_OPEN_PATHS = ("/healthz", "/readyz", "/metrics", "/docs", "/redoc", "/openapi.json")


class ApiKeyGuard:
    """`Authorization: Bearer <key>` on the public API, and what each key may hold at once.

    Keys are compared in constant time against every configured key; only a digest of
    the key names its slots, so keys never sit in memory as dict keys. A request that
    runs a model holds a `run` slot while it runs, an open job event stream a `stream`
    slot; `POST /v1/jobs` takes none here but hands the digest to the route, and the job
    then holds a `run` slot until it ends. Slots are counted in `slots` (the job store:
    across gateway replicas when that is Redis); if it cannot be reached, requests are
    counted in this process rather than refused.
    """

    def __init__(
        self,
        app: ASGIApp,
        keys: list[str],
        max_concurrent: int,
        max_streams: int,
        slots: KeySlots | None = None,
    ) -> None:
        self.app = app
        self.keys = [k.encode() for k in keys]
        self.limits: dict[Pool, int] = {"run": max_concurrent, "stream": max_streams}
        self.local = LocalKeySlots()
        self.slots: KeySlots = slots or self.local

    def _protected(self, scope: Scope) -> bool:
        path = str(scope.get("path", ""))
        if path in _OPEN_PATHS or path.startswith("/docs"):
            return False
        # GETs of the page and of /v1/info are harmless; everything that runs a model
        # (POST), reads someone's job, or shows the stages (internal addresses, weight
        # paths, and a call to each) does need a key.
        return scope.get("method") != "GET" or path.startswith(("/v1/jobs", "/v1/stages"))

    @staticmethod
    def _pool(scope: Scope) -> Pool | None:
        """The pool a request takes a slot of while it runs, if any."""
        method, path = scope.get("method"), str(scope.get("path", ""))
        if method == "GET":
            return "stream" if path.endswith("/events") else None
        # Cancelling must work at the limit; a job takes its slot in the route.
        if method == "DELETE" or path == "/v1/jobs":
            return None
        return "run"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._protected(scope):
            await self.app(scope, receive, send)
            return
        header = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, token = header.decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            await send_error(send, Unauthorized("an API key is required (Authorization: Bearer)"))
            return
        given = token.strip().encode()
        # Check every key (no early exit), so timing does not tell which prefix matched.
        matches = [hmac.compare_digest(given, key) for key in self.keys]
        if not any(matches):
            await send_error(send, Forbidden("unknown API key"))
            return
        slot = hashlib.sha256(given).hexdigest()
        scope.setdefault("state", {})["api_key_slot"] = slot
        pool = self._pool(scope)
        if pool is None:
            await self.app(scope, receive, send)
            return
        try:
            slots, held = await self._acquire(pool, slot)
        except SdserveError as exc:
            await send_error(send, exc)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            with contextlib.suppress(JobStoreUnavailable):
                await slots.release_slot(pool, slot, held)

    async def _acquire(self, pool: Pool, slot: str) -> tuple[KeySlots, str]:
        try:
            return self.slots, await self.slots.acquire_slot(pool, slot, self.limits[pool])
        except JobStoreUnavailable:
            if pool == "stream":
                raise  # a job's events live in the store: nothing to stream without it
            log.warning("job store unreachable: counting this key's requests here only")
            return self.local, await self.local.acquire_slot(pool, slot, self.limits[pool])


class BodySizeLimit:
    """Refuse bodies over the cap with 413 before the route reads them into memory.

    The one place body sizes are limited: `max_bytes` for every path, except those named
    in `by_path` (exact paths), which have their own cap.
    """

    def __init__(
        self, app: ASGIApp, max_bytes: int, by_path: Mapping[str, int] | None = None
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.by_path = dict(by_path or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.by_path.get(str(scope.get("path", "")), self.max_bytes)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await send_error(send, PayloadTooLarge(self._message(limit), param="body"))
            return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise PayloadTooLarge(self._message(limit), param="body")
            return message

        await self.app(scope, limited_receive, send)

    @staticmethod
    def _message(limit: int) -> str:
        return f"request body exceeds {limit} bytes"


async def send_error(send: Send, error: SdserveError) -> None:
    """Answer `error` in our one body, from ASGI middleware (before any route runs)."""
    response = error_response(error)
    await send(
        {
            "type": "http.response.start",
            "status": response.status_code,
            "headers": response.raw_headers,
        }
    )
    await send({"type": "http.response.body", "body": response.body})


def error_response(error: SdserveError) -> JSONResponse:
    return JSONResponse(
        error_body(error.error_type, error.message, error.param),
        status_code=http_status_for(error),
        headers=error.headers(),
    )
