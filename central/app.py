"""The public gateway: validates requests, chains the stages, encodes images. Routes only."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.datastructures import UploadFile

from central.api import (
    HfTextToImageRequest,
    ImageEditFields,
    ImageEditJson,
    ImageGenerationRequest,
    b64_bytes,
    edit_inputs,
    encode_png,
    generation_response,
    validated,
)
from central.jobs import register_job_routes
from central.webpage import register_web_page
from shared.config import (
    EXIT_CONFIG,
    ConfigError,
    Settings,
    format_size,
    load_settings,
)
from shared.errors import InvalidInput, UnsupportedMediaType
from shared.families import get_family
from shared.http import cancel_on_disconnect, configure_logging, create_app, serve
from shared.metrics import BatchingSource
from shared.pipeline.chain import Chain
from shared.pipeline.local.base import LocalStage
from shared.pipeline.types import EditInputs, GenerationParams, GenerationResult

VERSION = "0.1.0"
DEFAULT_PORT = 8000

DESCRIPTION = """
Stable Diffusion behind an OpenAI-compatible Images API.

* `POST /v1/images/generations` — OpenAI `images.generate` shape plus `negative_prompt`,
  `steps`, `guidance_scale`, `seed`.
* `POST /v1/images/edits` — OpenAI `images.edit` (multipart; mask alpha 0 = repaint) or
  JSON with base64 `image` and greyscale `mask` (white = repaint): inpainting with a mask,
  image-to-image without one; plus `strength`, `num_resamples`, `mask_blur`.
* `POST /` — Hugging Face text-to-image (`{"inputs": ..., "parameters": {...}}`) → PNG.
"""


class GatewayService:
    """Adapts the chain to the app factory's service interface."""

    name = "central"

    def __init__(self, chain: Chain) -> None:
        self.chain = chain

    def load(self) -> None:
        self.chain.load()

    def describe(self) -> Mapping[str, Any]:
        settings = self.chain.settings
        return {
            "family": settings.model,
            "weights": settings.weights_label,
            "random_weights": self.chain.random_weights(),
            "example_prompt": get_family(settings.model).spec.example_prompt,
            "api_key_required": bool(settings.api_keys),
            "topology": self.chain.topology,
            "sizes": [format_size(s) for s in settings.sizes],
            "limits": {
                "max_images_per_request": settings.max_images_per_request,
                "max_steps": settings.max_steps,
                "default_steps": settings.default_steps,
                "default_guidance_scale": settings.guidance_scale,
            },
        }

    def batching_sources(self) -> list[BatchingSource]:
        """The stages running in this process (remote ones export their own)."""
        return [
            source
            for stage in self.chain.stages.values()
            if isinstance(stage, LocalStage)
            for source in stage.batching_sources()
        ]

    def close(self) -> None:
        """Remote clients are closed in the app's shutdown hook (they are async)."""


def create_central_app(settings: Settings, chain: Chain | None = None) -> FastAPI:
    chain = chain or Chain(settings)
    service = GatewayService(chain)
    app = create_app(
        service,
        settings,
        title="sdserve",
        version=VERSION,
        readiness=chain.readiness,
        description=DESCRIPTION,
        public_api=True,
    )
    app.router.on_shutdown.append(chain.aclose)
    register_job_routes(app, chain, settings)
    register_web_page(app)
    chain_info = {"model": settings.model, "weights": settings.weights_label}

    async def run(
        request: Request, params: GenerationParams, edit: EditInputs | None = None
    ) -> tuple[GenerationResult, list[bytes]]:
        # A client that hangs up cancels the chain, which closes the stage connections,
        # which frees the request's diffusion rows and skips its decode.
        result = await cancel_on_disconnect(request, chain.generate(params, edit))
        pngs = await asyncio.to_thread(lambda: [encode_png(image) for image in result.images])
        return result, pngs

    @app.get("/v1/stages", tags=["health"])
    async def stages() -> dict[str, Any]:
        """Each stage: local or remote, and what it reports about itself."""
        return await chain.describe_stages()

    @app.post("/v1/images/generations", tags=["images"])
    async def generations(body: ImageGenerationRequest, request: Request) -> dict[str, Any]:
        """Text to image, in the OpenAI Images API shape (plus per-image seeds and timings)."""
        result, pngs = await run(request, body.to_params(settings))
        return generation_response(result, pngs, body.response_format, chain_info)

    edit_body_doc = {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        **ImageEditFields.model_json_schema(),
                        "properties": {
                            **ImageEditFields.model_json_schema()["properties"],
                            "image": {"type": "string", "format": "binary"},
                            "mask": {"type": "string", "format": "binary"},
                        },
                        "required": ["image", "prompt"],
                    }
                },
                "application/json": {"schema": ImageEditJson.model_json_schema()},
            },
        }
    }

    @app.post("/v1/images/edits", tags=["images"], openapi_extra=edit_body_doc)
    async def edits(request: Request) -> dict[str, Any]:
        """Inpainting (with a mask) or image to image (without), OpenAI `images.edit` shape."""
        content_type = request.headers.get("content-type", "").split(";")[0].strip()
        if content_type == "application/json":
            try:
                payload = await request.json()
            except ValueError:
                raise InvalidInput("body is not valid JSON", param="body") from None
            body = validated(ImageEditJson, payload)
            params, edit = edit_inputs(
                body,
                settings,
                b64_bytes(body.image, param="image"),
                b64_bytes(body.mask, param="mask") if body.mask else None,
                mask_polarity="white-repaints",
            )
        elif content_type == "multipart/form-data":
            form = await request.form(max_files=2, max_fields=32)
            image, mask = form.get("image"), form.get("mask")
            if not isinstance(image, UploadFile):
                raise InvalidInput("image file is required", param="image")
            if mask is not None and not isinstance(mask, UploadFile):
                raise InvalidInput("mask must be a file", param="mask")
            fields = validated(
                ImageEditFields,
                {
                    k: v
                    for k, v in form.items()
                    if k not in ("image", "mask") and isinstance(v, str)
                },
            )
            params, edit = edit_inputs(
                fields,
                settings,
                await image.read(),
                await mask.read() if mask is not None else None,
                mask_polarity="openai-alpha",
            )
            body = fields
        else:
            raise UnsupportedMediaType(
                "send multipart/form-data (OpenAI) or application/json", param="body"
            )
        result, pngs = await run(request, params, edit)
        return generation_response(result, pngs, body.response_format, chain_info)

    @app.post(
        "/",
        tags=["images"],
        response_class=Response,
        responses={200: {"content": {"image/png": {}}, "description": "The image as PNG."}},
    )
    async def hugging_face_text_to_image(body: HfTextToImageRequest, request: Request) -> Response:
        """What `huggingface_hub.InferenceClient(model=URL).text_to_image()` sends."""
        result, pngs = await run(request, body.to_params(settings))
        return Response(pngs[0], media_type="image/png", headers={"X-Seed": str(result.seeds[0])})

    return app


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="sdserve-central")
    parser.add_argument("--host", help="default: SDSERVE_HOST or 127.0.0.1")
    parser.add_argument("--port", type=int, help=f"default: SDSERVE_PORT or {DEFAULT_PORT}")
    args = parser.parse_args()
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"central: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None
    configure_logging("central", json_lines=settings.log_format == "json")
    serve(
        create_central_app(settings),
        args.host or settings.host,
        args.port or settings.port or DEFAULT_PORT,
    )


if __name__ == "__main__":
    main()
