"""Decoder service: latents -> uint8 images, and images -> latents (npz).

Its routes come from the stage's contract (shared.pipeline.stage_contracts).
"""

from __future__ import annotations

from fastapi import FastAPI

from services.routes import create_stage_app
from shared.config import Settings
from shared.entrypoint import run_part
from shared.pipeline.local.decoder import LocalDecoder, make_decoder

DEFAULT_PORT = 8003


def create_decoder_app(settings: Settings, stage: LocalDecoder | None = None) -> FastAPI:
    return create_stage_app(stage or make_decoder(settings), settings, title="sdserve decoder")


def main() -> None:
    run_part("decoder", create_decoder_app, DEFAULT_PORT)


if __name__ == "__main__":
    main()
