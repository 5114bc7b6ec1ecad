"""The three stage services on keras-cv's sd-v1 components (random weights, 128x128).

Each service takes tens of seconds and a few GB to build on a CPU; the three start
together (building is mostly single-threaded Python, so they overlap well on two cores)
and serve the module's tests.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from shared.service_process import ServiceProcess, run_services
from tests.utils.wire import NPZ_HEADERS, assert_error, npz, read_npz

pytestmark = pytest.mark.slow

SD_V1_ENV = {
    "SDSERVE_MODEL": "sd-v1",
    "SDSERVE_WEIGHTS": "random",
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
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ServiceProcess]]:
    logs = tmp_path_factory.mktemp("sd-v1")
    started = {
        name: ServiceProcess(
            f"services.{name}",
            SD_V1_ENV,
            log_path=logs / f"{name}.log",
            startup_timeout=STARTUP_TIMEOUT_S,
        )
        for name in ("text_encoder", "diffusion", "decoder")
    }
    with run_services(*started.values()):
        yield started


def check_info(client: httpx.Client, svc: ServiceProcess, component: str) -> None:
    info = client.get(f"{svc.url}/v1/info").json()
    assert info["ready"] is True
    assert info["family"] == "sd-v1"
    assert info["sizes"] == ["128x128"]
    assert info["random_weights"] is True
    assert "random" in info["weights"][component]


def test_text_encoder(client: httpx.Client, services: dict[str, ServiceProcess]) -> None:
    svc = services["text_encoder"]
    check_info(client, svc, "text_encoder")
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


def test_diffusion(client: httpx.Client, services: dict[str, ServiceProcess]) -> None:
    rng = np.random.default_rng(0)
    body = npz(
        {
            "context": rng.standard_normal((1, 77, CONTEXT_DIM)).astype(np.float32),
            "unconditional_context": rng.standard_normal((1, 77, CONTEXT_DIM)).astype(np.float32),
        }
    )
    svc = services["diffusion"]
    check_info(client, svc, "diffusion_model")
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


def test_decoder(client: httpx.Client, services: dict[str, ServiceProcess]) -> None:
    latent = np.random.default_rng(1).standard_normal((1, 16, 16, 4)).astype(np.float32)
    svc = services["decoder"]
    check_info(client, svc, "decoder")
    response = client.post(
        f"{svc.url}/v1/decode", content=npz({"latent": latent}), headers=NPZ_HEADERS
    )
    assert response.status_code == 200, response.text
    images = read_npz(response.content)["images"]
    assert images.shape == (1, 128, 128, 3)
    assert images.dtype == np.uint8
