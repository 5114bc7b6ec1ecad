"""The chain text encoder -> diffusion -> decoder, each stage local or remote.

The chain holds three `Stage`s (shared.pipeline.stage) and runs operations of their
contracts; whether a stage is the in-process object (shared.pipeline.local, the very one
the stage services wrap) or the httpx client of its service (shared.pipeline.remote) is
settings, so the three topologies (all-in-one, three endpoints, hybrid) are one code path.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from shared.config import Settings
from shared.families import get_family
from shared.families.vocabulary import prompt_warnings
from shared.noise_schedule import draw_seed
from shared.pipeline.contract import Operation, StageContract
from shared.pipeline.local.decoder import make_decoder
from shared.pipeline.local.diffusion import make_diffusion
from shared.pipeline.local.text_encoder import make_text_encoder
from shared.pipeline.remote import RemoteStage
from shared.pipeline.stage import Progress, Stage, describe_all, load_all, readiness_of
from shared.pipeline.stage_contracts import (
    DECODE,
    DECODER,
    DENOISE,
    DIFFUSION,
    ENCODE,
    ENCODE_IMAGE,
    TEXT_ENCODER,
)
from shared.pipeline.types import (
    DecodeRequest,
    DenoiseParams,
    DenoiseRequest,
    EditInputs,
    EncodeImageRequest,
    EncodeRequest,
    GenerationParams,
    GenerationResult,
    StageTiming,
    check_denoise_params,
)
from shared.sampler import mask_to_latent_grid
from shared.tracing import span

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Res = TypeVar("Res")
STAGE_NAMES = ("text_encoder", "diffusion", "decoder")


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


def build_stage(
    contract: StageContract,
    url: str | None,
    settings: Settings,
    make_local: Callable[[Settings], Stage],
) -> Stage:
    """The stage of `contract`: the replicas at `url` when given, else in this process."""
    if url:
        return RemoteStage(contract, url, settings, get_family(settings.model).spec)
    return make_local(settings)


class Chain:
    """Builds the configured stages and runs requests through them."""

    def __init__(
        self,
        settings: Settings,
        *,
        name: str | None = None,
        stages: tuple[Stage, Stage, Stage] | None = None,
    ) -> None:
        """`stages` (text encoder, diffusion, decoder) when they are shared with other
        chains (shared.pipeline.catalog); else they are built from `settings`."""
        self.settings = settings
        self.name = name or settings.model
        self.family = get_family(settings.model)
        if stages is None:
            stages = (
                build_stage(TEXT_ENCODER, settings.text_encoder_url, settings, make_text_encoder),
                build_stage(DIFFUSION, settings.diffusion_url, settings, make_diffusion),
                build_stage(DECODER, settings.decoder_url, settings, make_decoder),
            )
        self.text_encoder, self.diffusion, self.decoder = stages
        self.stages: dict[str, Stage] = dict(zip(STAGE_NAMES, stages, strict=True))

    def located(self, location: str) -> dict[str, Stage]:
        return {name: s for name, s in self.stages.items() if s.location == location}

    @property
    def topology(self) -> str:
        remote = set(self.located("remote"))
        if not remote:
            return "all-in-one"
        if len(remote) == len(self.stages):
            return "three-endpoints"
        if remote == {"diffusion"}:
            return "hybrid"
        return "custom"

    def load(self) -> None:
        """Load every stage, then warm them all (blocking)."""
        load_all(self.stages.values())

    async def readiness(self) -> tuple[bool, dict[str, str]]:
        return await readiness_of(self.stages)

    async def describe_stages(self) -> dict[str, Any]:
        return await describe_all(self.stages)

    def random_weights(self) -> bool:
        return self.settings.weights == "random"

    async def _run(
        self,
        name: str,
        stage: Stage,
        op: Operation[Req, Res],
        request: Req,
        timings: dict[str, StageTiming],
        progress: Progress | None = None,
    ) -> Res:
        """Run one stage operation, timed the same way for every stage."""
        started = time.perf_counter()
        with span(f"stage {name}", **{"sdserve.stage": name}):
            result = await stage.run(op, request, progress)
        wall_ms = (time.perf_counter() - started) * 1000
        timing = getattr(result, "timing", None)
        queue = timing.queue_ms if timing else 0.0
        compute = timing.compute_ms if timing else wall_ms
        timings[name] = StageTiming(queue, compute, max(0.0, wall_ms - queue - compute))
        return result

    def check(self, params: GenerationParams) -> DenoiseParams:
        """Refuse bad parameters (InvalidInput, UnsupportedSize) before any compute, and
        draw the seed of a request that has none: a diffusion call run again on another
        replica then gives the same images."""
        check_denoise_params(self.settings, params.denoise)
        if params.denoise.seed is None:
            return params.denoise.model_copy(update={"seed": draw_seed()})
        return params.denoise

    async def generate(
        self,
        params: GenerationParams,
        edit: EditInputs | None = None,
        *,
        progress: Progress | None = None,
    ) -> GenerationResult:
        """Text to image; with `edit`, image to image (no mask) or inpainting.

        `progress` follows the diffusion stage step by step, local or remote. Cancelling
        the call frees the request's rows and skips its decode.
        """
        # Refuse bad parameters, and a request a stage would refuse, before any compute.
        denoise_params = self.check(params)
        for stage in (self.diffusion, self.text_encoder, self.decoder):
            stage.admit()
        timings: dict[str, StageTiming] = {}

        prompts = EncodeRequest(prompts=[params.prompt], negative_prompts=[params.negative_prompt])
        encode_text = self._run("text_encoder", self.text_encoder, ENCODE, prompts, timings)
        init_latent = latent_mask = None
        if edit is None:
            encoded = await encode_text
        else:
            # The prompt and the init image are encoded at the same time.
            image = EncodeImageRequest(images=edit.image[None])
            encoded, encoded_image = await asyncio.gather(
                encode_text,
                self._run("image_encoder", self.decoder, ENCODE_IMAGE, image, timings),
            )
            init_latent = encoded_image.latent
            if edit.mask is not None:
                latent_mask = mask_to_latent_grid(
                    edit.mask, self.family.spec.downsampling_factor, edit.mask_blur
                )
        denoise = DenoiseRequest(
            context=encoded.context,
            unconditional_context=encoded.unconditional_context,
            params=denoise_params,
            init_latent=init_latent,
            mask=latent_mask,
        )
        denoised = await self._run("diffusion", self.diffusion, DENOISE, denoise, timings, progress)
        decoded = await self._run(
            "decoder", self.decoder, DECODE, DecodeRequest(latent=denoised.latent), timings
        )
        images = decoded.images
        if edit is not None and edit.mask is not None and edit.keep_unmasked:
            images = overlay_unmasked(images, edit.image, edit.mask)
        return GenerationResult(
            images=images,
            seeds=denoised.seeds,
            timings=timings,
            prompt_truncated=encoded.truncated[0],
            prompt_tokens=encoded.token_counts[0],
            model=self.name,
            weights=self.settings.weights_label,
            sampler=denoise_params.sampler,
            warnings=prompt_warnings(self.family.spec, params.prompt, params.negative_prompt),
        )

    async def aclose(self) -> None:
        for stage in self.stages.values():
            await stage.close()
