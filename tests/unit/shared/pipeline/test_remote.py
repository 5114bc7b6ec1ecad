"""The one remote stage over real HTTP: a stage's 503 keeps its Retry-After and makes the
stage refuse up front until then; a wrong answer is a bad upstream; a stage that is not
listening is unavailable. The far end is a small real server (uvicorn on a free port)
that answers as a full, a broken or a healthy decoder service would."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from shared.config import Settings
from shared.errors import QueueFull, UpstreamBadResponse, UpstreamUnavailable, error_body
from shared.families import get_family
from shared.pipeline.remote import RemoteStage
from shared.pipeline.stage_contracts import DECODE, DECODER
from shared.pipeline.types import DecodeRequest
from shared.service_process import free_port
from shared.wire import MEDIA_TYPE, encode_npz

SETTINGS = Settings(model="tiny", connect_timeout_s=1.0, read_timeout_s=5.0)
LATENT = np.zeros((2, 16, 16, 4), np.float32)


async def full(_: Request) -> Response:
    body = error_body("queue_full", "decoder queue is full")
    return JSONResponse(body, status_code=503, headers={"Retry-After": "7"})


async def one_row_short(_: Request) -> Response:
    images = np.zeros((1, 64, 64, 3), np.uint8)  # asked for 2
    return Response(encode_npz({"images": images}), media_type=MEDIA_TYPE)


async def healthy(_: Request) -> Response:
    images = np.full((2, 64, 64, 3), 9, np.uint8)
    headers = {"X-Queue-Ms": "1.5", "X-Compute-Ms": "20"}
    return Response(encode_npz({"images": images}), media_type=MEDIA_TYPE, headers=headers)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    app = Starlette(
        routes=[
            Route("/full/v1/decode", full, methods=["POST"]),
            Route("/short/v1/decode", one_row_short, methods=["POST"]),
            Route("/healthy/v1/decode", healthy, methods=["POST"]),
        ]
    )
    port = free_port()
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        assert time.monotonic() < deadline, "test server did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    uv.should_exit = True
    thread.join(10)


def decode_at(url: str) -> RemoteStage:
    return RemoteStage(DECODER, url, SETTINGS, get_family("tiny").spec)


def test_a_full_stage_keeps_its_retry_after_and_is_refused_up_front(server: str) -> None:
    async def main() -> None:
        stage = decode_at(f"{server}/full")
        with pytest.raises(QueueFull) as refused:
            await stage.run(DECODE, DecodeRequest(LATENT))
        assert refused.value.retry_after_s == 7
        assert refused.value.headers() == {"Retry-After": "7"}
        # Until then the chain's admission refuses before any stage works.
        with pytest.raises(QueueFull) as early:
            stage.admit()
        assert 1 <= early.value.retry_after_s <= 7
        await stage.close()

    asyncio.run(main())


def test_an_answer_with_the_wrong_rows_is_a_bad_upstream(server: str) -> None:
    async def main() -> None:
        stage = decode_at(f"{server}/short")
        with pytest.raises(UpstreamBadResponse, match="images has 1 rows of 2"):
            await stage.run(DECODE, DecodeRequest(LATENT))
        await stage.close()

    asyncio.run(main())


def test_a_healthy_answer_comes_back_typed_with_its_timing(server: str) -> None:
    async def main() -> None:
        stage = decode_at(f"{server}/healthy")
        stage.admit()  # never refused: it has not said it is full
        result = await stage.run(DECODE, DecodeRequest(LATENT))
        assert result.images.shape == (2, 64, 64, 3) and int(result.images.max()) == 9
        assert result.timing is not None
        assert (result.timing.queue_ms, result.timing.compute_ms) == (1.5, 20.0)
        await stage.close()

    asyncio.run(main())


def test_a_stage_nobody_listens_on_is_unavailable() -> None:
    async def main() -> None:
        stage = decode_at(f"http://127.0.0.1:{free_port()}")
        with pytest.raises(UpstreamUnavailable, match="unreachable"):
            await stage.run(DECODE, DecodeRequest(LATENT))
        ok, why = await stage.ready()
        assert not ok and "unreachable" in why
        await stage.close()

    asyncio.run(main())
