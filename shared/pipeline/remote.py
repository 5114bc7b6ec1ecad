"""httpx clients of the stage services (the remote stages)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx
import numpy as np
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from shared.batching import ProgressCallback, Timing
from shared.config import Settings
from shared.errors import (
    SdserveError,
    UpstreamBadResponse,
    UpstreamTimeout,
    UpstreamUnavailable,
    error_from_body,
)
from shared.families import get_family
from shared.logs import REQUEST_ID_HEADER, current_request_id
from shared.pipeline.types import (
    DecodeResult,
    DenoiseParams,
    DenoiseResult,
    EncodedPrompts,
    EncodeImageResult,
)
from shared.progress import (
    ERROR,
    PREVIEW,
    PROGRESS,
    STREAM_MEDIA_TYPE,
    FrameReader,
    PreviewCallback,
    StreamError,
    read_json_frame,
    read_preview,
    read_progress,
    result_spec,
)
from shared.wire import MEDIA_TYPE, TensorSpec, decode_npz, encode_npz

# A connection that was refused never reached the stage, so retrying it is always safe.
_CONNECT_RETRIES = 3


def _timing_from_headers(headers: httpx.Headers) -> Timing | None:
    try:
        return Timing(float(headers["x-queue-ms"]), float(headers["x-compute-ms"]))
    except (KeyError, ValueError):
        return None


async def _send_request_id(request: httpx.Request) -> None:
    """Carry the gateway request's id to the stage, so its log lines share it."""
    request_id = current_request_id()
    if request_id:
        request.headers[REQUEST_ID_HEADER] = request_id


class RemoteStage:
    """An httpx client of one stage service: pooled, with explicit timeouts."""

    def __init__(self, stage: str, base_url: str, settings: Settings) -> None:
        self.stage = stage
        self.base_url = base_url.rstrip("/")
        self.settings = settings
        headers = {}
        if settings.internal_token is not None:
            headers["Authorization"] = f"Bearer {settings.internal_token.get_secret_value()}"
        self.timeout = httpx.Timeout(settings.read_timeout_s, connect=settings.connect_timeout_s)
        self.client = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=self.timeout,
            headers=headers,
            # Idle connections are dropped before uvicorn's 5 s keep-alive closes them,
            # so a request never races the server closing its connection.
            limits=httpx.Limits(
                max_connections=64, max_keepalive_connections=16, keepalive_expiry=2.0
            ),
            event_hooks={"request": [_send_request_id]},
        )

    async def post(self, path: str, **kwargs: Any) -> httpx.Response:
        """POST with retries on connection failures only; errors name the stage."""
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(_CONNECT_RETRIES),
                wait=wait_exponential(multiplier=0.1, max=1.0),
                retry=retry_if_exception_type((httpx.ConnectError, httpx.ConnectTimeout)),
                reraise=True,
            ):
                with attempt:
                    response = await self.client.post(path, **kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout):
            raise UpstreamUnavailable(
                f"{self.stage} stage at {self.base_url} is unreachable"
            ) from None
        except httpx.TimeoutException:
            raise UpstreamTimeout(
                f"{self.stage} stage at {self.base_url} did not answer within "
                f"{self.settings.read_timeout_s:g}s"
            ) from None
        except httpx.TransportError as exc:
            raise UpstreamUnavailable(
                f"{self.stage} stage at {self.base_url} dropped the connection "
                f"({exc.__class__.__name__})"
            ) from None
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = None
            raise error_from_body(response.status_code, body, stage=self.stage)
        return response

    def read_npz(self, response: httpx.Response, spec: Mapping[str, TensorSpec]) -> dict[str, Any]:
        if response.headers.get("content-type", "").split(";")[0] != MEDIA_TYPE:
            raise UpstreamBadResponse(f"{self.stage} stage answered without an npz body")
        try:
            return decode_npz(response.content, spec, max_bytes=self.settings.max_body_bytes)
        except SdserveError as exc:
            raise UpstreamBadResponse(f"{self.stage} stage sent a bad payload: {exc}") from None

    async def ready(self) -> tuple[bool, str]:
        try:
            response = await self.client.get("/readyz", timeout=self.settings.connect_timeout_s)
        except httpx.HTTPError as exc:
            return False, f"unreachable at {self.base_url} ({exc.__class__.__name__})"
        if response.status_code == 200:
            return True, "ready"
        return False, f"not ready (HTTP {response.status_code})"

    async def info(self) -> dict[str, Any]:
        try:
            response = await self.client.get("/v1/info", timeout=self.settings.connect_timeout_s)
            return dict(response.json())
        except (httpx.HTTPError, ValueError) as exc:
            return {"error": f"{exc.__class__.__name__}"}

    async def aclose(self) -> None:
        await self.client.aclose()


