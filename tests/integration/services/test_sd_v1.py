"""The three stage services on keras-cv's sd-v1 components serving a checkpoint converted
by `sdserve convert` (the session's `sd_v1_checkpoint`: SD 1.5's architecture, seeded
random weights, 128x128), and a gateway over them answering a generation over HTTP.

Each service takes tens of seconds and a few GB to build on a CPU; the three start
together (building is mostly single-threaded Python, so they overlap well on two cores)
and serve the module's tests. That the converted weights compute what diffusers computes
is proven in tests/integration/shared/convert/test_reference_sd_v1.py; here, that a
directory `sdserve convert` wrote is what the real processes load and serve.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
from PIL import Image

from shared.service_process import ServiceProcess, run_services
from tests.utils.wire import NPZ_HEADERS, assert_error, npz, read_npz

pytestmark = pytest.mark.slow

SD_V1_ENV = {
    "SDSERVE_MODEL": "sd-v1",
    "SDSERVE_SIZES": "128x128",
    "SDSERVE_WARM_UP": "false",  # one request per service: tracing it once is enough
}
STARTUP_TIMEOUT_S = 450.0
CONTEXT_DIM = 768


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=300.0) as c:
        yield c


@pytest.fixture(scope="module")
def weights(sd_v1_checkpoint: SimpleNamespace) -> Path:
    return sd_v1_checkpoint.out


@pytest.fixture(scope="module")
def services(
    tmp_path_factory: pytest.TempPathFactory, weights: Path
) -> Iterator[dict[str, ServiceProcess]]:
    logs = tmp_path_factory.mktemp("sd-v1")
    env = {**SD_V1_ENV, "SDSERVE_WEIGHTS": str(weights)}
    started = {
        name: ServiceProcess(
            f"services.{name}",
            env,
            log_path=logs / f"{name}.log",
            startup_timeout=STARTUP_TIMEOUT_S,
        )
        for name in ("text_encoder", "diffusion", "decoder")
    }
    with run_services(*started.values()):
        gateway = ServiceProcess(
            "central",
            {
                **env,
                **{f"SDSERVE_{name.upper()}_URL": svc.url for name, svc in started.items()},
            },
            log_path=logs / "central.log",
        )
        with run_services(gateway):
            yield {**started, "gateway": gateway}


def check_info(client: httpx.Client, svc: ServiceProcess, component: str, weights: Path) -> None:
    info = client.get(f"{svc.url}/v1/info").json()
    assert info["ready"] is True
    assert info["family"] == "sd-v1"
    assert info["sizes"] == ["128x128"]
    assert info["random_weights"] is False
    # The converted file by its name (never a path on the server) and its checksum; an
    # epsilon UNet's label says no more (a v-prediction one adds "predicts v_prediction").
    label = info["weights"][component]
    assert label.startswith(f"directory:{component}.safetensors (sha256 "), label
    assert str(weights.parent) not in label and "/" not in label and "predicts" not in label


def test_text_encoder(
    client: httpx.Client, services: dict[str, ServiceProcess], weights: Path
) -> None:
    svc = services["text_encoder"]
    check_info(client, svc, "text_encoder", weights)
    response = client.post(
        f"{svc.url}/v1/encode", json={"prompts": ["a watercolour of a lighthouse"]}
    )
    assert response.status_code == 200, response.text
    arrays = read_npz(response.content)
    for name in ("context", "unconditional_context"):
        assert arrays[name].shape == (1, 77, CONTEXT_DIM)
        assert arrays[name].dtype == np.float32
        assert np.isfinite(arrays[name]).all()
    assert arrays["truncated"].tolist() == [False]


def test_diffusion(
    client: httpx.Client, services: dict[str, ServiceProcess], weights: Path
) -> None:
    rng = np.random.default_rng(0)
    body = npz(
        {
            "context": rng.standard_normal((1, 77, CONTEXT_DIM)).astype(np.float32),
            "unconditional_context": rng.standard_normal((1, 77, CONTEXT_DIM)).astype(np.float32),
        }
    )
    svc = services["diffusion"]
    check_info(client, svc, "diffusion_model", weights)
    query = {"width": 128, "height": 128, "steps": 2, "seed": 5}
    response = client.post(f"{svc.url}/v1/denoise", content=body, params=query, headers=NPZ_HEADERS)
    assert response.status_code == 200, response.text
    latent = read_npz(response.content)["latent"]
    assert latent.shape == (1, 16, 16, 4)
    assert latent.dtype == np.float32
    assert np.isfinite(latent).all()
    assert response.headers["x-seeds"] == "5"
    # The tiny family's context width is refused by sd-v1.
    tiny_ctx = npz(
        {
            "context": np.zeros((1, 77, 128), np.float32),
            "unconditional_context": np.zeros((1, 77, 128), np.float32),
        }
    )
    refused = client.post(
        f"{svc.url}/v1/denoise", content=tiny_ctx, params=query, headers=NPZ_HEADERS
    )
    assert_error(refused, 422, param="context")


def test_decoder(client: httpx.Client, services: dict[str, ServiceProcess], weights: Path) -> None:
    latent = np.random.default_rng(1).standard_normal((1, 16, 16, 4)).astype(np.float32)
    svc = services["decoder"]
    check_info(client, svc, "decoder", weights)
    response = client.post(
        f"{svc.url}/v1/decode", content=npz({"latent": latent}), headers=NPZ_HEADERS
    )
    assert response.status_code == 200, response.text
    images = read_npz(response.content)["images"]
    assert images.shape == (1, 128, 128, 3)
    assert images.dtype == np.uint8


def test_gateway_generates_from_the_converted_checkpoint(
    client: httpx.Client, services: dict[str, ServiceProcess], weights: Path
) -> None:
    """What `sdserve up --model sd-v1 --weights DIR --text-encoder-url ...` serves: one
    generation through the gateway and the three services, over HTTP."""
    gateway = services["gateway"]
    body = {"prompt": "a lighthouse on a cliff", "size": "128x128", "steps": 2, "seed": 3}
    response = client.post(f"{gateway.url}/v1/images/generations", json=body)
    assert response.status_code == 200, response.text
    served = response.json()
    assert served["weights"] == f"directory {weights.name}"
    png = base64.b64decode(served["data"][0]["b64_json"])
    image = np.asarray(Image.open(io.BytesIO(png)))
    assert image.shape == (128, 128, 3) and image.std() > 0
    info = client.get(f"{gateway.url}/v1/info").json()
    assert info["family"] == "sd-v1" and info["random_weights"] is False
    assert info["weights"] == f"directory {weights.name}"
