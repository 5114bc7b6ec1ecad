"""The images routes: OpenAI generations and edits, and Hugging Face text to image."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from central.bodies import OffLoopJsonRoute
from central.schemas import (
    COMMON_ERRORS,
    EDIT_BODY_DOC,
    HfTextToImageRequest,
    ImageGenerationRequest,
    ImagesResponse,
    error_responses,
)
from central.serving import generate_pngs, images_response, read_edit
from shared.config import Settings
from shared.pipeline.catalog import Catalog


def images_router(catalog: Catalog, settings: Settings) -> APIRouter:
    # JSON bodies are parsed by central.bodies (off the event loop when large).
    router = APIRouter(tags=["images"], route_class=OffLoopJsonRoute)

    @router.post(
        "/v1/images/generations",
        response_model=ImagesResponse,
        response_model_exclude_unset=True,
        responses=error_responses(*COMMON_ERRORS, 415),
    )
    async def generations(body: ImageGenerationRequest, request: Request) -> ImagesResponse:
        """Text to image, in the OpenAI Images API shape (plus per-image seeds and timings)."""
        result, pngs = await generate_pngs(
            request, catalog, body.to_params(catalog.settings_for(body.model))
        )
        return images_response(result, pngs, body.response_format)

    @router.post(
        "/v1/images/edits",
        response_model=ImagesResponse,
        response_model_exclude_unset=True,
        responses=error_responses(*COMMON_ERRORS, 415),
        openapi_extra=EDIT_BODY_DOC,
    )
    async def edits(request: Request) -> ImagesResponse:
        """Inpainting (with a mask) or image to image (without), OpenAI `images.edit` shape."""
        fields, params, edit = await read_edit(request, catalog.settings_for)
        result, pngs = await generate_pngs(request, catalog, params, edit)
        return images_response(result, pngs, fields.response_format)

    @router.post(
        "/",
        response_class=Response,
        responses={
            200: {"content": {"image/png": {}}, "description": "The image as PNG."},
            **error_responses(*COMMON_ERRORS, 415),
        },
    )
    async def hugging_face_text_to_image(body: HfTextToImageRequest, request: Request) -> Response:
        """What `huggingface_hub.InferenceClient(model=URL).text_to_image()` sends."""
        result, pngs = await generate_pngs(request, catalog, body.to_params(settings))
        return Response(pngs[0], media_type="image/png", headers={"X-Seed": str(result.seeds[0])})

    return router
