"""Text encoder service: prompts in (JSON), contexts out (npz).

Its routes come from the stage's contract (shared.pipeline.stage_contracts).
"""

from __future__ import annotations

from fastapi import FastAPI

from services.routes import create_stage_app
from shared.config import Settings
from shared.entrypoint import run_part
from shared.pipeline.local.text_encoder import LocalTextEncoder, make_text_encoder

DEFAULT_PORT = 8001


def create_text_encoder_app(settings: Settings, stage: LocalTextEncoder | None = None) -> FastAPI:
    return create_stage_app(
        stage or make_text_encoder(settings), settings, title="sdserve text encoder"
    )


def main() -> None:
    run_part("text-encoder", create_text_encoder_app, DEFAULT_PORT)


if __name__ == "__main__":
    main()
