"""Diffusion service: contexts in (npz), denoised latents out (npz). Routes only."""

from __future__ import annotations

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import Response

from services import VERSION, run_service
from shared.config import Settings
from shared.http import (
    NPZ_REQUEST_BODY,
    create_app,
    npz_response,
    npz_responses,
    read_npz,
    require_internal_token,
)
from shared.sampler import MAX_SEED
from shared.stages import MAX_GUIDANCE_SCALE, DenoiseParams, LocalDiffusion, make_diffusion
from shared.wire import TensorSpec, encode_npz

DEFAULT_PORT = 8002


def create_diffusion_app(settings: Settings, stage: LocalDiffusion | None = None) -> FastAPI:
    stage = stage or make_diffusion(settings)
    app = create_app(stage, settings, title="sdserve diffusion", version=VERSION)
    auth = Depends(require_internal_token(settings))
    spec = stage.family.spec
    context_spec = TensorSpec("float32", (None, spec.max_tokens, spec.context_dim), allow_fp16=True)
    request_spec = {"context": context_spec, "unconditional_context": context_spec}

    @app.post(
        "/v1/denoise",
        dependencies=[auth],
        response_class=Response,
        openapi_extra={
            **NPZ_REQUEST_BODY,
            "description": "Body: npz with context and unconditional_context, each "
            "(1 or n, 77, context_dim) float32 (float16 accepted).",
        },
        responses=npz_responses("npz with latent (n, h, w, c) float32; X-Seeds header"),
    )
    async def denoise(
        request: Request,
        width: int = Query(ge=1, le=8192),
        height: int = Query(ge=1, le=8192),
        steps: int = Query(default=settings.default_steps, ge=1),
        guidance_scale: float = Query(default=7.5, ge=0, le=MAX_GUIDANCE_SCALE),
        seed: int | None = Query(default=None, ge=0, le=MAX_SEED),
        n: int = Query(default=1, ge=1),
        fp16: bool = Query(default=False, description="Send the latent back as float16."),
    ) -> Response:
        """Run DDIM with classifier-free guidance; image i uses seed + i."""
        tensors = await read_npz(request, request_spec, settings)
        params = DenoiseParams(width, height, steps, guidance_scale, seed, n)
        result = await stage.denoise(tensors["context"], tensors["unconditional_context"], params)
        headers = result.timing.headers() if result.timing else {}
        headers["X-Seeds"] = ",".join(str(s) for s in result.seeds)
        return npz_response(encode_npz({"latent": result.latent}, fp16=fp16), headers)

    return app


def main() -> None:
    run_service("diffusion", create_diffusion_app, DEFAULT_PORT)


if __name__ == "__main__":
    main()
