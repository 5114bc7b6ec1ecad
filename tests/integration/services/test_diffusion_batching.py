"""Continuous batching in a real diffusion service: shared calls, cancellation, 503."""

from __future__ import annotations

import asyncio
import time

import httpx
import numpy as np
import pytest

from shared.config import Settings
from shared.errors import QueueFull
from shared.pipeline.chain import Chain
from shared.pipeline.types import DenoiseParams, GenerationParams
from shared.service_process import ServiceProcess, run_services
from tests.utils.wire import npz, read_npz

from .common import TINY_ENV

NPZ = {"content-type": "application/x-npz"}


def _body(seed: int = 0) -> bytes:
    context = np.random.default_rng(seed).standard_normal((1, 77, 128)).astype(np.float32)
    return npz({"context": context, "unconditional_context": np.zeros_like(context)})


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    logs = tmp_path_factory.mktemp("batching")
    batching = ServiceProcess(
        "services.diffusion",
        {**TINY_ENV, "SDSERVE_MAX_STEPS": "1000"},
        log_path=logs / "batching.log",
    )
    small_queue = ServiceProcess(
        "services.diffusion",
        {**TINY_ENV, "SDSERVE_QUEUE_SIZE": "1", "SDSERVE_MAX_STEPS": "1000"},
        log_path=logs / "small-queue.log",
    )
    with run_services(batching, small_queue):
        yield batching, small_queue


def _info(service) -> dict:
    return httpx.get(f"{service.url}/v1/info").json()["batching"]


def test_concurrent_requests_share_unet_calls_and_match_solo(services):
    service, _ = services
    query = {"width": 64, "height": 64, "steps": 30, "seed": 5}
    solo = httpx.post(
        f"{service.url}/v1/denoise", params=query, content=_body(), headers=NPZ, timeout=120
    )
    solo_latent = read_npz(solo.content)["latent"]
    before = _info(service)

    async def burst():
        async with httpx.AsyncClient(base_url=service.url, timeout=120) as client:
            return await asyncio.gather(
                *[
                    client.post(
                        "/v1/denoise",
                        params={**query, "seed": 5 + i},
                        content=_body(i),
                        headers=NPZ,
                    )
                    for i in range(4)
                ]
            )

    responses = asyncio.run(burst())
    assert all(r.status_code == 200 for r in responses)
    after = _info(service)
    assert after["max_rows_in_a_call"] > 1
    calls = after["model_calls"] - before["model_calls"]
    assert calls < 4 * 30  # served one at a time it would take 120 calls
    # Batch composition changes float rounding only (oneDNN picks kernels by batch size).
    batched = read_npz(responses[0].content)["latent"]
    scale = float(np.abs(solo_latent).max())
    assert float(np.abs(batched - solo_latent).max()) <= 1e-4 * scale


def test_client_that_disconnects_frees_its_rows(services):
    service, _ = services
    before = _info(service)["cancelled_requests"]
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{service.url}/v1/denoise",
            params={"width": 128, "height": 128, "steps": 1000, "seed": 1},
            content=_body(),
            headers=NPZ,
            timeout=httpx.Timeout(10, read=1.0),
        )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        info = _info(service)
        if info["cancelled_requests"] > before and info["queue_depth"] == 0:
            break
        time.sleep(0.2)
    assert info["cancelled_requests"] == before + 1
    assert info["queue_depth"] == 0


def test_full_queue_answers_503_with_retry_after(services):
    _, service = services

    async def overload():
        async with httpx.AsyncClient(base_url=service.url, timeout=120) as client:
            return await asyncio.gather(
                *[
                    client.post(
                        "/v1/denoise",
                        params={"width": 64, "height": 64, "steps": 200, "seed": i},
                        content=_body(i),
                        headers=NPZ,
                    )
                    for i in range(4)
                ]
            )

    statuses = [r.status_code for r in asyncio.run(overload())]
    assert 200 in statuses and 503 in statuses, statuses
    assert set(statuses) <= {200, 503}
    refused = next(r for r in asyncio.run(overload()) if r.status_code == 503)
    assert refused.headers["retry-after"]
    assert refused.json()["error"]["type"] == "queue_full"


def test_the_gateway_refuses_before_the_text_encoder_while_diffusion_is_full(services):
    _, service = services
    settings = Settings(model="tiny", sizes=[(64, 64)], max_steps=1000, diffusion_url=service.url)
    chain = Chain(settings)  # hybrid: text encoder and decoder here, diffusion remote
    chain.load()
    encoder_stats = chain.stages["text_encoder"].batcher.stats
    params = GenerationParams(
        "a red square",
        None,
        DenoiseParams(width=64, height=64, steps=2, guidance_scale=7.5, seed=1),
    )

    async def main() -> None:
        async with httpx.AsyncClient(base_url=service.url, timeout=120) as client:
            long = asyncio.create_task(
                client.post(
                    "/v1/denoise",
                    params={"width": 64, "height": 64, "steps": 1000, "seed": 1},
                    content=_body(),
                    headers=NPZ,
                )
            )
            while _info(service)["queue_depth"] == 0:
                assert not long.done(), long
                await asyncio.sleep(0.05)
            with pytest.raises(QueueFull):  # the stage's own 503, after text encoding
                await chain.generate(params)
            calls = encoder_stats.model_calls
            with pytest.raises(QueueFull) as refused:  # now refused at the gateway
                await chain.generate(params)
            assert encoder_stats.model_calls == calls
            assert refused.value.retry_after_s >= 1
            long.cancel()  # disconnects: the stage frees the rows at its next step
        await chain.aclose()

    asyncio.run(main())
