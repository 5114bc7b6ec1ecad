"""AUTOMATIC1111's web UI API under /sdapi/v1 (what central/a1111/ does, routed).

Errors here are in A1111's shapes (central/a1111/errors.py); the API key is the same,
sent as a bearer token or with HTTP basic auth (shared/guards.py).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Request

from central.a1111.api import A1111Api
from central.a1111.errors import a1111_error_responses
from central.a1111.schemas import (
    Empty,
    Img2ImgRequest,
    LoraItem,
    Options,
    ProgressResponse,
    SamplerItem,
    ScriptsList,
    SDModelItem,
    TextToImageResponse,
    Txt2ImgRequest,
    UpscalerItem,
)
from central.bodies import OffLoopJsonRoute
from central.routes.jobs import api_key

# What a generation may answer besides 200 (as a job: 429 at the key's limit, 503 full).
RUN_ERRORS = (401, 403, 404, 413, 415, 422, 429, 500, 502, 503, 504)
READ_ERRORS = (401, 403, 500, 503)


def a1111_router(api: A1111Api) -> APIRouter:
    router = APIRouter(prefix="/sdapi/v1", tags=["automatic1111"], route_class=OffLoopJsonRoute)

    @router.post(
        "/txt2img", response_model=TextToImageResponse, responses=a1111_error_responses(*RUN_ERRORS)
    )
    async def txt2img(body: Txt2ImgRequest, request: Request) -> TextToImageResponse:
        """Text to image; answers when the images are made (a job meanwhile: see /progress)."""
        return await api.txt2img(request, body, api_key(request))

    @router.post(
        "/img2img", response_model=TextToImageResponse, responses=a1111_error_responses(*RUN_ERRORS)
    )
    async def img2img(body: Img2ImgRequest, request: Request) -> TextToImageResponse:
        """Image to image, or inpainting with `mask` (white repaints)."""
        return await api.img2img(request, body, api_key(request))

    @router.get(
        "/progress",
        response_model=ProgressResponse,
        responses=a1111_error_responses(*READ_ERRORS, 422),
    )
    async def progress(request: Request, skip_current_image: bool = False) -> ProgressResponse:
        """The caller's current job: its progress, the time it has left, its latest preview."""
        return await api.progress(api_key(request), skip_current_image=skip_current_image)

    @router.post("/interrupt", response_model=Empty, responses=a1111_error_responses(*READ_ERRORS))
    async def interrupt(request: Request) -> Empty:
        """Stop the caller's current job (its request answers with no images)."""
        await api.interrupt(api_key(request))
        return Empty()

    @router.get("/options", response_model=Options, responses=a1111_error_responses(*READ_ERRORS))
    async def get_options(request: Request) -> dict[str, Any]:
        """The options that mean something here: which checkpoint is selected."""
        return await api.options(api_key(request))

    @router.post(
        "/options", response_model=Options, responses=a1111_error_responses(*READ_ERRORS, 404, 422)
    )
    async def set_options(
        request: Request, changes: Annotated[dict[str, Any], Body()]
    ) -> dict[str, Any]:
        """`sd_model_checkpoint` selects a model (GET /sd-models) for this API key's later
        requests; other options are accepted and change nothing."""
        return await api.set_options(api_key(request), changes)

    @router.get("/sd-models", response_model=list[SDModelItem])
    async def sd_models() -> list[SDModelItem]:
        """The models this gateway serves (a models file's, or its one)."""
        return api.sd_models()

    @router.get("/samplers", response_model=list[SamplerItem])
    async def samplers() -> list[SamplerItem]:
        """The samplers that run here (another name runs the first, and the info says so)."""
        return api.samplers()

    @router.get("/upscalers", response_model=list[UpscalerItem])
    async def upscalers() -> list[UpscalerItem]:
        """None here."""
        return []

    @router.get("/loras", response_model=list[LoraItem])
    async def loras() -> list[LoraItem]:
        """None here."""
        return []

    @router.get("/scripts", response_model=ScriptsList)
    async def scripts() -> ScriptsList:
        """None here (clients such as webuiapi ask, to find extensions)."""
        return ScriptsList(txt2img=[], img2img=[])

    return router