class RemoteTextEncoder(RemoteStage):
    def __init__(self, base_url: str, settings: Settings, context_dim: int, max_tokens: int):
        super().__init__("text encoder", base_url, settings)
        context = TensorSpec("float32", (None, max_tokens, context_dim), allow_fp16=True)
        self.spec = {
            "context": context,
            "unconditional_context": context,
            "token_count": TensorSpec("int32", (None,)),
            "truncated": TensorSpec("bool", (None,)),
        }

    async def encode(
        self, prompts: list[str], negative_prompts: list[str | None] | None = None
    ) -> EncodedPrompts:
        body = {"prompts": prompts, "negative_prompts": negative_prompts}
        response = await self.post("/v1/encode", json=body)
        arrays = self.read_npz(response, self.spec)
        return EncodedPrompts(
            context=arrays["context"],
            unconditional_context=arrays["unconditional_context"],
            token_counts=[int(c) for c in arrays["token_count"]],
            truncated=[bool(t) for t in arrays["truncated"]],
            timing=_timing_from_headers(response.headers),
        )


class RemoteDiffusion(RemoteStage):
    def __init__(self, base_url: str, settings: Settings, latent_channels: int):
        super().__init__("diffusion", base_url, settings)
        self.spec = {
            "latent": TensorSpec("float32", (None, None, None, latent_channels), allow_fp16=True)
        }
        self.stream_result_spec = result_spec(latent_channels)

    async def denoise(
        self,
        context: np.ndarray,
        unconditional_context: np.ndarray,
        params: DenoiseParams,
        *,
        init_latent: np.ndarray | None = None,
        mask: np.ndarray | None = None,
        on_step: ProgressCallback | None = None,
        on_preview: PreviewCallback | None = None,
        preview_every: int = 0,
    ) -> DenoiseResult:
        """One POST; with a progress callback, the streamed variant (shared.progress)."""
        query: dict[str, Any] = {
            "width": params.width,
            "height": params.height,
            "steps": params.steps,
            "guidance_scale": params.guidance_scale,
            "n": params.n,
        }
        if params.seed is not None:
            query["seed"] = params.seed
        tensors = {"context": context, "unconditional_context": unconditional_context}
        path = "/v1/denoise"
        if init_latent is not None:
            tensors["init_latent"] = init_latent
            query["strength"] = params.strength
            path = "/v1/img2img"
            if mask is not None:
                tensors["mask"] = mask
                query["num_resamples"] = params.num_resamples
                path = "/v1/inpaint"
        if on_step is not None or on_preview is not None:
            if on_preview is not None and preview_every > 0:
                query["preview_every"] = preview_every
            query["stream"] = "true"
            body = encode_npz(tensors)
            return await self._denoise_streamed(path, query, body, params.n, on_step, on_preview)
        response = await self.post(
            path, params=query, content=encode_npz(tensors), headers={"content-type": MEDIA_TYPE}
        )
        latent = self.read_npz(response, self.spec)["latent"]
        try:
            seeds = [int(s) for s in response.headers["x-seeds"].split(",")]
        except (KeyError, ValueError):
            raise UpstreamBadResponse("diffusion stage answered without X-Seeds") from None
        if len(seeds) != params.n or len(latent) != params.n:
            raise UpstreamBadResponse(f"diffusion stage returned {len(latent)} of {params.n}")
        return DenoiseResult(latent, seeds, _timing_from_headers(response.headers))

    async def _denoise_streamed(
        self,
        path: str,
        query: dict[str, Any],
        body: bytes,
        n: int,
        on_step: ProgressCallback | None,
        on_preview: PreviewCallback | None,
    ) -> DenoiseResult:
        """Read progress frames as the service sends them; the last frame is the answer.

        Cancelling the caller closes the stream, and the service frees the rows.
        """
        reader = FrameReader(self.settings.max_body_bytes)
        try:
            async with self._stream(path, query, body) as response:
                async for chunk in response.aiter_raw():
                    for kind, payload in reader.feed(chunk):
                        if kind == PROGRESS:
                            if on_step is not None:
                                on_step(*read_progress(payload))
                        elif kind == PREVIEW:
                            if on_preview is not None:
                                on_preview(*self._streamed_preview(payload))
                        elif kind == ERROR:
                            error = read_json_frame(payload)
                            status = error.get("status")
                            status = status if isinstance(status, int) else 502
                            raise error_from_body(status, error, stage=self.stage)
                        else:
                            return self._streamed_result(payload, n)
        except (StreamError, _BadPayload) as exc:
            raise UpstreamBadResponse(f"{self.stage} stage sent a bad stream: {exc}") from None
        except httpx.TimeoutException:
            raise UpstreamTimeout(
                f"{self.stage} stage at {self.base_url} sent nothing for "
                f"{self.settings.read_timeout_s:g}s"
            ) from None
        except httpx.TransportError as exc:
            raise UpstreamUnavailable(
                f"{self.stage} stage at {self.base_url} dropped the connection "
                f"({exc.__class__.__name__})"
            ) from None
        raise UpstreamBadResponse(f"{self.stage} stage ended its stream without a result")

    def _streamed_preview(self, payload: bytes) -> tuple[int, int, np.ndarray]:
        try:
            return read_preview(payload, max_bytes=self.settings.max_body_bytes)
        except SdserveError as exc:
            raise _BadPayload(str(exc)) from None

    def _streamed_result(self, payload: bytes, n: int) -> DenoiseResult:
        try:
            arrays = decode_npz(
                payload, self.stream_result_spec, max_bytes=self.settings.max_body_bytes
            )
        except SdserveError as exc:
            raise _BadPayload(str(exc)) from None
        latent, seeds = arrays["latent"], [int(s) for s in arrays["seeds"]]
        if len(seeds) != n or len(latent) != n:
            raise _BadPayload(f"returned {len(latent)} latents and {len(seeds)} seeds of {n}")
        queue_ms, compute_ms = (float(v) for v in arrays["timing_ms"])
        return DenoiseResult(latent, seeds, Timing(queue_ms, compute_ms))

    @asynccontextmanager
    async def _stream(
        self, path: str, query: dict[str, Any], body: bytes
    ) -> AsyncIterator[httpx.Response]:
        """POST for a streamed answer: retries refused connections, maps HTTP errors."""
        request = self.client.build_request(
            "POST", path, params=query, content=body, headers={"content-type": MEDIA_TYPE}
        )
        for attempt in range(_CONNECT_RETRIES):
            try:
                response = await self.client.send(request, stream=True)
                break
            except (httpx.ConnectError, httpx.ConnectTimeout):
                if attempt == _CONNECT_RETRIES - 1:
                    raise UpstreamUnavailable(
                        f"{self.stage} stage at {self.base_url} is unreachable"
                    ) from None
                await asyncio.sleep(min(1.0, 0.1 * 2**attempt))
        try:
            if response.status_code >= 400:
                await response.aread()
                try:
                    error = response.json()
                except ValueError:
                    error = None
                raise error_from_body(response.status_code, error, stage=self.stage)
            media_type = response.headers.get("content-type", "").split(";")[0].strip()
            if media_type != STREAM_MEDIA_TYPE:
                raise UpstreamBadResponse(f"{self.stage} stage did not answer with a stream")
            yield response
        finally:
            await response.aclose()


