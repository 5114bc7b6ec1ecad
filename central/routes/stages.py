"""`GET /v1/stages` (where each stage runs and what it reports about itself) and
`GET /v1/models` (the models this gateway serves, in OpenAI's list shape)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from central.schemas import ModelCard, ModelList
from shared.pipeline.catalog import Catalog


def stages_router(catalog: Catalog) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/v1/stages")
    async def stages() -> dict[str, dict[str, Any]]:
        """Each stage: local or remote, its replicas, and what it reports about itself."""
        return await catalog.describe_stages()

    @router.get("/v1/models", response_model=ModelList, tags=["images"])
    async def models() -> ModelList:
        """The models a request's `model` field can name; the first is the default."""
        return ModelList(
            data=[
                ModelCard(
                    id=name, family=chain.settings.model, weights=chain.settings.weights_label
                )
                for name, chain in catalog.chains.items()
            ]
        )

    return router
