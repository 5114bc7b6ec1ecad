"""The gateway over real processes: three topologies, same bytes; faults named by stage."""

from __future__ import annotations

import base64
import io
import os
import signal
import time
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image

from shared.service_process import ServiceProcess, free_port, run_services
from tests.utils.images import blank_png

TINY = {"SDSERVE_MODEL": "tiny", "SDSERVE_SIZES": "64x64,128x128", "SDSERVE_WARM_UP": "false"}
REQUEST = {
    "prompt": "a lighthouse in a storm",
    "negative_prompt": "blurry",
    "n": 2,
    "size": "64x64",
    "steps": 4,
    "guidance_scale": 6.0,
    "seed": 1234,
    "response_format": "b64_json",
}


@pytest.fixture(scope="module")
def gateways(tiny_stack) -> dict[str, ServiceProcess]:
    """The session's tiny stack: one gateway per topology over the same stage services."""
    return {name: tiny_stack[name] for name in ("all-in-one", "three-endpoints", "hybrid")}


def _pngs(response: httpx.Response) -> list[bytes]:
    assert response.status_code == 200, response.text
    return [base64.b64decode(item["b64_json"]) for item in response.json()["data"]]


# DDIM (the default), and Euler ancestral: its fresh noise every step is drawn from each
# image's seed, so it too must give the same bytes wherever the diffusion stage runs.
@pytest.mark.parametrize(("sampler", "ran"), [(None, "ddim"), ("Euler a", "euler_ancestral")])
def test_three_topologies_return_byte_identical_pngs(gateways, sampler, ran):
    request = REQUEST if sampler is None else {**REQUEST, "sampler": sampler}
    results = {}
    for topology, gateway in gateways.items():
        info = httpx.get(f"{gateway.url}/v1/info").json()
        assert info["topology"] == topology
        response = httpx.post(f"{gateway.url}/v1/images/generations", json=request, timeout=120)
        body = response.json()
        assert [item["seed"] for item in body["data"]] == [1234, 1235]
        assert set(body["timings"]) == {"text_encoder", "diffusion", "decoder"}
        assert body["model"] == "tiny" and body["weights"] == "embedded"
        assert body["sampler"] == ran
        results[topology] = _pngs(response)
    first = results["all-in-one"]
    assert first[0] != first[1]  # different seeds, different images
    for topology, pngs in results.items():
        assert pngs == first, f"{topology} differs from all-in-one"
    image = Image.open(io.BytesIO(first[0]))
    assert image.size == (64, 64) and image.mode == "RGB"


def test_hugging_face_route_is_identical_across_topologies(gateways):
    payload = {
        "inputs": "a red bicycle",
        "parameters": {"height": 128.0, "width": 128.0, "num_inference_steps": 3, "seed": 9},
    }
    bodies = []
    for gateway in gateways.values():
        response = httpx.post(gateway.url + "/", json=payload, timeout=120)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "image/png"
        assert response.headers["x-seed"] == "9"
        bodies.append(response.content)
    assert bodies[0] == bodies[1] == bodies[2]
    assert Image.open(io.BytesIO(bodies[0])).size == (128, 128)


def test_openai_client_gets_pngs(gateways):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=gateways["three-endpoints"].url + "/v1", api_key="unused")
    result = client.images.generate(
        prompt="a cat in a hat", size="64x64", n=2, response_format="b64_json"
    )
    assert len(result.data) == 2
    for item in result.data:
        assert Image.open(io.BytesIO(base64.b64decode(item.b64_json))).size == (64, 64)
    # The openai client omits SD fields (defaults apply); its model picks one of ours, and
    # one this gateway does not serve is refused by name.
    client.images.generate(model="tiny", prompt="x", size="64x64", n=1)
    with pytest.raises(openai.NotFoundError, match="dall-e-2"):
        client.images.generate(model="dall-e-2", prompt="x", size="64x64", n=1)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "x", "size": "100x100"}, "size"),
        ({"prompt": "x", "size": "huge"}, "size"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x", "n": 0}, "n"),
        ({"prompt": "x", "n": 50}, "n"),
        ({"prompt": "x", "steps": 10_000}, "steps"),
        ({"prompt": "x", "guidance_scale": -1}, "guidance_scale"),
        ({"prompt": "x", "seed": -5}, "seed"),
        ({"prompt": "x", "response_format": "jpeg"}, "response_format"),
        ({"n": 1}, "prompt"),
    ],
)
def test_bad_requests_are_4xx_naming_the_field(gateways, body, param):
    response = httpx.post(f"{gateways['hybrid'].url}/v1/images/generations", json=body)
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["error"]["param"] == param


def test_readyz_reports_each_stage(gateways):
    body = httpx.get(f"{gateways['hybrid'].url}/readyz").json()
    assert body["status"] == "ready"
    assert body["stages"]["diffusion"].endswith("(remote)")
    assert body["stages"]["text_encoder"].endswith("(local)")