class _BadPayload(Exception):
    """A streamed frame that parsed but does not hold what it should."""


class RemoteDecoder(RemoteStage):
    def __init__(self, base_url: str, settings: Settings):
        super().__init__("decoder", base_url, settings)
        self.spec = {"images": TensorSpec("uint8", (None, None, None, 3))}
        channels = get_family(settings.model).spec.latent_channels
        self.latent_spec = {
            "latent": TensorSpec("float32", (None, None, None, channels), allow_fp16=True)
        }

    async def decode(self, latent: np.ndarray) -> DecodeResult:
        response = await self.post(
            "/v1/decode",
            content=encode_npz({"latent": latent}),
            headers={"content-type": MEDIA_TYPE},
        )
        images = self.read_npz(response, self.spec)["images"]
        if len(images) != len(latent):
            raise UpstreamBadResponse(f"decoder stage returned {len(images)} of {len(latent)}")
        return DecodeResult(images, _timing_from_headers(response.headers))

    async def encode_image(self, images: np.ndarray) -> EncodeImageResult:
        response = await self.post(
            "/v1/encode-image",
            content=encode_npz({"images": images}),
            headers={"content-type": MEDIA_TYPE},
        )
        latent = self.read_npz(response, self.latent_spec)["latent"]
        if len(latent) != len(images):
            raise UpstreamBadResponse(f"decoder stage encoded {len(latent)} of {len(images)}")
        return EncodeImageResult(latent, _timing_from_headers(response.headers))
