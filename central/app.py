"""The public gateway: builds the app from the gateway service and its routers."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request, Security
from fastapi.security import HTTPBasic, HTTPBearer

from central.a1111.api import A1111Api
from central.a1111.errors import PREFIX as A1111_PREFIX
from central.a1111.errors import a1111_error
from central.jobs import JobRunner, open_store
from central.routes.a1111 import a1111_router
from central.routes.images import images_router
from central.routes.jobs import jobs_router
from central.routes.stages import stages_router
from central.schemas import GatewayInfo
from central.webpage import register_web_page
from shared.config import (
    Settings,
    format_size,
)
from shared.entrypoint import run_part
from shared.families import get_family
from shared.http import create_app
from shared.metrics import BatchingSource, StageReplicas
from shared.pipeline.catalog import Catalog
from shared.pipeline.chain import Chain
from shared.pipeline.local.base import LocalStage
from shared.sampler_names import SAMPLERS

VERSION = "0.1.0"
DEFAULT_PORT = 8000

DESCRIPTION = """
Stable Diffusion behind an OpenAI-compatible Images API.

* `POST /v1/images/generations` — OpenAI `images.generate` shape plus `negative_prompt`,
  `steps`, `guidance_scale`, `seed`, `sampler` (DDIM, DPM++ 2M (Karras), Euler a:
  `/v1/info` lists them and the other names they go by).
* `POST /v1/images/edits` — OpenAI `images.edit` (multipart; mask alpha 0 = repaint) or
  JSON with base64 `image` and greyscale `mask` (white = repaint): inpainting with a mask,
  image-to-image without one; plus `strength`, `num_resamples`, `mask_blur`.
* `POST /` — Hugging Face text-to-image (`{"inputs": ..., "parameters": {...}}`) → PNG.
* `/sdapi/v1/...` — AUTOMATIC1111's web UI API (txt2img, img2img, progress, interrupt,
  sd-models, options, samplers): its shapes, its errors, the same API keys (bearer or
  HTTP basic auth).
"""


class GatewayService:
    """Adapts the catalog of models to the app factory's service interface."""

    name = "central"

    def __init__(self, catalog: Catalog, *, api_key_required: bool) -> None:
        self.catalog = catalog
        self.api_key_required = api_key_required

    def load(self) -> None:
        self.catalog.load()

    def describe(self) -> Mapping[str, Any]:
        settings = self.catalog.default.settings  # the default model's
        return {
            "family": settings.model,
            "weights": settings.weights_label,
            "models": list(self.catalog.chains),
            "random_weights": self.catalog.random_weights(),
            "example_prompt": get_family(settings.model).spec.example_prompt,
            "api_key_required": self.api_key_required,
            "topology": self.catalog.topology,
            "job_store": "memory" if settings.job_store == "memory" else "redis",
            "sizes": [format_size(s) for s in settings.sizes],
            "samplers": [
                {**dataclasses.asdict(card), "aliases": list(card.aliases)}
                for card in SAMPLERS.values()
            ],
            "limits": {
                "max_images_per_request": settings.max_images_per_request,
                "max_steps": settings.max_steps,
                "default_steps": settings.steps,
                "default_guidance_scale": settings.guidance_scale,
                "default_sampler": settings.sampler,
            },
        }

    def batching_sources(self) -> list[BatchingSource]:
        """The stages running in this process (remote ones export their own), labelled
        as the catalog names them: a second model's own stage is `diffusion@<model>`."""
        sources = []
        for label, stage in self.catalog.stages.items():
            if not isinstance(stage, LocalStage):
                continue
            _, _, model = label.partition("@")
            for source in stage.batching_sources():
                sources.append(
                    dataclasses.replace(source, stage=f"{source.stage}@{model}")
                    if model
                    else source
                )
        return sources

    def close(self) -> None:
        """Remote clients are closed in the app's shutdown hook (they are async)."""


# The routes whose bodies carry images (a job may be an edit); every other body is JSON.
IMAGE_BODY_PATHS = ("/v1/images/edits", "/v1/jobs", "/sdapi/v1/img2img")


def body_limits(settings: Settings) -> tuple[int, dict[str, int]]:
    """The gateway's body caps: small JSON bodies, except where images travel."""
    return settings.max_json_body_bytes, dict.fromkeys(
        IMAGE_BODY_PATHS, settings.max_edit_body_bytes
    )


def create_central_app(settings: Settings, chain: Chain | None = None) -> FastAPI:
    """The gateway of `settings`' models (or of `chain` alone, already built)."""
    settings.check_gateway()
    # Read once here (SDSERVE_API_KEYS_FILE is a file), not on every /v1/info.
    api_keys = settings.api_key_list()
    catalog = Catalog(settings, {chain.name: chain} if chain else None)
    store = open_store(settings)
    app = create_app(
        GatewayService(catalog, api_key_required=bool(api_keys)),
        settings,
        title="sdserve",
        version=VERSION,
        readiness=catalog.readiness,
        description=DESCRIPTION,
        public_api=True,
        info_model=GatewayInfo,
        key_slots=store,
        body_limits=body_limits(settings),
    )
    app.router.on_shutdown.append(catalog.aclose)
    app.state.metrics.registry.register(StageReplicas(catalog.retries, catalog.replicas))
    jobs = JobRunner(catalog, settings, store)
    app.state.jobs = jobs
    app.router.on_startup.append(jobs.start)
    # On SIGTERM a shared store's jobs go to other replicas at once; at shutdown, before
    # anything else stops (the chain's clients), a memory store's jobs end cancelled.
    app.state.drain_hooks.append(jobs.drain_soon)
    app.router.on_shutdown.insert(0, jobs.aclose)
    # With API keys, the OpenAPI schema declares the bearer scheme on the routes that
    # need it (ApiKeyGuard checks it, before any body is read).
    bearer = HTTPBearer(auto_error=False, description="An API key (SDSERVE_API_KEYS).")
    secured = [Security(bearer)]
    guarded = secured if api_keys else []
    app.include_router(stages_router(catalog), dependencies=guarded)
    app.include_router(images_router(catalog, settings), dependencies=guarded)
    app.include_router(jobs_router(jobs), dependencies=guarded)
    # AUTOMATIC1111 clients send the key with HTTP basic auth, or as a bearer token.
    basic = _DocumentedBasic(
        auto_error=False, scheme_name="HTTPBasic", description="Any user; the password: a key."
    )
    app.include_router(
        a1111_router(A1111Api(jobs, catalog, settings, VERSION)),
        dependencies=[*secured, Security(basic)] if api_keys else [],
    )
    app.state.error_dialects.append((A1111_PREFIX, a1111_error))
    register_web_page(app)
    return app


class _DocumentedBasic(HTTPBasic):
    """HTTP basic auth in the OpenAPI schema only: ApiKeyGuard checks the header."""

    async def __call__(self, request: Request) -> None:  # type: ignore[override]
        return None


def main() -> None:
    run_part("central", create_central_app, DEFAULT_PORT)


if __name__ == "__main__":
    main()
