"""Decoder service: latents -> uint8 images, and images -> latents (npz). Routes only."""

from __future__ import annotations

from fastapi import Depends, FastAPI, Request
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
from shared.pipeline.local import LocalDecoder, make_decoder
from shared.wire import TensorSpec, encode_npz

DEFAULT_PORT = 8003


def create_decoder_app(settings: Settings, stage: LocalDecoder | None = None) -> FastAPI:
    stage = stage or make_decoder(settings)
    app = create_app(stage, settings, title="sdserve decoder", version=VERSION)
    auth = Depends(require_internal_token(settings))
    channels = stage.family.spec.latent_channels
    request_spec = {"latent": TensorSpec("float32", (None, None, None, channels), allow_fp16=True)}

    @app.post(
        "/v1/decode",
        dependencies=[auth],
        response_class=Response,
        openapi_extra={
            **NPZ_REQUEST_BODY,
            "description": "Body: npz with latent (B, h, w, c) float32 (float16 accepted).",
        },
        responses=npz_responses("npz with images (B, H, W, 3) uint8"),
    )
    async def decode(request: Request) -> Response:
        """Decode latents with the VAE decoder into uint8 RGB images."""
        tensors = await read_npz(request, request_spec, settings)
        result = await stage.decode(tensors["latent"])
        headers = result.timing.headers() if result.timing else {}
        return npz_response(encode_npz({"images": result.images}), headers)

    image_spec = {"images": TensorSpec("uint8", (None, None, None, 3))}

    @app.post(
        "/v1/encode-image",
        dependencies=[auth],
        response_class=Response,
        openapi_extra={
            **NPZ_REQUEST_BODY,
            "description": "Body: npz with images (B, H, W, 3) uint8 of a served size.",
        },
        responses=npz_responses("npz with latent (B, H/8, W/8, c) float32"),
    )
    async def encode_image(request: Request, fp16: bool = False) -> Response:
        """Encode images with the VAE encoder (the init latent of img2img and inpaint)."""
        tensors = await read_npz(request, image_spec, settings)
        result = await stage.encode_image(tensors["images"])
        headers = result.timing.headers() if result.timing else {}
        return npz_response(encode_npz({"latent": result.latent}, fp16=fp16), headers)

    return app


def main() -> None:
    run_service("decoder", create_decoder_app, DEFAULT_PORT)


if __name__ == "__main__":
    main()
