"""Jobs over the three-endpoints stack of real processes: progress streams from the
remote diffusion service step by step, and DELETE frees its rows and skips the decode."""

from __future__ import annotations

import base64
import io
import json
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from shared.families import get_family
from shared.pipeline.stage_contracts import DENOISE
from shared.progress import STREAM_MEDIA_TYPE, TIMING_MEMBER, FrameReader, read_progress
from shared.service_process import ServiceProcess
from shared.wire import MEDIA_TYPE, TensorSpec, decode_npz, encode_npz
from tests.utils.tiny_stack import STAGE_NAMES


@pytest.fixture(scope="module")
def stack(tiny_stack) -> dict[str, ServiceProcess]:
    """The session's three-endpoints gateway ("central") and its stage services."""
    stages = {name: tiny_stack[name] for name in STAGE_NAMES}
    return {"central": tiny_stack["three-endpoints"], **stages}


def follow(url: str, timeout: float = 120) -> Iterator[tuple[float, str, dict[str, Any]]]:
    """(arrival time, event, data) for each Server-Sent Event, as it arrives."""
    name, data = "message", []
    with httpx.stream("GET", url, timeout=timeout) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                data.append(line.removeprefix("data: "))
            elif not line and data:
                yield time.monotonic(), name, json.loads("\n".join(data))
                name, data = "message", []


def decoder_calls(decoder: ServiceProcess) -> float:
    """How many decode model calls the decoder service has made (from /metrics)."""
    text = httpx.get(f"{decoder.url}/metrics").text
    match = re.search(r'^sdserve_batch_rows_count\{stage="decoder"\} (\S+)$', text, re.M)
    assert match, "the decoder's /metrics has no decode batch count"
    return float(match.group(1))


def diffusion_batching(diffusion: ServiceProcess) -> dict[str, Any]:
    batching: dict[str, Any] = httpx.get(f"{diffusion.url}/v1/info").json()["batching"]
    return batching


def test_progress_arrives_step_by_step_from_the_remote_diffusion_service(stack):
    gateway = stack["central"].url
    assert httpx.get(f"{gateway}/v1/info").json()["topology"] == "three-endpoints"
    request = {"prompt": "a lighthouse", "size": "128x128", "steps": 60, "seed": 21, "n": 2}
    submitted = httpx.post(f"{gateway}/v1/jobs", json=request)
    assert submitted.status_code == 202, submitted.text
    job = submitted.json()

    events = list(follow(gateway + job["events_url"]))
    names = [name for _, name, _ in events]
    assert names[0] == "queued" and names[-1] == "done"
    progress = [(t, data["step"]) for t, name, data in events if name == "progress"]
    assert [step for _, step in progress] == list(range(1, 61))  # each step, in order
    # They arrived as the steps ran, not in one burst at the end.
    first_at, last_at = progress[0][0], progress[-1][0]
    assert last_at - first_at > 0.3, f"60 steps arrived within {last_at - first_at:.3f}s"
    assert events[-1][0] >= last_at

    previews = [data for _, name, data in events if name == "preview"]
    assert [p["step"] for p in previews] == [6, 12, 18, 24, 30, 36, 42, 48, 54]
    image = previews[0]["images"][0]
    assert image.startswith("data:image/png;base64,") and len(previews[0]["images"]) == 2
    assert Image.open(io.BytesIO(base64.b64decode(image.split(",", 1)[1]))).size == (
        32,
        32,
    )  # the latent grid of 128x128

    result = events[-1][2]["result"]
    assert [item["seed"] for item in result["data"]] == [21, 22]
    assert set(result["timings"]) == {"text_encoder", "diffusion", "decoder"}
    assert result["timings"]["diffusion"]["compute_ms"] > 0
    # Streaming changed nothing about the pixels: same as the plain route.
    direct = httpx.post(f"{gateway}/v1/images/generations", json=request, timeout=120).json()
    assert result["data"] == direct["data"]
    status = httpx.get(gateway + job["url"]).json()
    assert status["status"] == "succeeded" and status["progress"] == {"step": 60, "total": 60}


