"""The one remote stage: an httpx client of any stage service, driven by its contract.

Requests are encoded and answers decoded from the operation's declaration (query
parameters from its `params` model, `.npz` members from its tensor fields), so this
client has no per-stage code. Every call goes through one send path: refused
connections are retried (they never reached the stage), transport errors and HTTP error
bodies become the shared error types naming the stage, and a 503's Retry-After is kept.
"""

from __future__ import annotations

import json
import time
from typing import Any, TypeVar

import httpx
import numpy as np
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from shared.batching import Timing
from shared.config import Settings
from shared.errors import (
    QueueFull,
    SdserveError,
    UpstreamBadResponse,
    UpstreamTimeout,
    UpstreamUnavailable,
    error_from_body,
)
from shared.families.base import FamilySpec
from shared.logs import REQUEST_ID_HEADER, current_request_id
from shared.pipeline.contract import Operation, StageContract, from_arrays, to_arrays
from shared.pipeline.stage import Progress
from shared.progress import (
    ERROR,
    PREVIEW,
    PROGRESS,
    STREAM_MEDIA_TYPE,
    TIMING_MEMBER,
    FrameReader,
    StreamError,
    read_json_frame,
    read_preview,
    read_progress,
)
from shared.wire import MEDIA_TYPE, TensorSpec, decode_npz, encode_npz

Req = TypeVar("Req")
Res = TypeVar("Res")

# A connection that was refused never reached the stage, so retrying it is always safe.
CONNECT_ATTEMPTS = 3


def timing_from_headers(headers: httpx.Headers) -> Timing | None:
    try:
        return Timing(float(headers["x-queue-ms"]), float(headers["x-compute-ms"]))
    except (KeyError, ValueError):
        return None


async def _send_request_id(request: httpx.Request) -> None:
    """Carry the gateway request's id to the stage, so its log lines share it."""
    request_id = current_request_id()
    if request_id:
        request.headers[REQUEST_ID_HEADER] = request_id


class _BadPayload(Exception):
    """An answer that parsed but does not hold what it should."""


