"""The one remote stage: a client of any stage service's replicas, driven by its contract.

Requests are encoded and answers decoded from the operation's declaration (query
parameters from its `params` model, `.npz` members from its tensor fields), so this
client has no per-stage code. Each call goes to the least-loaded replica of the stage's
pool (shared.pipeline.pool) through one send path. A call that did no work (connection
refused, 503 full / draining / loading) goes to another replica; so does one whose
replica died mid-way: every operation is a function of its request (diffusion's seed is
drawn by the chain before the call), so running it again elsewhere gives the same
result. Retries are bounded in attempts and time, never follow a cancelled call, and are
counted per reason. Errors become the shared error types naming the stage; a 503's
Retry-After is kept.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import numpy as np

from shared.batching import Timing
from shared.config import Settings
from shared.errors import (
    ModelNotReady,
    QueueFull,
    SdserveError,
    ShuttingDown,
    UpstreamBadResponse,
    UpstreamTimeout,
    UpstreamUnavailable,
    error_from_body,
)
from shared.families.base import FamilySpec
from shared.pipeline.contract import Operation, StageContract, from_arrays, to_arrays
from shared.pipeline.pool import Replica, ReplicaPool
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

log = logging.getLogger(__name__)


def timing_from_headers(headers: httpx.Headers) -> Timing | None:
    try:
        return Timing(float(headers["x-queue-ms"]), float(headers["x-compute-ms"]))
    except (KeyError, ValueError):
        return None


class _BadPayload(Exception):
    """An answer that parsed but does not hold what it should."""


@dataclass(frozen=True)
class _Call:
    """One operation call, encoded once and sent to whichever replica takes it."""

    path: str
    query: dict[str, Any]
    content: bytes
    content_type: str
    streamed: bool


class _Retry(Exception):
    """A call another replica may take: `reason` for the metrics, `error` if none does."""

    def __init__(self, reason: str, error: SdserveError) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error = error


class RemoteStage:
    """A stage service's replicas (`urls`: comma-separated base URLs or a name that
    resolves to several addresses)."""

    location = "remote"

    def __init__(
        self, contract: StageContract, urls: str, settings: Settings, family: FamilySpec
    ) -> None:
        self.contract = contract
        self.label = contract.label
        self.base_url = urls
        self.settings = settings
        self.family = family
        headers = {}
        if settings.internal_tokens:  # the first: the others are accepted while it rotates
            headers["Authorization"] = f"Bearer {settings.internal_tokens[0]}"
        self.pool = ReplicaPool(contract.label, urls, settings, headers)

    # ---------------------------------------------------------------- lifecycle

    def load(self) -> None:
        """Nothing to load here: the services load their own models."""

    def warm(self) -> None:
        """Nothing to warm here: a service warms before it says it is ready."""

    async def ready(self) -> tuple[bool, str]:
        """Ready when one replica is; a replica that is not is left alone for a while."""
        await self.pool.refresh()
        replicas = list(self.pool.replicas.values())
        results = await asyncio.gather(*(self._replica_ready(r) for r in replicas))
        ready = sum(ok for ok, _ in results)
        if len(replicas) == 1:
            return results[0]
        if ready:
            return True, f"ready ({ready} of {len(replicas)} replicas)"
        return False, "no replica ready: " + "; ".join(why for _, why in results)

    async def _replica_ready(self, replica: Replica) -> tuple[bool, str]:
        try:
            response = await replica.client.get("/readyz", timeout=self.settings.connect_timeout_s)
        except httpx.HTTPError as exc:
            replica.went_down()
            log.info("%s stage replica %s not ready: %r", self.label, replica.url, exc)
            return False, f"unreachable ({exc.__class__.__name__})"
        replica.answered(response.headers)
        if response.status_code == 200:
            replica.ready_again()
            return True, "ready"
        replica.skip("loading", self.settings.connect_timeout_s)
        return False, f"not ready (HTTP {response.status_code})"

    async def describe(self) -> dict[str, Any]:
        await self.pool.refresh()
        replicas = list(self.pool.replicas.values())
        info: dict[str, Any] = {}
        for replica in replicas:  # what the first replica that answers says of itself
            try:
                response = await replica.client.get(
                    "/v1/info", timeout=self.settings.connect_timeout_s
                )
                info = dict(response.json())
                break
            except (httpx.HTTPError, ValueError) as exc:
                info = {"error": f"{exc.__class__.__name__}"}
        return {"url": self.base_url, **info, "replicas": self.pool.describe()}

    def admit(self) -> None:
        self.pool.admit()

    async def close(self) -> None:
        await self.pool.close()

    # ---------------------------------------------------------------- calls

    async def run(
        self, op: Operation[Req, Res], request: Req, progress: Progress | None = None
    ) -> Res:
        await self.pool.refresh()
        call = self._encode(op, request, progress)
        started, tried = time.monotonic(), set[str]()
        last: _Retry | None = None
        for attempt in range(1, self.settings.stage_attempts + 1):
            replica = await self._next_replica(tried, last)
            tried.add(replica.url)
            replica.in_flight += 1
            try:
                result = await self._run_on(replica, op, request, call, progress)
                replica.served += 1
                return result
            except _Retry as retry:
                last = retry
                self.pool.retries[retry.reason] += 1
                out_of_time = time.monotonic() - started > self.settings.read_timeout_s
                if attempt == self.settings.stage_attempts or out_of_time:
                    raise retry.error from None
                log.warning(
                    "%s call to %s failed (%s); trying again on another replica",
                    self.label,
                    replica.url,
                    retry.reason,
                )
            finally:
                replica.in_flight -= 1
        raise AssertionError("unreachable")  # the loop returns or raises

    async def _next_replica(self, tried: set[str], last: _Retry | None) -> Replica:
        """The least-loaded untried replica; when every one was tried and the last failure
        was a replica being down or gone, the first to come back after a short wait."""
        try:
            return self.pool.pick(tried)
        except (QueueFull, UpstreamUnavailable) as none_left:
            if last is None or last.reason not in ("connect", "died"):
                error = last.error if last and not isinstance(none_left, QueueFull) else none_left
                raise error from None
            now = time.monotonic()
            wait = min(r.skip_until for r in self.pool.replicas.values()) - now
            await asyncio.sleep(max(0.0, min(wait, 1.0)))
            tried.clear()
            try:
                return self.pool.pick(tried)
            except (QueueFull, UpstreamUnavailable):
                raise last.error from None

    def _encode(self, op: Operation[Any, Any], request: Any, progress: Progress | None) -> _Call:
        route = op.route_for(request)
        query: dict[str, Any] = {}
        params = getattr(request, "params", None) if op.params is not None else None
        if params is not None:
            query.update(params.model_dump(exclude_none=True))
        if op.json_body:
            content = json.dumps(request.model_dump()).encode()
            content_type = "application/json"
        else:
            content, content_type = encode_npz(to_arrays(request)), MEDIA_TYPE
        streamed = op.streams and progress is not None
        if streamed and progress is not None:
            query["stream"] = "true"
            if progress.on_preview is not None and progress.preview_every > 0:
                query["preview_every"] = progress.preview_every
        return _Call(route.path, query, content, content_type, streamed)

    async def _run_on(
        self,
        replica: Replica,
        op: Operation[Req, Res],
        request: Req,
        call: _Call,
        progress: Progress | None,
    ) -> Res:
        response = await self._send(replica, call)
        try:
            if call.streamed and progress is not None:
                return await self._read_stream(replica, op, request, response, progress)
            timing = timing_from_headers(response.headers)
            return self._result(op, request, response.content, timing)
        except _BadPayload as exc:
            raise UpstreamBadResponse(f"{self.label} stage sent a bad answer: {exc}") from None
        finally:
            await response.aclose()

    async def _send(self, replica: Replica, call: _Call) -> httpx.Response:
        """One attempt on one replica; what failed before any work becomes a _Retry."""
        request = replica.client.build_request(
            "POST", call.path, params=call.query, content=call.content,
            headers={"content-type": call.content_type},
        )  # fmt: skip
        try:
            response = await replica.client.send(request, stream=call.streamed)
            if not call.streamed:
                await response.aread()
        except (httpx.ConnectError, httpx.ConnectTimeout):
            replica.went_down()
            log.warning("%s stage replica %s is unreachable", self.label, replica.url)
            # Clients learn which stage, never its internal address (that is in the log).
            error = UpstreamUnavailable(f"{self.label} stage is unreachable")
            raise _Retry("connect", error) from None
        except httpx.TimeoutException:
            raise self._timed_out(replica) from None
        except httpx.TransportError as exc:
            raise self._died(replica, exc) from None
        replica.answered(response.headers)
        if response.status_code >= 400:
            await response.aread()
            await response.aclose()
            raise self._http_error(replica, response)
        return response

    def _timed_out(self, replica: Replica) -> UpstreamTimeout:
        """Nothing for the read timeout: not retried (the work may still be running)."""
        log.warning("%s stage replica %s timed out", self.label, replica.url)
        return UpstreamTimeout(
            f"{self.label} stage sent nothing for {self.settings.read_timeout_s:g}s"
        )

    def _died(self, replica: Replica, exc: Exception) -> _Retry:
        """The replica went away mid-call (reset, closed): another one runs it again."""
        replica.went_down()
        log.warning("%s stage replica %s dropped the connection: %r", self.label, replica.url, exc)
        error = UpstreamUnavailable(
            f"{self.label} stage dropped the connection ({exc.__class__.__name__})"
        )
        return _Retry("died", error)

    def _http_error(self, replica: Replica, response: httpx.Response) -> Exception:
        try:
            body = response.json()
        except ValueError:
            body = None
        error = error_from_body(response.status_code, body, stage=self.label)
        try:
            retry_after = max(1, int(response.headers.get("retry-after", "1")))
        except ValueError:
            retry_after = 1
        if isinstance(error, QueueFull):
            error.retry_after_s = retry_after
            replica.skip("full", retry_after)
            return _Retry("full", error)
        if isinstance(error, ShuttingDown):
            replica.skip("draining", max(retry_after, 5))
            return _Retry("draining", error)
        if isinstance(error, ModelNotReady):
            replica.skip("loading", retry_after)
            return _Retry("loading", error)
        return error

    def _result(
        self, op: Operation[Req, Res], request: Req, body: bytes, timing: Timing | None,
        extra: dict[str, TensorSpec] | None = None,
    ) -> Res:  # fmt: skip
        declared = op.result_specs(self.family)
        try:  # refuses missing and unexpected members too
            arrays = decode_npz(
                body, {**declared, **(extra or {})}, max_bytes=self.settings.max_body_bytes
            )
        except SdserveError as exc:
            raise _BadPayload(str(exc)) from None
        rows = op.rows(request)
        for name in declared:
            if len(arrays[name]) != rows:
                raise _BadPayload(f"{name} has {len(arrays[name])} rows of {rows}")
        if timing is None and extra and TIMING_MEMBER in arrays:
            queue_ms, compute_ms = (float(v) for v in arrays[TIMING_MEMBER])
            timing = Timing(queue_ms, compute_ms)
        return from_arrays(op.result, arrays, timing=timing)

    async def _read_stream(
        self,
        replica: Replica,
        op: Operation[Req, Res],
        request: Req,
        response: httpx.Response,
        progress: Progress,
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
        except httpx.TimeoutException:
            raise self._timed_out(replica) from None
        except httpx.TransportError as exc:
            raise self._died(replica, exc) from None
        # Cut before its last frame: the replica went away mid-way.
        raise self._died(replica, ConnectionError("stream ended without a result"))

    def _preview(self, payload: bytes) -> tuple[int, int, np.ndarray]:
        try:
            return read_preview(payload, max_bytes=self.settings.max_body_bytes)
        except SdserveError as exc:
            raise _BadPayload(str(exc)) from None