# The lone diffusion service's gateway waits 3 s for an answer: a request that traced its
# graph first could take longer on a loaded machine.
WARMED = {**TINY, "SDSERVE_WARM_UP": "true"}


@pytest.fixture
def lone_diffusion(tmp_path) -> Iterator[tuple[ServiceProcess, ServiceProcess]]:
    """A diffusion service of its own (on a fixed port, so it can come back) + a gateway."""
    port = free_port()
    diffusion = ServiceProcess(
        "services.diffusion", WARMED, port=port, log_path=tmp_path / "diffusion.log"
    )
    gateway = ServiceProcess(
        "central",
        {
            **TINY,
            "SDSERVE_DIFFUSION_URL": f"http://127.0.0.1:{port}",
            "SDSERVE_READ_TIMEOUT_S": "3",
            "SDSERVE_CONNECT_TIMEOUT_S": "1",
        },
        log_path=tmp_path / "central.log",
    )
    with run_services(diffusion, gateway):
        yield diffusion, gateway


SLOW_REQUEST = {"prompt": "slow", "size": "128x128", "steps": 100, "seed": 1}


def _post_while(gateway: ServiceProcess, during) -> tuple[httpx.Response, float]:
    import threading

    timer = threading.Timer(0.5, during)
    timer.start()
    started = time.monotonic()
    try:
        response = httpx.post(f"{gateway.url}/v1/images/generations", json=SLOW_REQUEST, timeout=60)
    finally:
        timer.cancel()
    return response, time.monotonic() - started


def test_killed_stage_is_named_then_recovers(lone_diffusion):
    diffusion, gateway = lone_diffusion
    response, elapsed = _post_while(gateway, lambda: os.kill(diffusion.proc.pid, signal.SIGKILL))
    assert response.status_code in (502, 503), response.text
    error = response.json()["error"]
    assert "diffusion" in error["message"]
    assert elapsed < 10

    # While it is down: a clear 503 naming the stage, quickly.
    down = httpx.post(f"{gateway.url}/v1/images/generations", json={"prompt": "x"}, timeout=30)
    assert down.status_code == 503 and "diffusion" in down.json()["error"]["message"]
    assert httpx.get(f"{gateway.url}/readyz").status_code == 503

    diffusion.stop()
    with ServiceProcess("services.diffusion", WARMED, port=diffusion.port):  # back, same port
        ok = httpx.post(f"{gateway.url}/v1/images/generations", json={"prompt": "x"}, timeout=60)
        assert ok.status_code == 200, ok.text


def test_stalled_stage_times_out_with_504(lone_diffusion):
    diffusion, gateway = lone_diffusion
    pid = diffusion.proc.pid
    try:
        response, elapsed = _post_while(gateway, lambda: os.kill(pid, signal.SIGSTOP))
    finally:
        os.kill(pid, signal.SIGCONT)
    assert response.status_code == 504, response.text
    assert "diffusion" in response.json()["error"]["message"]
    assert elapsed < 3 + 5  # the read timeout, plus slack for a loaded machine


def test_hugging_face_inference_client_gets_an_image(gateways):
    hub = pytest.importorskip("huggingface_hub")
    client = hub.InferenceClient(model=gateways["all-in-one"].url)
    image = client.text_to_image(
        "a red bicycle", height=128, width=128, num_inference_steps=3, seed=9
    )
    assert image.size == (128, 128)
    # Same request as the raw-route test above: same pixels.
    raw = httpx.post(
        gateways["all-in-one"].url + "/",
        json={
            "inputs": "a red bicycle",
            "parameters": {"height": 128, "width": 128, "num_inference_steps": 3, "seed": 9},
        },
        timeout=120,
    )
    assert image.tobytes() == Image.open(io.BytesIO(raw.content)).convert("RGB").tobytes()


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _edit_image(size=64) -> Image.Image:
    import numpy as np

    y, x = np.mgrid[0:size, 0:size]
    pixels = np.stack([x * 4, y * 4, (x + y) * 2], axis=-1).astype("uint8")
    return Image.fromarray(pixels)


def _openai_mask(size=64) -> Image.Image:
    """Opaque everywhere except a transparent square: OpenAI repaints alpha == 0."""
    mask = Image.new("RGBA", (size, size), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (16, 16, 48, 40))
    return mask


EDIT_FIELDS = {"prompt": "a red door", "n": "2", "steps": "5", "seed": "77", "strength": "0.9"}


