"""The streamed reply of an operation that streams (`?stream=true`): progress frames as
the steps run, then the result (or error) frame. The frame format is in shared.progress."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import numpy as np
from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from shared.errors import SdserveError
from shared.http import cancel_on_disconnect
from shared.pipeline.contract import to_arrays
from shared.pipeline.stage import Progress
from shared.progress import (
    STREAM_MEDIA_TYPE,
    error_frame,
    internal_error_frame,
    preview_frame,
    progress_frame,
    result_frame,
)

log = logging.getLogger(__name__)

StartWork = Callable[[Progress], Awaitable[Any]]


async def stream_reply(
    request: Request, start: StartWork, *, preview_every: int, fp16: bool
) -> Response:
    """Run `start(progress)` and stream its progress, then its result.

    Errors the stage raises before its first step (bad input, a full queue) are ordinary
    HTTP errors with their status; once the 200 is sent, an error is the last frame. A
    client that goes away cancels the work, which frees its rows at the next step.
    """
    frames: asyncio.Queue[bytes | None] = asyncio.Queue()  # at most one per step
    last_step: list[tuple[int, int]] = []

    def on_step(step: int, total: int) -> None:
        if last_step and last_step[-1] == (step, total):
            return  # RePaint resamples repeat a step; the client wants progress
        last_step[:] = [(step, total)]
        frames.put_nowait(progress_frame(step, total))

    def on_preview(step: int, total: int, preview: np.ndarray) -> None:
        frames.put_nowait(preview_frame(step, total, preview))

    work = asyncio.ensure_future(start(Progress(on_step, on_preview, preview_every)))
    # Let the stage run up to its first real wait: validation and the bounded queue's
    # QueueFull happen before it, so they still get their own HTTP status.
    await asyncio.sleep(0)
    if work.done():
        work.result()  # raises; a stage never finishes before its first step
    return StreamingResponse(
        _frames(request, work, frames, fp16=fp16),
        media_type=STREAM_MEDIA_TYPE,
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


async def _frames(
    request: Request,
    work: asyncio.Future[Any],
    frames: asyncio.Queue[bytes | None],
    *,
    fp16: bool,
) -> AsyncIterator[bytes]:
    guarded = asyncio.ensure_future(cancel_on_disconnect(request, work))
    guarded.add_done_callback(lambda _: frames.put_nowait(None))
    try:
        while (chunk := await frames.get()) is not None:
            yield chunk
        try:
            result = guarded.result()
        except asyncio.CancelledError:
            return  # the client went away; nobody reads a last frame
        except SdserveError as exc:
            yield error_frame(exc)
            return
        except Exception:
            log.exception("stage failed mid-stream")
            yield internal_error_frame()
            return
        timing = result.timing
        yield result_frame(
            to_arrays(result),
            timing.queue_ms if timing else 0.0,
            timing.compute_ms if timing else 0.0,
            fp16=fp16,
        )
    finally:
        # However the response ends (done, client gone, server stopping), stop the work.
        work.cancel()
        guarded.cancel()
