"""The chain text encoder -> diffusion -> decoder, each stage local or remote.

Every stage has one interface (`TextEncoderStage`, `DiffusionStage`, `DecoderStage`) with
two implementations: the in-process objects of `shared.stages` (the very ones the stage
services wrap) and the httpx clients below. Settings pick one per stage, so the three
topologies (all-in-one, three endpoints, hybrid) are one code path.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

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
    QueueFull,
    SdserveError,
    UpstreamBadResponse,
    UpstreamTimeout,
    UpstreamUnavailable,
    error_from_body,
)
from shared.families import get_family
from shared.logs import REQUEST_ID_HEADER, current_request_id
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
from shared.sampler import mask_to_latent_grid
from shared.stages import (
    DecodeResult,
    DenoiseParams,
    DenoiseResult,
    EncodedPrompts,
    EncodeImageResult,
    check_denoise_params,
    make_decoder,
    make_diffusion,
    make_text_encoder,
)
from shared.tracing import span
from shared.wire import MEDIA_TYPE, TensorSpec, decode_npz, encode_npz

log = logging.getLogger(__name__)

# A connection that was refused never reached the stage, so retrying it is always safe.
_CONNECT_RETRIES = 3


class TextEncoderStage(Protocol):
    async def encode(
        self, prompts: list[str], negative_prompts: list[str | None] | None = None
    ) -> EncodedPrompts: ...


class DiffusionStage(Protocol):
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
    ) -> DenoiseResult: ...


class DecoderStage(Protocol):
    async def decode(self, latent: np.ndarray) -> DecodeResult: ...

    async def encode_image(self, images: np.ndarray) -> EncodeImageResult: ...


@dataclass(frozen=True)
class StageTiming:
    """Where one stage's share of a request went, in milliseconds."""

    queue_ms: float
    compute_ms: float
    transfer_ms: float

    def as_dict(self) -> dict[str, float]:
        return {
            "queue_ms": round(self.queue_ms, 2),
            "compute_ms": round(self.compute_ms, 2),
            "transfer_ms": round(self.transfer_ms, 2),
        }


def _stage_timing(timing: Timing | None, wall_ms: float) -> StageTiming:
    queue = timing.queue_ms if timing else 0.0
    compute = timing.compute_ms if timing else wall_ms
    return StageTiming(queue, compute, max(0.0, wall_ms - queue - compute))


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


@dataclass(frozen=True)
class GenerationParams:
    prompt: str
    negative_prompt: str | None
    width: int
    height: int
    steps: int
    guidance_scale: float
    seed: int | None
    n: int
    strength: float = 1.0
    num_resamples: int = 1


@dataclass(frozen=True)
class EditInputs:
    """img2img / inpaint inputs, already at the output size."""

    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray | None = None  # (H, W) float32 in [0, 1], 1 = repaint
    mask_blur: int = 0
    keep_unmasked: bool = True  # inpainting: pixels outside the mask are the input's


@dataclass
class GenerationResult:
    images: np.ndarray  # (n, H, W, 3) uint8
    seeds: list[int]
    timings: dict[str, StageTiming] = field(default_factory=dict)
    prompt_truncated: bool = False
    prompt_tokens: int = 0


