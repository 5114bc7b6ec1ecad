"""Batch buckets, end to end: an all-in-one gateway with XLA on that warms up every
bucket serves a mixed load (n, prompts with and without negatives, guidance on and off,
txt2img and img2img, concurrent) without tracing or compiling a graph
(sdserve_graph_builds_after_ready). One size: each served size has its own runners under
the same mechanism, and every size adds about a minute of XLA compilation here."""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

from shared.service_process import ServiceProcess, run_services

# Warm-up on (the point); max batch 2 keeps the buckets (and warm-up) few: text encoder
# and batched-CFG UNet 1, 2, 4 rows; decoder and image encoder 1, 2.
ENV = {
    "SDSERVE_MODEL": "tiny",
    "SDSERVE_SIZES": "64x64",
    "SDSERVE_WARM_UP": "true",
    "SDSERVE_MAX_BATCH": "2",
    "SDSERVE_MAX_IMAGES_PER_REQUEST": "2",
    # XLA compiles once per input shape: the case buckets are for (without XLA, Keras's
    # shape-relaxed tracing already serves most new batch sizes without a retrace).
    "SDSERVE_XLA": "on",
}
BUILDS = re.compile(r'^sdserve_graph_builds_after_ready_total\{kind="(\w+)",stage="(\w+)"\} (\S+)$')


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    logs = tmp_path_factory.mktemp("warm-buckets")
    service = ServiceProcess("central", ENV, log_path=logs / "central.log")
    with run_services(service):
        yield service


def _builds(url: str) -> dict[tuple[str, str], float]:
    text = httpx.get(f"{url}/metrics").text
    found: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if match := BUILDS.match(line):
            found[(match[2], match[1])] = float(match[3])
    return found


def _png(size: int) -> bytes:
    y, x = np.mgrid[0:size, 0:size]
    pixels = np.stack([x * 4 % 256, y * 4 % 256, (x + y) % 256], axis=-1).astype("uint8")
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_mixed_load_after_warm_up_builds_no_graph(gateway: ServiceProcess) -> None:
    before = _builds(gateway.url)
    stages = {stage for stage, _ in before}
    assert stages == {"text_encoder", "diffusion", "decoder", "image_encoder"}
    assert set(before.values()) == {0.0}

    generations = [
        {"prompt": "a red door", "size": "64x64", "n": 1, "steps": 3, "seed": 1},
        {"prompt": "a boat", "negative_prompt": "fog", "size": "64x64", "n": 2, "steps": 4},
        {"prompt": "a cat", "size": "64x64", "n": 2, "steps": 3, "seed": 2},
        {"prompt": "a tree", "size": "64x64", "n": 1, "steps": 2, "guidance_scale": 0},
    ]

    async def load() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=120) as client:
            calls = [client.post("/v1/images/generations", json=body) for body in generations]
            calls += [
                client.post(
                    "/v1/images/edits",
                    data={"prompt": "a red door", "n": str(n), "steps": "3", "strength": "0.8"},
                    files={"image": ("image.png", _png(size), "image/png")},
                )
                for n, size in ((1, 64), (2, 64))
            ]
            return await asyncio.gather(*calls)

    responses = asyncio.run(load())
    assert [r.status_code for r in responses] == [200] * len(responses), [
        r.text for r in responses if r.status_code != 200
    ]
    after = _builds(gateway.url)
    assert after == {key: 0.0 for key in before}
