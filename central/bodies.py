"""Request bodies off the event loop: JSON parsing and image decoding in a bounded pool.

Body sizes are capped per route before any of this runs (shared.http.BodySizeLimit, set
in central/app.py). A JSON body over INLINE_JSON_BYTES is parsed in the pool, never on
the event loop. json.loads holds the GIL for its whole call, though, so a worker thread
alone would not keep the loop answering: such a body is first refused if it holds more
JSON values than any request needs (counted without parsing, which is quick), which
bounds what the parse can cost whatever the body's shape. Image decoding (Pillow
releases the GIL while it decodes and resizes) runs in the same pool.

The pool has DECODE_WORKERS threads; work beyond them waits its turn in the pool's
queue, so hostile uploads cost at most that many cores and decodes' memory at once.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from fastapi import Request, Response
from fastapi.routing import APIRoute

from shared.errors import InvalidInput, UnsupportedMediaType
from shared.tokenizer import MAX_PROMPT_CHARS

DECODE_WORKERS = 2
_POOL = ThreadPoolExecutor(max_workers=DECODE_WORKERS, thread_name_prefix="sdserve-decode")

# Parsed on the loop up to this size: a few milliseconds at worst, whatever the shape.
INLINE_JSON_BYTES = 64 * 1024
# Separators and openers (, : [ {) a larger body may hold: every JSON value but the first
# follows one. Requests have a few dozen fields; prompts (at most MAX_PROMPT_CHARS each,
# a prompt and a negative prompt) may be all commas. Parsing this many values takes a
# few milliseconds; a 16 MiB body of `[1,1,...]` (8 M values) would take seconds.
MAX_JSON_SEPARATORS = 2 * MAX_PROMPT_CHARS + 4096
# Long scans hold the GIL a piece at a time (about a millisecond each), not all at once.
SCAN_PIECE_BYTES = 1 << 20

T = TypeVar("T")


async def off_loop(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run blocking body work in the bounded pool (with the caller's context: request
    id, trace), waiting for a free worker if all are busy."""
    context = contextvars.copy_context()
    call = functools.partial(context.run, fn, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(_POOL, call)


def _loads(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):  # also bad UTF-8, and numbers of 4300+ digits
        raise InvalidInput("body is not valid JSON", param="body") from None


def check_json_shape(body: bytes) -> None:
    """Refuse a body with more JSON values than any request holds (before parsing it).

    Counted a piece at a time: the event loop gets the GIL between pieces, and a hostile
    body is refused at its first piece.
    """
    separators = 0
    for start in range(0, len(body), SCAN_PIECE_BYTES):
        piece = body[start : start + SCAN_PIECE_BYTES]
        separators += len(piece) - len(piece.translate(None, b",:[{"))
        if separators > MAX_JSON_SEPARATORS:
            raise InvalidInput(
                f"body holds too many JSON values (over {MAX_JSON_SEPARATORS} separators)",
                param="body",
            )


async def parse_json(body: bytes) -> Any:
    """A request's JSON body, refused as InvalidInput (422, param "body") if malformed."""
    if len(body) <= INLINE_JSON_BYTES:
        return _loads(body)
    check_json_shape(body)
    return await off_loop(_loads, body)


def media_type(request: Request) -> str:
    """The request's media type, without parameters (`charset=...`)."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def require_json(request: Request) -> None:
    """Refuse (415, param "Content-Type") a body not sent as `application/json`.

    Without this a JSON route given, say, curl's default form type answers a puzzling
    422 ("Input should be a valid dictionary").
    """
    if media_type(request) != "application/json":
        sent = media_type(request) or "none"
        raise UnsupportedMediaType(
            f"send the body as JSON with the header Content-Type: application/json (got {sent})",
            param="Content-Type",
        )


class OffLoopJsonRequest(Request):
    """A request whose `json()` is `parse_json`, so FastAPI's body models use it too."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = await parse_json(await self.body())
        return self._json


class OffLoopJsonRoute(APIRoute):
    """A route whose JSON body is parsed by `parse_json` (the images and jobs routes).

    A route with a body model takes only `application/json` (415 otherwise, before the
    body is read); routes that read their own body (edits, jobs) check its type themselves.
    FastAPI turns an error raised while reading the body into a 400 caused by it; the
    gateway's error handlers answer with that cause (422 here, 413 from the body limit).
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            if self.body_field is not None:
                require_json(request)
            return await handler(OffLoopJsonRequest(request.scope, request.receive))

        return handle