def test_delete_cancels_the_remote_rows_and_skips_the_decode(stack):
    gateway, diffusion, decoder = stack["central"].url, stack["diffusion"], stack["decoder"]
    before = diffusion_batching(diffusion)["cancelled_requests"]
    decodes_before = decoder_calls(decoder)
    request = {"prompt": "a long one", "size": "128x128", "steps": 1000, "seed": 1}
    job = httpx.post(f"{gateway}/v1/jobs", json=request).json()

    seen = []
    for _, name, data in follow(gateway + job["events_url"]):
        seen.append(name)
        if name == "progress" and data["step"] >= 5:
            break
    deleted = httpx.delete(gateway + job["url"], timeout=30)
    assert deleted.status_code == 200, deleted.text
    body = deleted.json()
    assert body["status"] == "cancelled" and 5 <= body["progress"]["step"] < 1000
    assert "result" not in body

    deadline = time.monotonic() + 15
    while diffusion_batching(diffusion)["cancelled_requests"] == before:
        assert time.monotonic() < deadline, "the diffusion service never freed the rows"
        time.sleep(0.05)
    batching = diffusion_batching(diffusion)
    assert batching["cancelled_requests"] == before + 1
    assert batching["queue_depth"] == 0
    time.sleep(0.5)
    assert decoder_calls(decoder) == decodes_before  # nothing was decoded for it

    # A late subscriber replays the job to how it ended; GET says the same.
    late = [(name, data) for _, name, data in follow(gateway + job["events_url"])]
    assert late[0][0] == "queued" and late[-1][0] == "cancelled"
    assert [name for name, _ in late].count("progress") >= 5
    assert httpx.get(gateway + job["url"]).json()["status"] == "cancelled"


def test_the_diffusion_stream_route_frames_and_keeps_http_errors(stack):
    """The streamed variant itself: progress frames, then the result frame, which holds
    the same latent as the plain route; bad input is still an HTTP 4xx, not a 200."""
    diffusion = stack["diffusion"].url
    rng = np.random.default_rng(0)
    query = {"width": 64, "height": 64, "steps": 5, "seed": 4}

    def post(body: bytes, **extra: Any) -> httpx.Response:
        return httpx.post(
            f"{diffusion}/v1/denoise",
            params={**query, **extra},
            content=body,
            headers={"content-type": MEDIA_TYPE},
            timeout=60,
        )

    width = context_width(stack)
    context = rng.standard_normal((1, 77, width)).astype(np.float32)
    tensors = {"context": context, "unconditional_context": np.zeros_like(context)}
    streamed = post(encode_npz(tensors), stream="true", preview_every=2)
    assert streamed.status_code == 200
    assert streamed.headers["content-type"] == STREAM_MEDIA_TYPE
    frames = FrameReader(1 << 24).feed(streamed.content)
    kinds = "".join(kind for kind, _ in frames)
    assert kinds == "PPVPPVPR"  # progress 1..5, previews at 2 and 4, then the result
    assert [read_progress(payload) for kind, payload in frames if kind == "P"] == [
        (step, 5) for step in range(1, 6)
    ]
    spec = {
        **DENOISE.result_specs(get_family("tiny").spec),
        TIMING_MEMBER: TensorSpec("float64", (2,)),
    }
    result = decode_npz(frames[-1][1], spec, max_bytes=1 << 24)
    plain = post(encode_npz(tensors))
    assert plain.status_code == 200
    with np.load(io.BytesIO(plain.content), allow_pickle=False) as data:
        assert np.array_equal(result["latent"], data["latent"])
    assert result["seeds"].tolist() == [4] and plain.headers["x-seeds"] == "4"

    # Refused before the first step: an ordinary HTTP error with its status.
    bad = post(encode_npz({**tensors, "context": context[:, :10]}), stream="true")
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "context"
    unserved = post(encode_npz(tensors), stream="true", width=96, height=96)
    assert unserved.status_code == 422
    assert unserved.json()["error"]["type"] == "unsupported_size"


def context_width(stack: dict[str, ServiceProcess]) -> int:
    """The tiny family's context width, from the text encoder's answer."""
    response = httpx.post(
        f"{stack['text_encoder'].url}/v1/encode", json={"prompts": ["x"]}, timeout=60
    )
    assert response.status_code == 200, response.text
    with np.load(io.BytesIO(response.content), allow_pickle=False) as data:
        return int(data["context"].shape[-1])
