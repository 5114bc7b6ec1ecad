"""`GET /v1/stages`: where each stage runs and what it reports about itself."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from shared.pipeline.chain import Chain


def stages_router(chain: Chain) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/v1/stages")
    async def stages() -> dict[str, dict[str, Any]]:
        """Each stage: local or remote, and what it reports about itself."""
        return await chain.describe_stages()

    return router
