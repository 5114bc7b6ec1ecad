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
from typing import Any, Protocol

import numpy as np

from shared.batching import ProgressCallback, Timing
from shared.config import Settings
from shared.errors import QueueFull
from shared.families import get_family
from shared.pipeline.local import make_decoder, make_diffusion, make_text_encoder
from shared.pipeline.remote import RemoteDecoder, RemoteDiffusion, RemoteStage, RemoteTextEncoder
from shared.pipeline.types import (
    DecodeResult,
    DenoiseParams,
    DenoiseResult,
    EditInputs,
    EncodedPrompts,
    EncodeImageResult,
    GenerationParams,
    GenerationResult,
    StageTiming,
    check_denoise_params,
)
from shared.progress import PreviewCallback
from shared.sampler import mask_to_latent_grid
from shared.tracing import span

log = logging.getLogger(__name__)


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


def _stage_timing(timing: Timing | None, wall_ms: float) -> StageTiming:
    queue = timing.queue_ms if timing else 0.0
    compute = timing.compute_ms if timing else wall_ms
    return StageTiming(queue, compute, max(0.0, wall_ms - queue - compute))


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
        check_denoise_params(self.settings, params.denoise)
        return params.denoise

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
