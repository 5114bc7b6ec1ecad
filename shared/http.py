"""The HTTP app factory every part uses: health, readiness, info, errors, body limits.

Models load in a background task started by the lifespan, so `/healthz` answers at once
and `/readyz` says 503 until the models are loaded and warmed. A load failure is logged
and stops the process with a non-zero exit, so a supervisor (or Kubernetes) restarts it.
"""

from __future__ import annotations

import asyncio
import hmac
import importlib.resources
import inspect
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest, start_http_server
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.browsers import install_browser_guards
from shared.config import Settings
from shared.errors import (
    Forbidden,
    InvalidInput,
    SdserveError,
    Unauthorized,
    UnsupportedMediaType,
    error_body,
)
from shared.guards import ApiKeyGuard, BodySizeLimit, DrainGuard, error_response
from shared.key_slots import KeySlots
from shared.logs import RequestIdMiddleware, configure_logging
from shared.metrics import BatchingSource, MetricsMiddleware, ServiceMetrics
from shared.tracing import FreshTraceContext, setup_tracing
from shared.wire import MEDIA_TYPE, TensorSpec, decode_npz

log = logging.getLogger(__name__)

NPZ_REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
    }
}


def npz_responses(description: str) -> dict[int | str, dict[str, Any]]:
    return {
        200: {
            "description": description,
            "content": {MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
        }
    }


class ServiceInfo(BaseModel):
    """`GET /v1/info`: every part says these; the rest is what its service describes."""

    model_config = ConfigDict(extra="allow")

    service: str
    version: str
    ready: bool


class ReadyStatus(BaseModel):
    """`GET /readyz`: "ready", or why not (503), with the stages it calls."""

    status: str
    stages: dict[str, str] | None = None
    error: str | None = None


class Service(Protocol):
    """What the app factory needs from the part it serves."""

    name: str

    def load(self) -> None:
        """Build, load and warm the models (blocking; runs in a thread)."""

    def describe(self) -> Mapping[str, Any]: ...

    def batching_sources(self) -> list[BatchingSource]:
        """The batched models of this part, for /metrics."""

    def close(self) -> None: ...


def _validation_param(error: Mapping[str, Any]) -> str:
    if error.get("type") == "json_invalid":
        return "body"  # its location is a character offset, not a field
    loc = error.get("loc", ())
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def install_error_handlers(app: FastAPI) -> None:
    """The one place domain errors and framework errors become HTTP responses."""

    @app.exception_handler(SdserveError)
    async def _domain(request: Request, exc: SdserveError) -> JSONResponse:
        return error_response(exc, request.scope)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        param = _validation_param(first)
        error = InvalidInput(f"{param}: {first.get('msg')}", param=param)
        return error_response(error, request.scope)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # FastAPI wraps errors raised while it reads a JSON body (our 413) in a 400.
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, SdserveError):
            return error_response(cause, request.scope)
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(
            error_body(kind, str(exc.detail)),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(SdserveError("internal error; see the server log"), request.scope)


def require_internal_token(settings: Settings) -> Callable[[Request], None]:
    """A dependency checking `Authorization: Bearer <token>` against SDSERVE_INTERNAL_TOKEN.

    Any of its comma-separated tokens is accepted, so a token rotates without refusals
    (docs/deploy.md); none set: no check.
    """
    expected = [token.encode() for token in settings.internal_tokens]

    def check(request: Request) -> None:
        if not expected:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("this stage requires its internal token")
        given = token.strip().encode()
        # Every token is compared (no early exit): timing does not tell which one matched.
        if not any([hmac.compare_digest(given, one) for one in expected]):
            raise Forbidden("wrong internal token")

    return check


async def read_npz(
    request: Request, spec: Mapping[str, TensorSpec], settings: Settings
) -> dict[str, Any]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip()
    if content_type != MEDIA_TYPE:
        raise UnsupportedMediaType(f"body must be {MEDIA_TYPE}", param="body")
    body = await request.body()
    return decode_npz(body, spec, max_bytes=settings.max_body_bytes)


T = TypeVar("T")


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it if the client disconnects first.

    Once the body is read, the next ASGI receive blocks until the client goes away, so a
    disconnected client frees its diffusion rows at the next step instead of at the end.
    """
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                task.cancel()
                return

    watcher = asyncio.create_task(watch())
    try:
        return await task
    finally:
        watcher.cancel()


def npz_response(content: bytes, headers: Mapping[str, str] | None = None) -> Response:
    return Response(content=content, media_type=MEDIA_TYPE, headers=dict(headers or {}))


ReadinessCheck = Callable[[], Awaitable[tuple[bool, dict[str, str]]]]


def create_app(
    service: Service,
    settings: Settings,
    *,
    title: str,
    version: str,
    readiness: ReadinessCheck | None = None,
    description: str = "",
    public_api: bool = False,
    info_model: type[ServiceInfo] = ServiceInfo,
    key_slots: KeySlots | None = None,
    body_limits: tuple[int, Mapping[str, int]] | None = None,
) -> FastAPI:
    """The app of one part. `body_limits`: the body cap of every path and those of the
    paths that have their own (default: SDSERVE_MAX_BODY_BYTES for all)."""
    state: dict[str, Any] = {"ready": False, "error": None, "draining": False}

    async def load_in_background() -> None:
        try:
            await asyncio.to_thread(service.load)
        except Exception as exc:
            state["error"] = f"{exc.__class__.__name__}: {exc}"
            log.critical("%s failed to load: %s", service.name, state["error"])
            # Stop serving; `serve` then exits non-zero so a supervisor restarts us.
            server = getattr(app.state, "uvicorn_server", None)
            if server is not None:
                server.should_exit = True
            return
        state["ready"] = True
        described = service.describe()
        metrics.set_info(
            {
                "service": service.name,
                "family": described.get("family", ""),
                "weights": described.get("weights", ""),
            }
        )
        log.info("%s is ready", service.name)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Starlette skips the router's startup and shutdown handlers when an app has a
        # lifespan, so they run here: the parts add theirs to app.router.on_startup and
        # on_shutdown (in order; each awaited if it is a coroutine function).
        for hook in app.router.on_startup:
            await _call(hook)
        task = asyncio.create_task(load_in_background())
        try:
            yield
        finally:
            task.cancel()
            for hook in app.router.on_shutdown:
                try:
                    await _call(hook)
                except Exception:
                    log.exception("shutdown step %s failed", getattr(hook, "__qualname__", hook))
            service.close()

    app = FastAPI(
        title=title,
        version=version,
        lifespan=lifespan,
        description=description,
        docs_url=None,  # served below from local assets, not a CDN
        redoc_url=None,
    )
    serve_docs_offline(app, title)
    app.state.service = service
    app.state.settings = settings
    app.state.load_state = state
    # Called on SIGTERM/SIGINT, on the event loop, as draining begins.
    app.state.drain_hooks = []
    # (path prefix, renderer) of the other APIs' error shapes (shared.guards.error_response).
    app.state.error_dialects = []
    install_error_handlers(app)
    max_body, by_path = body_limits or (settings.max_body_bytes, {})
    app.add_middleware(BodySizeLimit, max_bytes=max_body, by_path=by_path)
    app.add_middleware(DrainGuard, state=state)
    keys = settings.api_key_list() if public_api else []
    if keys:
        app.add_middleware(
            ApiKeyGuard,
            keys=keys,
            max_concurrent=settings.max_concurrent_per_key,
            max_streams=settings.max_streams_per_key,
            slots=key_slots,
        )
    # Before the key check and any work; after the metrics, which count what they refuse.
    install_browser_guards(app, settings, public_api=public_api)
    metrics = ServiceMetrics(service.name, service.batching_sources)
    metrics.hook_batching()
    app.state.metrics = metrics
    # Outermost, so it also counts what the body limit refuses.
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(RequestIdMiddleware)

    if settings.metrics_port is None:

        @app.get(
            "/metrics",
            tags=["health"],
            response_class=Response,
            responses={
                200: {
                    "description": "Prometheus text exposition format.",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        )
        async def prometheus_metrics() -> Response:
            """Prometheus metrics: requests, latency, queue depth, batch sizes, model info."""
            return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    else:
        # Metrics on a port of their own (reachable by the scraper, not the public):
        # the main port has no /metrics then.
        app.router.on_startup.append(lambda: _serve_metrics(app, settings))

    setup_tracing(service.name, app)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """Alive: the process answers (models may still be loading)."""
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["health"],
        response_model=ReadyStatus,
        responses={503: {"model": ReadyStatus, "description": "Not ready yet (or failed)."}},
    )
    async def readyz() -> JSONResponse:
        """Ready: models are loaded and warmed, and any stage it calls is ready (else 503)."""
        body: dict[str, Any] = {}
        ok = bool(state["ready"]) and not state["draining"]
        if readiness is not None:
            stages_ok, body["stages"] = await readiness()
            ok = ok and stages_ok
        if ok:
            return JSONResponse({"status": "ready", **body})
        body["status"] = (
            "failed"
            if state["error"]
            else "loading"
            if not state["ready"]
            else ("waiting for stages")
        )
        if state["error"]:
            body["error"] = state["error"]
        return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})

    @app.get("/v1/info", tags=["health"], response_model=info_model)
    async def info() -> ServiceInfo:
        """What this part serves: model family, weights (random ones say so), sizes."""
        return info_model.model_validate(
            {
                "service": service.name,
                "version": version,
                "ready": state["ready"],
                **service.describe(),
            }
        )

    return app


# Swagger UI and ReDoc as the fastapi-offline package ships them (MIT), so /docs and
# /redoc work without the network.
DOCS_ASSETS = "/docs-assets"


def serve_docs_offline(app: FastAPI, title: str) -> None:
    assets = Path(str(importlib.resources.files("fastapi_offline") / "static"))
    app.mount(DOCS_ASSETS, StaticFiles(directory=assets), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{title} - Swagger UI",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png",
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url,
            title=f"{title} - ReDoc",
            redoc_js_url=f"{DOCS_ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{DOCS_ASSETS}/favicon.png",
            with_google_fonts=False,
        )


def _serve_metrics(app: FastAPI, settings: Settings) -> None:
    assert settings.metrics_port is not None
    server, _ = start_http_server(
        settings.metrics_port, addr=settings.host, registry=app.state.metrics.registry
    )
    log.info("metrics on http://%s:%d/metrics", settings.host, settings.metrics_port)
    app.router.on_shutdown.append(server.shutdown)


async def _call(hook: Callable[[], Any]) -> None:
    outcome = hook()
    if inspect.isawaitable(outcome):
        await outcome


class _DrainingServer(uvicorn.Server):
    """On SIGTERM/SIGINT: refuse new work (503) at once, then let uvicorn finish what is
    in flight within the grace period before it exits."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.sdserve_app = app

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.sdserve_app.state.load_state["draining"] = True
        for hook in self.sdserve_app.state.drain_hooks:
            hook()
        super().handle_exit(sig, frame)


def serve(app: FastAPI, host: str, port: int) -> None:
    """Run the app with uvicorn; exit non-zero if its models failed to load."""
    settings: Settings = app.state.settings
    config = uvicorn.Config(
        FreshTraceContext(app),
        host=host,
        port=port,
        log_level="info",
        access_log=False,  # RequestIdMiddleware logs each request, with its id
        log_config=None,  # keep our JSON handler for uvicorn's own lines
        timeout_graceful_shutdown=settings.shutdown_grace_s,
        timeout_keep_alive=settings.keep_alive_s,
    )
    server = _DrainingServer(config, app)
    app.state.uvicorn_server = server
    server.run()
    if app.state.load_state.get("error"):
        sys.exit(1)


__all__ = ["configure_logging", "create_app", "serve"]
