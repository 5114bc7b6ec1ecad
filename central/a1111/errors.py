"""Our errors in AUTOMATIC1111's shapes, for everything under /sdapi/.

The taxonomy and statuses stay ours (shared/errors.py); only the body differs, rendered
by `a1111_error` where shared.guards.error_response renders every error (the gateway
lists it in `app.state.error_dialects`):

- a bad field (422: InvalidInput, UnsupportedSize) in FastAPI's validation shape, as
  A1111's own request validation answers: `{"detail": [{"loc": ["body", field, ...],
  "msg": ..., "type": ...}]}`, the field named by its A1111 name;
- anything else as A1111's exception handler does: `{"error": type, "detail": message,
  "body": "", "errors": message}` (a 401 also offers HTTP basic auth, as A1111 does).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi.responses import JSONResponse

from central.a1111.schemas import ErrorBody, ValidationErrorBody
from central.schemas import ERROR_DESCRIPTIONS
from shared.errors import InvalidInput, SdserveError, Unauthorized, http_status_for

PREFIX = "/sdapi/"

# Our field names (a /v1/jobs body's) -> A1111's, for errors the job's own checks raise.
A1111_NAMES = {
    "n": "batch_size",
    "guidance_scale": "cfg_scale",
    "size": "width",
    "model": "override_settings.sd_model_checkpoint",
    "image": "init_images.0",
    "strength": "denoising_strength",
}


def a1111_error(error: SdserveError) -> JSONResponse:
    status = http_status_for(error)
    headers = error.headers()
    if isinstance(error, InvalidInput):
        loc: list[str | int] = ["body"]
        if error.param and error.param != "body":
            loc += [int(part) if part.isdigit() else part for part in error.param.split(".")]
        body: object = {"detail": [{"loc": loc, "msg": error.message, "type": error.error_type}]}
    else:
        body = {
            "error": error.error_type,
            "detail": error.message,
            "body": "",
            "errors": error.message,
        }
    if isinstance(error, Unauthorized):
        headers["WWW-Authenticate"] = 'Bearer, Basic realm="sdserve"'
    return JSONResponse(body, status_code=status, headers=headers)


@contextmanager
def a1111_names() -> Iterator[None]:
    """Errors raised inside name the field as an A1111 request does."""
    try:
        yield
    except SdserveError as exc:
        ours = exc.param
        if ours in A1111_NAMES:
            theirs = A1111_NAMES[ours]
            exc.param = theirs
            if exc.message.startswith(f"{ours}:"):
                exc.message = theirs + exc.message[len(ours) :]
            else:
                exc.message = f"{theirs}: {exc.message}"
        raise


def a1111_error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` declaring A1111's error bodies for these statuses."""
    descriptions = {**ERROR_DESCRIPTIONS, 404: "No such model (GET /sdapi/v1/sd-models)."}
    return {
        status: {
            "model": ValidationErrorBody if status == 422 else ErrorBody,
            "description": descriptions[status],
        }
        for status in sorted(set(statuses))
    }
