"""Text encoder service: prompts in (JSON), contexts out (npz). Routes only."""

from __future__ import annotations

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from services import VERSION, run_service
from shared.config import Settings
from shared.http import create_app, npz_response, npz_responses, require_internal_token
from shared.pipeline.local import LocalTextEncoder, make_text_encoder
from shared.wire import encode_npz

DEFAULT_PORT = 8001


class EncodeRequest(BaseModel):
    prompts: list[str] = Field(min_length=1, description="One prompt per image row.")
    negative_prompts: list[str | None] | None = Field(
        default=None, description="Same length as prompts; null or '' means unconditional."
    )


def create_text_encoder_app(settings: Settings, stage: LocalTextEncoder | None = None) -> FastAPI:
    stage = stage or make_text_encoder(settings)
    app = create_app(stage, settings, title="sdserve text encoder", version=VERSION)
    auth = Depends(require_internal_token(settings))

    @app.post(
        "/v1/encode",
        dependencies=[auth],
        response_class=Response,
        responses=npz_responses(
            "npz with context and unconditional_context (B, 77, D) float32, "
            "token_count (B,) int32 and truncated (B,) bool"
        ),
    )
    async def encode(body: EncodeRequest, request: Request, fp16: bool = False) -> Response:
        """Encode prompts; prompts over 77 tokens are truncated and reported."""
        result = await stage.encode(body.prompts, body.negative_prompts)
        payload = encode_npz(
            {
                "context": result.context,
                "unconditional_context": result.unconditional_context,
                "token_count": np.asarray(result.token_counts, dtype=np.int32),
                "truncated": np.asarray(result.truncated, dtype=bool),
            },
            fp16=fp16,
        )
        headers = result.timing.headers() if result.timing else {}
        headers["X-Truncated"] = ",".join(str(int(t)) for t in result.truncated)
        return npz_response(payload, headers)

    return app


def main() -> None:
    run_service("text-encoder", create_text_encoder_app, DEFAULT_PORT)


if __name__ == "__main__":
    main()
