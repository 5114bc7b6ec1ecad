"""The decoder service as a real process (tiny family, embedded weights)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from shared.service_process import ServiceProcess
from tests.utils.wire import (
    NPZ_HEADERS,
    assert_error,
    npy,
    npz,
    pickled_object_npy,
    raw_npz,
    read_npz,
)

from .stage_contract import StageContract

SERVICE_MODULE = "services.decoder"
ROUTE = "/v1/decode"


def latent(batch: int = 1, hw: int = 16, channels: int = 4, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, hw, hw, channels)).astype(np.float32)


def decode(
    client: httpx.Client, svc: ServiceProcess, body: bytes, headers: dict[str, str] | None = None
) -> httpx.Response:
    return client.post(
        f"{svc.url}{ROUTE}", content=body, headers=NPZ_HEADERS if headers is None else headers
    )


def images_of(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    arrays = read_npz(response.content)
    assert set(arrays) == {"images"}
    return arrays["images"]


class TestDecoderContract(StageContract):
    module = SERVICE_MODULE
    route = ROUTE
    service_name = "decoder"
    component = "decoder"

    def good_request(self) -> dict[str, Any]:
        return {"content": npz({"latent": latent()}), "headers": dict(NPZ_HEADERS)}

    def oversize_request(self) -> dict[str, Any]:
        # 8 x 40x40x4 float32: ~205 kB, just over the restricted service's 200 kB cap.
        return {"content": npz({"latent": latent(8, 40)}), "headers": dict(NPZ_HEADERS)}


# --- good calls -------------------------------------------------------------------------


@pytest.mark.parametrize(("hw", "size"), [(16, 64), (32, 128)])
@pytest.mark.parametrize("batch", [1, 2, 3])
def test_images_shape_and_dtype(
    client: httpx.Client, service: ServiceProcess, hw: int, size: int, batch: int
) -> None:
    images = images_of(decode(client, service, npz({"latent": latent(batch, hw)})))
    assert images.shape == (batch, size, size, 3)
    assert images.dtype == np.uint8


def test_deterministic(client: httpx.Client, service: ServiceProcess) -> None:
    body = npz({"latent": latent(2, seed=3)})
    assert decode(client, service, body).content == decode(client, service, body).content


def test_rows_are_independent(client: httpx.Client, service: ServiceProcess) -> None:
    both = latent(2, seed=4)
    pair = images_of(decode(client, service, npz({"latent": both})))
    second = images_of(decode(client, service, npz({"latent": both[1:]})))
    # uint8 after rounding: allow an off-by-one from batch-dependent kernels.
    assert np.abs(pair[1].astype(int) - second[0].astype(int)).max() <= 1
    assert not np.array_equal(pair[0], pair[1])


def test_fp16_latent_accepted(client: httpx.Client, service: ServiceProcess) -> None:
    value = latent(seed=5)
    half = images_of(decode(client, service, npz({"latent": value}, fp16=True)))
    rounded = value.astype(np.float16).astype(np.float32)
    full = images_of(decode(client, service, npz({"latent": rounded})))
    np.testing.assert_array_equal(half, full)


def test_response_has_timing_headers(client: httpx.Client, service: ServiceProcess) -> None:
    response = decode(client, service, npz({"latent": latent()}))
    assert float(response.headers["x-queue-ms"]) >= 0
    assert float(response.headers["x-compute-ms"]) > 0


# --- bad calls ----------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [3, 8, 1])
def test_wrong_channel_count_is_422(
    client: httpx.Client, service: ServiceProcess, channels: int
) -> None:
    body = npz({"latent": latent(channels=channels)})
    assert_error(decode(client, service, body), 422, param="latent")


@pytest.mark.parametrize("shape", [(16, 16, 4), (1, 1, 16, 16, 4), (4,)])
def test_wrong_rank_is_422(
    client: httpx.Client, service: ServiceProcess, shape: tuple[int, ...]
) -> None:
    body = npz({"latent": np.zeros(shape, np.float32)})
    assert_error(decode(client, service, body), 422, param="latent")


@pytest.mark.parametrize(("h", "w"), [(12, 12), (16, 32), (64, 64), (0, 0)])
def test_unsupported_latent_size_is_422(
    client: httpx.Client, service: ServiceProcess, h: int, w: int
) -> None:
    body = npz({"latent": np.zeros((1, h, w, 4), np.float32)})
    assert_error(decode(client, service, body), 422, param="latent")


def test_unsupported_size_type(client: httpx.Client, service: ServiceProcess) -> None:
    body = npz({"latent": latent(hw=24)})
    inner = assert_error(decode(client, service, body), 422, error_type="unsupported_size")
    assert inner["param"] == "latent"
    assert "96x96" in inner["message"]


@pytest.mark.parametrize("batch", [0, 9])
def test_batch_out_of_range_is_422(
    client: httpx.Client, service: ServiceProcess, batch: int
) -> None:
    body = npz({"latent": np.zeros((batch, 16, 16, 4), np.float32)})
    assert_error(decode(client, service, body), 422, param="latent")


@pytest.mark.parametrize("dtype", [np.float64, np.int32, np.uint8, ">f4"])
def test_wrong_dtype_is_422(client: httpx.Client, service: ServiceProcess, dtype: Any) -> None:
    body = raw_npz({"latent.npy": npy(latent().astype(dtype))})
    assert_error(decode(client, service, body), 422, param="latent")


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_is_422(client: httpx.Client, service: ServiceProcess, value: float) -> None:
    bad = latent()
    bad[0, 1, 2, 3] = value
    assert_error(decode(client, service, npz({"latent": bad})), 422, param="latent")


def test_missing_member_is_422(client: httpx.Client, service: ServiceProcess) -> None:
    assert_error(decode(client, service, raw_npz({})), 422, param="latent")


def test_extra_member_is_422(client: httpx.Client, service: ServiceProcess) -> None:
    body = npz({"latent": latent(), "context": np.zeros((1, 77, 128), np.float32)})
    assert_error(decode(client, service, body), 422, param="context")


def test_misnamed_member_is_422(client: httpx.Client, service: ServiceProcess) -> None:
    body = npz({"images": latent()})
    assert_error(decode(client, service, body), 422, param="images")


@pytest.mark.parametrize("content_type", ["application/json", "image/png", None])
def test_wrong_content_type_is_415(
    client: httpx.Client, service: ServiceProcess, content_type: str | None
) -> None:
    headers = {} if content_type is None else {"content-type": content_type}
    response = decode(client, service, npz({"latent": latent()}), headers=headers)
    assert_error(response, 415, param="body", error_type="unsupported_media_type")


@pytest.mark.parametrize("body", [b"", b"not an npz", npy(np.zeros((1, 16, 16, 4), np.float32))])
def test_not_npz_is_422(client: httpx.Client, service: ServiceProcess, body: bytes) -> None:
    assert_error(decode(client, service, body), 422, param="body")


def test_pickled_object_array_is_refused_unpickled(
    client: httpx.Client, service: ServiceProcess, tmp_path: Path
) -> None:
    control = tmp_path / "control-marker"
    np.load(io.BytesIO(pickled_object_npy(control)), allow_pickle=True)
    assert control.exists()  # the payload does run when unpickled

    marker = tmp_path / "server-marker"
    response = decode(client, service, raw_npz({"latent.npy": pickled_object_npy(marker)}))
    assert 400 <= response.status_code < 500
    assert_error(response, response.status_code, param="latent")
    assert not marker.exists()


def test_service_still_good_after_bad_calls(client: httpx.Client, service: ServiceProcess) -> None:
    assert images_of(decode(client, service, npz({"latent": latent()}))).shape == (1, 64, 64, 3)
