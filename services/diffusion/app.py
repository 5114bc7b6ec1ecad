"""Diffusion service: contexts (+ init latent, mask) in (npz), latents out (npz).

Its routes come from the stage's contract (shared.pipeline.stage_contracts).
"""

from __future__ import annotations

from fastapi import FastAPI

from services.routes import create_stage_app
from shared.config import Settings
from shared.entrypoint import run_part
from shared.pipeline.local.diffusion import LocalDiffusion, make_diffusion

DEFAULT_PORT = 8002


def create_diffusion_app(settings: Settings, stage: LocalDiffusion | None = None) -> FastAPI:
    return create_stage_app(stage or make_diffusion(settings), settings, title="sdserve diffusion")


def main() -> None:
    run_part("diffusion", create_diffusion_app, DEFAULT_PORT)


if __name__ == "__main__":
    main()
