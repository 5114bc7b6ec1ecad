"""Diffusion service: contexts (+ init latent, mask) in (npz), latents out (npz). Routes only."""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import Response

from services import VERSION, run_service
from shared.config import Settings
from shared.http import (
    NPZ_REQUEST_BODY,
    cancel_on_disconnect,
    create_app,
    npz_response,
    npz_responses,
    read_npz,
    require_internal_token,
)
from shared.sampler import MAX_SEED
from shared.stages import (
    MAX_GUIDANCE_SCALE,
    MAX_RESAMPLES,
    DenoiseParams,
    DenoiseResult,
    LocalDiffusion,
    make_diffusion,
)
from shared.wire import TensorSpec, encode_npz

DEFAULT_PORT = 8002


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
        guidance_scale: float = Query(default=7.5, ge=0, le=MAX_GUIDANCE_SCALE),
        seed: int | None = Query(default=None, ge=0, le=MAX_SEED),
        n: int = Query(default=1, ge=1),
        strength: float = Query(default=1.0, gt=0, le=1, description="img2img/inpaint only."),
        num_resamples: int = Query(default=1, ge=1, le=MAX_RESAMPLES, description="inpaint."),
    ) -> DenoiseParams:
        return DenoiseParams(width, height, steps, guidance_scale, seed, n, strength, num_resamples)

    denoise_params = Depends(params)
    fp16_query = Query(default=False, description="Send the latent back as float16.")

    def reply(result: DenoiseResult, fp16: bool) -> Response:
        headers = result.timing.headers() if result.timing else {}
        headers["X-Seeds"] = ",".join(str(s) for s in result.seeds)
        return npz_response(encode_npz({"latent": result.latent}, fp16=fp16), headers)

    latent_doc = npz_responses("npz with latent (n, h, w, c) float32; X-Seeds header")

    @app.post(
        "/v1/denoise",
        dependencies=[auth],
        response_class=Response,
        openapi_extra=_body_doc(contexts_doc),
        responses=latent_doc,
    )
    async def denoise(
        request: Request, p: DenoiseParams = denoise_params, fp16: bool = fp16_query
    ) -> Response:
        """Text to latent: DDIM with classifier-free guidance; image i uses seed + i."""
        t = await read_npz(request, txt2img_spec, settings)
        result = await cancel_on_disconnect(
            request, stage.denoise(t["context"], t["unconditional_context"], p)
        )
        return reply(result, fp16)

    @app.post(
        "/v1/img2img",
        dependencies=[auth],
        response_class=Response,
        openapi_extra=_body_doc(f"{contexts_doc}, init_latent (1 or n, h, w, c)"),
        responses=latent_doc,
    )
    async def img2img(
        request: Request, p: DenoiseParams = denoise_params, fp16: bool = fp16_query
    ) -> Response:
        """Image to image: round(strength x steps) steps from the noised init latent."""
        t = await read_npz(request, img2img_spec, settings)
        result = await cancel_on_disconnect(
            request,
            stage.denoise(
                t["context"], t["unconditional_context"], p, init_latent=t["init_latent"]
            ),
        )
        return reply(result, fp16)

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
        request: Request, p: DenoiseParams = denoise_params, fp16: bool = fp16_query
    ) -> Response:
        """Inpainting, RePaint-style: the known region follows the init latent every step."""
        t = await read_npz(request, inpaint_spec, settings)
        mask = np.asarray(t["mask"], dtype=np.float32)
        result = await cancel_on_disconnect(
            request,
            stage.denoise(
                t["context"],
                t["unconditional_context"],
                p,
                init_latent=t["init_latent"],
                mask=mask,
            ),
        )
        return reply(result, fp16)

    return app


def main() -> None:
    run_service("diffusion", create_diffusion_app, DEFAULT_PORT)


if __name__ == "__main__":
    main()