class RemoteStage:
    """A stage service at `base_url`: pooled connections, explicit timeouts."""

    location = "remote"

    def __init__(
        self, contract: StageContract, base_url: str, settings: Settings, family: FamilySpec
    ) -> None:
        self.contract = contract
        self.label = contract.label
        self.base_url = base_url.rstrip("/")
        self.settings = settings
        self.family = family
        headers = {}
        if settings.internal_token is not None:
            headers["Authorization"] = f"Bearer {settings.internal_token.get_secret_value()}"
        self.client = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(settings.read_timeout_s, connect=settings.connect_timeout_s),
            headers=headers,
            # Idle connections are dropped before uvicorn's 5 s keep-alive closes them,
            # so a request never races the server closing its connection.
            limits=httpx.Limits(
                max_connections=64, max_keepalive_connections=16, keepalive_expiry=2.0
            ),
            event_hooks={"request": [_send_request_id]},
        )
        # Until when this stage is known to be full (the Retry-After of its last 503).
        self._full_until = 0.0

    # ---------------------------------------------------------------- lifecycle

    def load(self) -> None:
        """Nothing to load here: the service loads its own models."""

    def warm(self) -> None:
        """Nothing to warm here: the service warms before it says it is ready."""

    async def ready(self) -> tuple[bool, str]:
        try:
            response = await self.client.get("/readyz", timeout=self.settings.connect_timeout_s)
        except httpx.HTTPError as exc:
            return False, f"unreachable at {self.base_url} ({exc.__class__.__name__})"
        if response.status_code == 200:
            return True, "ready"
        return False, f"not ready (HTTP {response.status_code})"

    async def describe(self) -> dict[str, Any]:
        try:
            response = await self.client.get("/v1/info", timeout=self.settings.connect_timeout_s)
            info = dict(response.json())
        except (httpx.HTTPError, ValueError) as exc:
            info = {"error": f"{exc.__class__.__name__}"}
        return {"url": self.base_url, **info}

    def admit(self) -> None:
        wait = self._full_until - time.monotonic()
        if wait > 0:
            raise QueueFull(
                f"{self.label} stage is full (it refused a request just now)",
                retry_after_s=max(1, round(wait)),
            )

    async def close(self) -> None:
        await self.client.aclose()

    # ---------------------------------------------------------------- calls

    async def run(
        self, op: Operation[Req, Res], request: Req, progress: Progress | None = None
    ) -> Res:
        route = op.route_for(request)
        query: dict[str, Any] = {}
        params = getattr(request, "params", None) if op.params is not None else None
        if params is not None:
            query.update(params.model_dump(exclude_none=True))
        if op.json_body:
            content = json.dumps(request.model_dump()).encode()  # type: ignore[attr-defined]
            content_type = "application/json"
        else:
            content, content_type = encode_npz(to_arrays(request)), MEDIA_TYPE
        streamed = op.streams and progress is not None
        if streamed and progress is not None:
            query["stream"] = "true"
            if progress.on_preview is not None and progress.preview_every > 0:
                query["preview_every"] = progress.preview_every
        http_request = self.client.build_request(
            "POST", route.path, params=query, content=content,
            headers={"content-type": content_type},
        )  # fmt: skip
        response = await self._send(http_request, stream=streamed)
        try:
            if streamed and progress is not None:
                return await self._read_stream(op, request, response, progress)
            return self._result(
                op, request, response.content, timing_from_headers(response.headers)
            )
        except _BadPayload as exc:
            raise UpstreamBadResponse(f"{self.label} stage sent a bad answer: {exc}") from None
        finally:
            await response.aclose()

    async def _send(self, request: httpx.Request, *, stream: bool) -> httpx.Response:
        """Send with retries on refused connections; map every failure to our errors."""
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(CONNECT_ATTEMPTS),
                wait=wait_exponential(multiplier=0.1, max=1.0),
                retry=retry_if_exception_type((httpx.ConnectError, httpx.ConnectTimeout)),
                reraise=True,
            ):
                with attempt:
                    response = await self.client.send(request, stream=stream)
        except BaseException as exc:
            raise self._transport_error(exc) from None
        if response.status_code >= 400:
            await response.aread()
            await response.aclose()
            raise self._http_error(response)
        return response

    def _transport_error(self, exc: BaseException) -> BaseException:
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            return UpstreamUnavailable(f"{self.label} stage at {self.base_url} is unreachable")
        if isinstance(exc, httpx.TimeoutException):
            return UpstreamTimeout(
                f"{self.label} stage at {self.base_url} did not answer within "
                f"{self.settings.read_timeout_s:g}s"
            )
        if isinstance(exc, httpx.TransportError):
            return UpstreamUnavailable(
                f"{self.label} stage at {self.base_url} dropped the connection "
                f"({exc.__class__.__name__})"
            )
        return exc

    def _http_error(self, response: httpx.Response) -> SdserveError:
        try:
            body = response.json()
        except ValueError:
            body = None
        error = error_from_body(response.status_code, body, stage=self.label)
        if isinstance(error, QueueFull):
            try:
                error.retry_after_s = max(1, int(response.headers.get("retry-after", "1")))
            except ValueError:
                error.retry_after_s = 1
            self._full_until = time.monotonic() + error.retry_after_s
        return error

    def _result(
        self, op: Operation[Req, Res], request: Req, body: bytes, timing: Timing | None,
        extra: dict[str, TensorSpec] | None = None,
    ) -> Res:  # fmt: skip
        specs = {**op.result_specs(self.family), **(extra or {})}
        try:
            arrays = decode_npz(body, specs, max_bytes=self.settings.max_body_bytes)
        except SdserveError as exc:
            raise _BadPayload(str(exc)) from None
        missing = [name for name in op.result_specs(self.family) if name not in arrays]
        if missing:
            raise _BadPayload(f"missing {', '.join(missing)}")
        rows = op.rows(request)
        for name, array in arrays.items():
            if name in specs and name not in (extra or {}) and len(array) != rows:
                raise _BadPayload(f"{name} has {len(array)} rows of {rows}")
        if timing is None and extra and TIMING_MEMBER in arrays:
            queue_ms, compute_ms = (float(v) for v in arrays[TIMING_MEMBER])
            timing = Timing(queue_ms, compute_ms)
        return from_arrays(op.result, arrays, timing=timing)

    async def _read_stream(
        self, op: Operation[Req, Res], request: Req, response: httpx.Response, progress: Progress
    ) -> Res:
        """Read progress frames as the service sends them; the last frame is the answer.

        Cancelling the caller closes the stream, and the service frees the rows.
        """
        if response.headers.get("content-type", "").split(";")[0].strip() != STREAM_MEDIA_TYPE:
            raise UpstreamBadResponse(f"{self.label} stage did not answer with a stream")
        reader = FrameReader(self.settings.max_body_bytes)
        try:
            async for chunk in response.aiter_raw():
                for kind, payload in reader.feed(chunk):
                    if kind == PROGRESS:
                        if progress.on_step is not None:
                            progress.on_step(*read_progress(payload))
                    elif kind == PREVIEW:
                        if progress.on_preview is not None:
                            progress.on_preview(*self._preview(payload))
                    elif kind == ERROR:
                        error = read_json_frame(payload)
                        status = error.get("status")
                        status = status if isinstance(status, int) else 502
                        raise error_from_body(status, error, stage=self.label)
                    else:
                        extra = {TIMING_MEMBER: TensorSpec("float64", (2,))}
                        return self._result(op, request, payload, None, extra)
        except StreamError as exc:
            raise _BadPayload(f"bad stream: {exc}") from None
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None
        raise UpstreamBadResponse(f"{self.label} stage ended its stream without a result")

    def _preview(self, payload: bytes) -> tuple[int, int, np.ndarray]:
        try:
            return read_preview(payload, max_bytes=self.settings.max_body_bytes)
        except SdserveError as exc:
            raise _BadPayload(str(exc)) from None
