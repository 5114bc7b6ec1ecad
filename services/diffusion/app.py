"""Diffusion service: contexts (+ init latent, mask) in (npz), latents out (npz). Routes only."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import Response

from services import VERSION, run_service
from services.diffusion.stream import stream_denoise
from shared.batching import ProgressCallback
from shared.config import MAX_GUIDANCE_SCALE, Settings
from shared.http import (
    NPZ_REQUEST_BODY,
    cancel_on_disconnect,
    create_app,
    npz_response,
    npz_responses,
    read_npz,
    require_internal_token,
)
from shared.pipeline.local import LocalDiffusion, make_diffusion
from shared.pipeline.types import MAX_RESAMPLES, DenoiseParams, DenoiseResult
from shared.progress import STREAM_MEDIA_TYPE, PreviewCallback
from shared.sampler import MAX_SEED
from shared.wire import TensorSpec, encode_npz

DEFAULT_PORT = 8002
MAX_PREVIEW_EVERY = 1000

Denoise = Callable[[ProgressCallback | None, PreviewCallback | None], Awaitable[DenoiseResult]]


@dataclass(frozen=True)
class StreamOptions:
    stream: bool
    preview_every: int


def _body_doc(members: str) -> dict[str, Any]:
    return {**NPZ_REQUEST_BODY, "description": f"Body: npz with {members} (float16 accepted)."}


def create_diffusion_app(settings: Settings, stage: LocalDiffusion | None = None) -> FastAPI:
    stage = stage or make_diffusion(settings)
    app = create_app(stage, settings, title="sdserve diffusion", version=VERSION)
    auth = Depends(require_internal_token(settings))
    spec = stage.family.spec
    context_spec = TensorSpec("float32", (None, spec.max_tokens, spec.context_dim), allow_fp16=True)
    latent_spec = TensorSpec("float32", (None, None, None, spec.latent_channels), allow_fp16=True)
    mask_spec = TensorSpec("float32", (None, None, None, 1), allow_fp16=True)
    txt2img_spec = {"context": context_spec, "unconditional_context": context_spec}
    img2img_spec = {**txt2img_spec, "init_latent": latent_spec}
    inpaint_spec = {**img2img_spec, "mask": mask_spec}
    contexts_doc = "context and unconditional_context (1 or n, 77, context_dim) float32"

    def params(
        width: int = Query(ge=1, le=8192),
        height: int = Query(ge=1, le=8192),
        steps: int = Query(default=settings.default_steps, ge=1),
        guidance_scale: float = Query(default=settings.guidance_scale, ge=0, le=MAX_GUIDANCE_SCALE),
        seed: int | None = Query(default=None, ge=0, le=MAX_SEED),
        n: int = Query(default=1, ge=1),
        strength: float = Query(default=1.0, gt=0, le=1, description="img2img/inpaint only."),
        num_resamples: int = Query(default=1, ge=1, le=MAX_RESAMPLES, description="inpaint."),
    ) -> DenoiseParams:
        return DenoiseParams(width, height, steps, guidance_scale, seed, n, strength, num_resamples)

    denoise_params = Depends(params)
    fp16_query = Query(default=False, description="Send the latent back as float16.")

    def stream_options(
        stream: bool = Query(
            default=False,
            description=f"Answer {STREAM_MEDIA_TYPE}: progress frames after each step, then "
            "the result frame (or an error frame); see shared/progress.py.",
        ),
        preview_every: int = Query(
            default=0,
            ge=0,
            le=MAX_PREVIEW_EVERY,
            description="Streaming: a small uint8 latent preview frame every k steps (0: none).",
        ),
    ) -> StreamOptions:
        return StreamOptions(stream, preview_every)

    streaming = Depends(stream_options)

    async def denoise_from(
        request: Request,
        tensor_spec: dict[str, TensorSpec],
        p: DenoiseParams,
        fp16: bool,
        options: StreamOptions,
    ) -> Response:
        """What every mode does: read the npz, run the stage, answer (or stream) it.

        The members present pick the mode: init_latent for img2img, with mask to inpaint.
        """
        t = await read_npz(request, tensor_spec, settings)

        def run(on_step: Any, on_preview: Any) -> Any:
            return stage.denoise(
                t["context"],
                t["unconditional_context"],
                p,
                init_latent=t.get("init_latent"),
                mask=t.get("mask"),
                on_step=on_step,
                on_preview=on_preview,
                preview_every=options.preview_every,
            )

        if options.stream:
            return await stream_denoise(request, run, fp16=fp16)
        return reply(await cancel_on_disconnect(request, run(None, None)), fp16)

    def reply(result: DenoiseResult, fp16: bool) -> Response:
        headers = result.timing.headers() if result.timing else {}
        headers["X-Seeds"] = ",".join(str(s) for s in result.seeds)
        return npz_response(encode_npz({"latent": result.latent}, fp16=fp16), headers)

    latent_doc = npz_responses("npz with latent (n, h, w, c) float32; X-Seeds header")
    latent_doc[200]["content"][STREAM_MEDIA_TYPE] = {
        "schema": {"type": "string", "format": "binary"}
    }

    @app.post(
        "/v1/denoise",
        dependencies=[auth],
        response_class=Response,
        openapi_extra=_body_doc(contexts_doc),
        responses=latent_doc,
    )
    async def denoise(
        request: Request,
        p: DenoiseParams = denoise_params,
        fp16: bool = fp16_query,
        options: StreamOptions = streaming,
    ) -> Response:
        """Text to latent: DDIM with classifier-free guidance; image i uses seed + i."""
        return await denoise_from(request, txt2img_spec, p, fp16, options)

    @app.post(
        "/v1/img2img",
        dependencies=[auth],
        response_class=Response,
        openapi_extra=_body_doc(f"{contexts_doc}, init_latent (1 or n, h, w, c)"),
        responses=latent_doc,
    )
    async def img2img(
        request: Request,
        p: DenoiseParams = denoise_params,
        fp16: bool = fp16_query,
        options: StreamOptions = streaming,
    ) -> Response:
        """Image to image: round(strength x steps) steps from the noised init latent."""
        return await denoise_from(request, img2img_spec, p, fp16, options)

    @app.post(
        "/v1/inpaint",
        dependencies=[auth],
        response_class=Response,
        openapi_extra=_body_doc(
            f"{contexts_doc}, init_latent (1 or n, h, w, c), mask (1 or n, h, w, 1) "
            "in [0, 1] on the latent grid, 1 = repaint"
        ),
        responses=latent_doc,
    )
    async def inpaint(
        request: Request,
        p: DenoiseParams = denoise_params,
        fp16: bool = fp16_query,
        options: StreamOptions = streaming,
    ) -> Response:
        """Inpainting, RePaint-style: the known region follows the init latent every step."""
        return await denoise_from(request, inpaint_spec, p, fp16, options)

    return app


def main() -> None:
    run_service("diffusion", create_diffusion_app, DEFAULT_PORT)


if __name__ == "__main__":
    main()