def test_edits_are_byte_identical_across_topologies(gateways):
    results = {}
    for topology, gateway in gateways.items():
        response = httpx.post(
            f"{gateway.url}/v1/images/edits",
            data={**EDIT_FIELDS, "num_resamples": "2"},
            files={
                "image": ("image.png", _png(_edit_image()), "image/png"),
                "mask": ("mask.png", _png(_openai_mask()), "image/png"),
            },
            timeout=120,
        )
        body = response.json()
        assert "image_encoder" in body["timings"], body
        results[topology] = _pngs(response)
        assert [d["seed"] for d in body["data"]] == [77, 78]
    assert results["all-in-one"] == results["three-endpoints"] == results["hybrid"]

    # Without a mask it is image to image, and differs from the inpainting.
    img2img = httpx.post(
        f"{gateways['hybrid'].url}/v1/images/edits",
        data=EDIT_FIELDS,
        files={"image": ("image.png", _png(_edit_image()), "image/png")},
        timeout=120,
    )
    assert _pngs(img2img) != results["hybrid"]


def test_json_edit_with_white_mask_matches_multipart_with_transparent_mask(gateways):
    grey = Image.new("L", (64, 64), 0)
    grey.paste(255, (16, 16, 48, 40))  # white = repaint, the same square as _openai_mask
    gateway = gateways["three-endpoints"]
    as_json = httpx.post(
        f"{gateway.url}/v1/images/edits",
        json={
            **{k: v for k, v in EDIT_FIELDS.items()},
            "n": 1,
            "image": base64.b64encode(_png(_edit_image())).decode(),
            "mask": base64.b64encode(_png(grey)).decode(),
        },
        timeout=120,
    )
    as_multipart = httpx.post(
        f"{gateway.url}/v1/images/edits",
        data={**EDIT_FIELDS, "n": "1"},
        files={
            "image": ("image.png", _png(_edit_image()), "image/png"),
            "mask": ("mask.png", _png(_openai_mask()), "image/png"),
        },
        timeout=120,
    )
    assert _pngs(as_json) == _pngs(as_multipart)


def test_openai_client_images_edit(gateways):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=gateways["hybrid"].url + "/v1", api_key="unused")
    result = client.images.edit(
        image=("image.png", _png(_edit_image()), "image/png"),
        mask=("mask.png", _png(_openai_mask()), "image/png"),
        prompt="a red door",
        n=1,
        size="64x64",
        response_format="b64_json",
    )
    assert Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json))).size == (64, 64)


@pytest.mark.parametrize(
    ("files", "data", "status", "param"),
    [
        ({"image": ("x.png", b"not an image", "image/png")}, {}, 422, "image"),
        (
            {
                "image": ("x.png", _png(_edit_image()), "image/png"),
                "mask": ("m.png", _png(_openai_mask(32)), "image/png"),
            },
            {},
            422,
            "mask",
        ),
        ({"image": ("x.png", _png(_edit_image(96)), "image/png")}, {}, 422, "image"),
        ({"image": ("x.png", _png(_edit_image()), "image/png")}, {"size": "96x96"}, 422, "size"),
        (
            {"image": ("x.png", _png(_edit_image()), "image/png")},
            {"strength": "0"},
            422,
            "strength",
        ),
        (
            {"image": ("x.png", _png(_edit_image()), "image/png")},
            {"strength": "2"},
            422,
            "strength",
        ),
        (
            # Refused from its header: more than twice the largest served side.
            {"image": ("x.png", blank_png(5000, 5000), "image/png")},
            {},
            422,
            "image",
        ),
        (
            {
                "image": ("x.png", _png(_edit_image()), "image/png"),
                "mask": ("m.png", _png(Image.new("L", (64, 64))), "image/png"),
            },
            {},
            422,
            "mask",
        ),
        ({}, {}, 422, "image"),
    ],
)
def test_bad_edits_are_4xx_naming_the_field(gateways, files, data, status, param):
    response = httpx.post(
        f"{gateways['all-in-one'].url}/v1/images/edits",
        data={"prompt": "x", **data},
        files=files or {"unused": ("u.txt", b"", "text/plain")},
        timeout=60,
    )
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == param


def _metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 if absent)."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        if head.split("{")[0] != name:
            continue
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            return float(value)
    return 0.0


def test_metrics_after_one_request(gateways):
    gateway = gateways["all-in-one"]
    before = httpx.get(f"{gateway.url}/metrics").text
    response = httpx.post(
        f"{gateway.url}/v1/images/generations", json={"prompt": "m", "steps": 3}, timeout=60
    )
    assert response.status_code == 200
    text = httpx.get(f"{gateway.url}/metrics").text
    route = {"route": "/v1/images/generations", "status": "200"}
    assert _metric(text, "sdserve_http_requests_total", **route) == (
        _metric(before, "sdserve_http_requests_total", **route) + 1
    )
    assert _metric(text, "sdserve_http_request_duration_seconds_count", route=route["route"]) >= 1
    for stage in ("text_encoder", "diffusion", "decoder"):
        assert _metric(text, "sdserve_batch_rows_count", stage=stage) >= 1, stage
        assert _metric(text, "sdserve_model_queue_seconds_count", stage=stage) >= 1, stage
        assert f'sdserve_queue_depth{{stage="{stage}"}}' in text
    assert 'sdserve_model_info{family="tiny"' in text
    assert "sdserve_http_requests_in_flight" in text
