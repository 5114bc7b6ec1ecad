"""A real gateway under hostile bodies and images: refused cheaply, and /healthz keeps
answering while they are in flight.

The gateway serves the tiny model at 64x64, so uploads may be at most 128x128 (twice the
largest served side); the JSON cap is 256 KiB and the edits cap 16 MiB (the defaults).
"""

from __future__ import annotations

import base64
import io
import json
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image

from shared.service_process import ServiceProcess
from tests.utils.images import b64, blank_png, encoded

ENV = {
    "SDSERVE_MODEL": "tiny",
    "SDSERVE_SIZES": "64x64",
    "SDSERVE_MAX_STEPS": "4",
    "SDSERVE_DEFAULT_STEPS": "2",
    "SDSERVE_WARM_UP": "false",
}
EDITS_CAP = 16 * 1024 * 1024
HUGE = blank_png(4096, 4096)  # ~10 KB on the wire, 16 M pixels declared
# One colour compresses; noise makes an upload as large as its size allows.
NOISE = encoded(Image.frombytes("RGB", (128, 128), bytes(range(256)) * 192))


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    log = tmp_path_factory.mktemp("hostile") / "central.log"
    with ServiceProcess("central", ENV, log_path=log) as service:
        yield service


@pytest.fixture(scope="module")
def client(gateway: ServiceProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=60) as c:
        yield c


def edit(
    client: httpx.Client, form: str, image: bytes, mask: bytes | None = None
) -> httpx.Response:
    if form == "multipart":
        files = {"image": ("i", image), **({"mask": ("m", mask)} if mask else {})}
        return client.post("/v1/images/edits", data={"prompt": "x"}, files=files)
    body = {"prompt": "x", "image": b64(image), **({"mask": b64(mask)} if mask else {})}
    return client.post("/v1/images/edits", json=body)


def refusal(response: httpx.Response) -> tuple[int, str, str]:
    error = response.json()["error"]
    return response.status_code, error["param"], error["message"]


@pytest.mark.parametrize("form", ["multipart", "json"])
def test_hostile_images_are_422_naming_the_field(client: httpx.Client, form: str) -> None:
    fine = encoded(Image.new("RGBA", (64, 64)))
    status, param, message = refusal(edit(client, form, HUGE, HUGE))
    assert (status, param) == (422, "image") and "4096x4096; at most 128x128" in message
    for format in ("GIF", "BMP", "TIFF"):
        other = encoded(Image.new("RGB", (64, 64)), format)
        assert refusal(edit(client, form, fine, other))[:2] == (422, "mask"), format
        assert refusal(edit(client, form, other, None))[:2] == (422, "image"), format
    whole = encoded(Image.frombytes("RGB", (64, 64), bytes(range(256)) * 48))
    status, param, message = refusal(edit(client, form, whole[: len(whole) // 2]))
    assert (status, param, message) == (422, "image", "image is truncated or corrupt")
    status, param, message = refusal(edit(client, form, b"\x89PNG\r\n\x1a\n garbage"))
    assert (status, param) == (422, "image") and "is not an image" in message


def test_an_oversized_json_body_is_413_on_generations(client: httpx.Client) -> None:
    body = json.dumps({"prompt": "x", "padding": "x" * (1024 * 1024)}).encode()
    for content in (body, iter([body[i : i + 65536] for i in range(0, len(body), 65536)])):
        response = client.post(
            "/v1/images/generations", content=content, headers={"content-type": "application/json"}
        )
        assert refusal(response) == (413, "body", "request body exceeds 262144 bytes")


def test_an_edit_json_body_within_the_edits_limit_is_accepted(client: httpx.Client) -> None:
    # Over the JSON cap, as a real edit at the largest upload size can be; an ignored
    # field pads it to ~1 MiB.
    body = {"prompt": "x", "steps": 1, "size": "64x64", "image": b64(NOISE)}
    response = client.post("/v1/images/edits", json={**body, "padding": "A" * 2**20})
    assert response.status_code == 200, response.text
    assert Image.open(
        io.BytesIO(base64.b64decode(response.json()["data"][0]["b64_json"]))
    ).size == (
        64,
        64,
    )


def hostile_requests(client: httpx.Client) -> list[Callable[[], httpx.Response]]:
    """What each in-flight sender sends, again and again (each answered 4xx)."""
    values = b"[" + b"1," * (EDITS_CAP // 2 - 8) + b"1]"  # 8 M values, under the cap
    not_an_image = json.dumps({"prompt": "x", "image": "A" * (12 * 2**20)}).encode()
    json_headers = {"content-type": "application/json"}
    return [
        # The edit: two 4096x4096 PNGs, in both forms.
        lambda: edit(client, "multipart", HUGE, HUGE),
        lambda: edit(client, "json", HUGE, HUGE),
        # Noise at the largest upload size: decoded in full, then resized.
        lambda: edit(client, "json", NOISE, encoded(Image.new("RGB", (128, 128)), "TIFF")),
        # 16 MiB of JSON values on the edits route; 12 MiB of base64 that is no image.
        lambda: client.post("/v1/images/edits", content=values, headers=json_headers),
        lambda: client.post("/v1/images/edits", content=not_an_image, headers=json_headers),
        # 4 MiB of JSON, streamed (no Content-Length), on generations.
        lambda: client.post(
            "/v1/images/generations",
            content=iter([b"[" + b"1," * 2**20] * 2 + [b"1]"]),
            headers=json_headers,
        ),
    ]


def test_healthz_answers_within_100_ms_while_hostile_requests_are_in_flight(
    gateway: ServiceProcess,
) -> None:
    stop = threading.Event()
    answered: list[int] = []
    with httpx.Client(base_url=gateway.url, timeout=60) as sender:
        senders = hostile_requests(sender)

        def keep_sending(send: Callable[[], httpx.Response]) -> None:
            while not stop.is_set():
                try:
                    answered.append(send().status_code)
                except httpx.TransportError:
                    answered.append(0)  # a refused upload may close the connection

        with ThreadPoolExecutor(len(senders)) as pool:
            for send in senders:
                pool.submit(keep_sending, send)
            time.sleep(1.0)  # all of them under way
            latencies = []
            with httpx.Client(base_url=gateway.url, timeout=10) as probe:
                deadline = time.monotonic() + 6.0
                while time.monotonic() < deadline:
                    start = time.perf_counter()
                    assert probe.get("/healthz").status_code == 200
                    latencies.append(time.perf_counter() - start)
                    time.sleep(0.05)
            stop.set()
    median = statistics.median(latencies)
    p90 = statistics.quantiles(latencies, n=10)[-1]
    summary = ", ".join(
        f"{name} {seconds * 1000:.0f} ms"
        for name, seconds in (("median", median), ("p90", p90), ("max", max(latencies)))
    )
    assert answered and all(400 <= s < 500 for s in answered if s), sorted(set(answered))
    assert len(answered) >= len(senders), answered
    print(f"/healthz under hostile load: {summary}, {len(latencies)} probes")
    # Typically a median of 10-25 ms and a p90 of ~50 ms on two busy cores; parsing the
    # 16 MiB of values instead of refusing it gave a p90 of ~550 ms (stalls of ~0.7 s).
    assert median < 0.1, f"/healthz while hostile requests were in flight: {summary}"
    assert p90 < 0.25, f"/healthz while hostile requests were in flight: {summary}"