def overlay_unmasked(images: np.ndarray, original: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Inpainted images with the input's own pixels wherever the mask leaves them alone.

    Outside the mask the latent is the input's exactly, so decoding it only adds the VAE's
    round-trip error (and the repainted cells along the mask's edge spill a few pixels
    past it); what the caller did not mask should come back as it was sent. `mask` is
    (H, W) in [0, 1], 1 = repaint; values in between blend.
    """
    weight = mask[None, :, :, None].astype(np.float32)
    blended = weight * images.astype(np.float32) + (1.0 - weight) * original[None].astype(
        np.float32
    )
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


class Chain:
    """Builds the configured stages and runs requests through them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.family = get_family(settings.model)
        spec = self.family.spec
        self.local: dict[str, Any] = {}
        self.remote: dict[str, RemoteStage] = {}

        self.text_encoder: TextEncoderStage
        self.diffusion: DiffusionStage
        self.decoder: DecoderStage
        if settings.text_encoder_url:
            self.text_encoder = self.remote["text_encoder"] = RemoteTextEncoder(
                settings.text_encoder_url, settings, spec.context_dim, spec.max_tokens
            )
        else:
            self.text_encoder = self.local["text_encoder"] = make_text_encoder(settings)
        if settings.diffusion_url:
            self.diffusion = self.remote["diffusion"] = RemoteDiffusion(
                settings.diffusion_url, settings, spec.latent_channels
            )
        else:
            self.diffusion = self.local["diffusion"] = make_diffusion(settings)
        if settings.decoder_url:
            self.decoder = self.remote["decoder"] = RemoteDecoder(settings.decoder_url, settings)
        else:
            self.decoder = self.local["decoder"] = make_decoder(settings)
        # Until when a remote diffusion stage is known to be full (its last 503).
        self._diffusion_full_until = 0.0

    @property
    def topology(self) -> str:
        if not self.remote:
            return "all-in-one"
        if not self.local:
            return "three-endpoints"
        if set(self.remote) == {"diffusion"}:
            return "hybrid"
        return "custom"

    def load(self) -> None:
        """Load the local stages, then warm them all (blocking).

        Warm-ups come last because building a stage re-seeds TensorFlow, which would
        throw away the traced functions of stages warmed before it (a slow first request).
        """
        built = [(stage, stage.build()) for stage in self.local.values()]
        for stage, models in built:
            stage.warm(models)

    async def readiness(self) -> tuple[bool, dict[str, str]]:
        status: dict[str, str] = {}
        for name, local in self.local.items():
            status[name] = "ready (local)" if local.models is not None else "loading (local)"
        results = await asyncio.gather(*(r.ready() for r in self.remote.values()))
        for (name, _), (_ok, text) in zip(self.remote.items(), results, strict=True):
            status[name] = f"{text} (remote)"
        ok = all(s.startswith("ready") for s in status.values())
        return ok, status

    async def describe_stages(self) -> dict[str, Any]:
        stages: dict[str, Any] = {}
        for name, local in self.local.items():
            stages[name] = {"location": "local", **local.describe()}
        infos = await asyncio.gather(*(r.info() for r in self.remote.values()))
        for (name, remote), info in zip(self.remote.items(), infos, strict=True):
            stages[name] = {"location": "remote", "url": remote.base_url, **info}
        return stages

    def random_weights(self) -> bool:
        return self.settings.weights == "random"

    async def _timed(self, name: str, timings: dict[str, StageTiming], call: Any) -> Any:
        started = time.perf_counter()
        with span(f"stage {name}", **{"sdserve.stage": name}):
            result = await call
        timings[name] = _stage_timing(result.timing, (time.perf_counter() - started) * 1000)
        return result

    def check(self, params: GenerationParams) -> DenoiseParams:
        """Refuse bad parameters (InvalidInput, UnsupportedSize) before any compute."""
        denoise_params = DenoiseParams(
            width=params.width,
            height=params.height,
            steps=params.steps,
            guidance_scale=params.guidance_scale,
            seed=params.seed,
            n=params.n,
            strength=params.strength,
            num_resamples=params.num_resamples,
        )
        check_denoise_params(self.settings, denoise_params)
        return denoise_params

    def _admit_to_diffusion(self) -> None:
        """Refuse (503) before the text encoder works, when diffusion would refuse anyway.

        A local diffusion stage's queue is read directly; a remote one is taken to be
        full for the Retry-After of its last refusal. Under overload this keeps refused
        requests from costing text-encoder (and image-encoder) time.
        """
        local = self.local.get("diffusion")
        if local is not None:
            if local.is_full():
                raise QueueFull("diffusion queue is full", retry_after_s=1)
            return
        wait = self._diffusion_full_until - time.monotonic()
        if wait > 0:
            raise QueueFull(
                "diffusion stage is full (it refused a request just now)",
                retry_after_s=max(1, round(wait)),
            )

    async def generate(
        self,
        params: GenerationParams,
        edit: EditInputs | None = None,
        *,
        on_step: ProgressCallback | None = None,
        on_preview: PreviewCallback | None = None,
        preview_every: int = 0,
    ) -> GenerationResult:
        """Text to image; with `edit`, image to image (no mask) or inpainting.

        `on_step(step, total)` follows the diffusion stage step by step, local or remote;
        `on_preview(step, total, rgb)` gets a small uint8 preview every `preview_every`
        steps. Cancelling the call frees the request's rows and skips its decode.
        """
        # Refuse bad parameters before any stage spends compute on the request.
        denoise_params = self.check(params)
        self._admit_to_diffusion()
        timings: dict[str, StageTiming] = {}

        encode_text = self._timed(
            "text_encoder",
            timings,
            self.text_encoder.encode([params.prompt], [params.negative_prompt]),
        )
        init_latent = latent_mask = None
        if edit is None:
            encoded = await encode_text
        else:
            # The prompt and the init image are encoded at the same time.
            encoded, encoded_image = await asyncio.gather(
                encode_text,
                self._timed("image_encoder", timings, self.decoder.encode_image(edit.image[None])),
            )
            init_latent = encoded_image.latent
            if edit.mask is not None:
                latent_mask = mask_to_latent_grid(
                    edit.mask, self.family.spec.downsampling_factor, edit.mask_blur
                )

        started = time.perf_counter()
        with span("stage diffusion", **{"sdserve.stage": "diffusion"}):
            try:
                denoised = await self.diffusion.denoise(
                    encoded.context,
                    encoded.unconditional_context,
                    denoise_params,
                    init_latent=init_latent,
                    mask=latent_mask,
                    on_step=on_step,
                    on_preview=on_preview,
                    preview_every=preview_every,
                )
            except QueueFull as exc:
                self._diffusion_full_until = time.monotonic() + exc.retry_after_s
                raise
        timings["diffusion"] = _stage_timing(
            denoised.timing, (time.perf_counter() - started) * 1000
        )

        started = time.perf_counter()
        chunks = []
        queue = compute = 0.0
        for i in range(0, len(denoised.latent), self.settings.max_batch):
            with span("stage decoder", **{"sdserve.stage": "decoder"}):
                decoded = await self.decoder.decode(
                    denoised.latent[i : i + self.settings.max_batch]
                )
            chunks.append(decoded.images)
            if decoded.timing:
                queue += decoded.timing.queue_ms
                compute += decoded.timing.compute_ms
        timings["decoder"] = _stage_timing(
            Timing(queue, compute), (time.perf_counter() - started) * 1000
        )
        images = np.concatenate(chunks)
        if edit is not None and edit.mask is not None and edit.keep_unmasked:
            images = overlay_unmasked(images, edit.image, edit.mask)
        return GenerationResult(
            images=images,
            seeds=denoised.seeds,
            timings=timings,
            prompt_truncated=encoded.truncated[0],
            prompt_tokens=encoded.token_counts[0],
        )

    async def aclose(self) -> None:
        for remote in self.remote.values():
            await remote.aclose()
        for local in self.local.values():
            local.close()
