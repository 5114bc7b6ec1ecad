"""The ASGI guards every part's app puts in front of its routes: draining, API keys and
what each key holds, body sizes; and the one error response they (and the error
handlers in shared.http) answer with."""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import logging
from collections.abc import Callable, Mapping
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
            await send_error(send, ShuttingDown("shutting down; retry on another replica"), scope)
            return
        await self.app(scope, receive, send)


# Open on a protected gateway: probes, metrics, docs and the web page's static files.
_OPEN_PATHS = ("/healthz", "/readyz", "/metrics", "/docs", "/redoc", "/openapi.json")


def presented_keys(header: str) -> list[bytes]:
    """What an `Authorization` header may carry as an API key: a bearer token, or HTTP
    basic auth (what AUTOMATIC1111 clients send for `--api-auth user:pass`), whose
    password may be the key, or "user:password" as a whole. Empty when neither."""
    scheme, _, value = header.partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer":
        return [value.encode()] if value else []
    if scheme.lower() != "basic" or not value:
        return []
    try:
        decoded = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return []
    _, colon, password = decoded.partition(b":")
    if not colon:
        return []
    return [key for key in (password, decoded) if key]


class ApiKeyGuard:
    """An API key on the public API (`Authorization: Bearer <key>`, or HTTP basic auth
    with the key as password or as "user:password"), and what each key may hold at once.

    Keys are compared in constant time against every configured key; only a digest of
    the key names its slots, so keys never sit in memory as dict keys. A request that
    runs a model holds a `run` slot while it runs, an open job event stream a `stream`
    slot; `POST /v1/jobs` takes none here but hands the digest to the route, and the job
    then holds a `run` slot until it ends (so do the AUTOMATIC1111 routes under /sdapi/,
    which run their work as jobs). Slots are counted in `slots` (the job store: across
    gateway replicas when that is Redis); if it cannot be reached, requests are counted
    in this process rather than refused.
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
        # (POST), reads someone's job or progress, or shows the stages (internal
        # addresses, weight paths, and a call to each) does need a key.
        return scope.get("method") != "GET" or path.startswith(
            ("/v1/jobs", "/v1/stages", "/sdapi/")
        )

    @staticmethod
    def _pool(scope: Scope) -> Pool | None:
        """The pool a request takes a slot of while it runs, if any."""
        method, path = scope.get("method"), str(scope.get("path", ""))
        if method == "GET":
            return "stream" if path.endswith("/events") else None
        # Cancelling (and interrupting) must work at the limit; a job takes its slot in
        # the route, and the AUTOMATIC1111 routes run theirs as jobs.
        if method == "DELETE" or path == "/v1/jobs" or path.startswith("/sdapi/"):
            return None
        return "run"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._protected(scope):
            await self.app(scope, receive, send)
            return
        header = dict(scope.get("headers") or []).get(b"authorization", b"")
        presented = presented_keys(header.decode("latin-1"))
        if not presented:
            await send_error(
                send,
                Unauthorized(
                    "an API key is required (Authorization: Bearer <key>, or HTTP basic "
                    "auth with the key as password)"
                ),
                scope,
            )
            return
        # Check every key (no early exit), so timing does not tell which prefix matched.
        matched = [
            given for given in presented for key in self.keys if hmac.compare_digest(given, key)
        ]
        if not matched:
            await send_error(send, Forbidden("unknown API key"), scope)
            return
        slot = hashlib.sha256(matched[0]).hexdigest()
        scope.setdefault("state", {})["api_key_slot"] = slot
        pool = self._pool(scope)
        if pool is None:
            await self.app(scope, receive, send)
            return
        try:
            slots, held = await self._acquire(pool, slot)
        except SdserveError as exc:
            await send_error(send, exc, scope)
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
            await send_error(send, PayloadTooLarge(self._message(limit), param="body"), scope)
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


async def send_error(send: Send, error: SdserveError, scope: Scope | None = None) -> None:
    """Answer `error` from ASGI middleware (before any route runs), as error_response
    renders it for the request's path."""
    response = error_response(error, scope)
    await send(
        {
            "type": "http.response.start",
            "status": response.status_code,
            "headers": response.raw_headers,
        }
    )
    await send({"type": "http.response.body", "body": response.body})


# Renders an error in the body shape of another API the app speaks (one per path prefix).
ErrorDialect = Callable[[SdserveError], JSONResponse]


def error_response(error: SdserveError, scope: Scope | None = None) -> JSONResponse:
    """The one place a domain error becomes an HTTP response: its status and headers
    (shared.errors), in our body `{"error": {"type", "message", "param"?}}`; or, under a
    path prefix the app lists in `app.state.error_dialects` (the gateway's /sdapi/, say),
    in that API's own shape."""
    dialect = _dialect(scope)
    if dialect is not None:
        return dialect(error)
    return JSONResponse(
        error_body(error.error_type, error.message, error.param),
        status_code=http_status_for(error),
        headers=error.headers(),
    )


def _dialect(scope: Scope | None) -> ErrorDialect | None:
    if scope is None:
        return None
    state = getattr(scope.get("app"), "state", None)
    path = str(scope.get("path", ""))
    for prefix, dialect in getattr(state, "error_dialects", ()):
        if path.startswith(prefix):
            return dialect
    return None
