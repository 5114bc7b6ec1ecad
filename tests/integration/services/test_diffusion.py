"""The diffusion service as a real process (tiny family, embedded weights)."""

from __future__ import annotations

import io
import zipfile
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

SERVICE_MODULE = "services.diffusion"
ROUTE = "/v1/denoise"
CONTEXT_SHAPE = (77, 128)
STEPS = 2
MAX_SEED = 2**32 - 1


def contexts(batch: int = 1, seed: int = 0, dtype: Any = np.float32) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "context": rng.standard_normal((batch, *CONTEXT_SHAPE)).astype(dtype),
        "unconditional_context": rng.standard_normal((batch, *CONTEXT_SHAPE)).astype(dtype),
    }


def params(**overrides: Any) -> dict[str, Any]:
    return {"width": 64, "height": 64, "steps": STEPS, "seed": 7, **overrides}


def denoise(
    client: httpx.Client,
    svc: ServiceProcess,
    body: bytes | None = None,
    **query: Any,
) -> httpx.Response:
    return client.post(
        f"{svc.url}{ROUTE}",
        content=npz(contexts()) if body is None else body,
        params=params(**query),
        headers=NPZ_HEADERS,
    )


def assert_same_image(actual: np.ndarray, expected: np.ndarray, rel: float = 1e-4) -> None:
    """Equal up to float32 noise from batch-size-dependent kernels (oneDNN, cuDNN).

    A wrong seed or context gives a wholly different latent, orders of magnitude away.
    """
    scale = float(np.abs(expected).max())
    diff = float(np.abs(actual - expected).max())
    assert diff <= rel * scale, f"max |diff| {diff} > {rel} * max |expected| {scale}"


def latent_of(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    arrays = read_npz(response.content)
    # The seeds travel in the npz (as in the streamed result frame) and in X-Seeds.
    assert set(arrays) == {"latent", "seeds"}
    assert ",".join(str(s) for s in arrays["seeds"].tolist()) == response.headers["x-seeds"]
    return arrays["latent"]


class TestDiffusionContract(StageContract):
    module = SERVICE_MODULE
    route = ROUTE
    service_name = "diffusion"
    component = "diffusion_model"

    def good_request(self) -> dict[str, Any]:
        return {"content": npz(contexts()), "params": params(), "headers": dict(NPZ_HEADERS)}

    def oversize_request(self) -> dict[str, Any]:
        # 4 rows of both contexts: ~315 kB, over the restricted service's 200 kB cap.
        return {"content": npz(contexts(4)), "params": params(n=4), "headers": dict(NPZ_HEADERS)}


# --- good calls -------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "latent_hw"), [(64, 16), (128, 32)])
@pytest.mark.parametrize("n", [1, 2])
def test_latent_shape_and_seeds(
    client: httpx.Client, service: ServiceProcess, size: int, latent_hw: int, n: int
) -> None:
    response = denoise(client, service, width=size, height=size, n=n, seed=123)
    latent = latent_of(response)
    assert latent.shape == (n, latent_hw, latent_hw, 4)
    assert latent.dtype == np.float32
    assert np.isfinite(latent).all()
    assert response.headers["x-seeds"] == ",".join(str(123 + i) for i in range(n))


def test_same_seed_same_bytes(client: httpx.Client, service: ServiceProcess) -> None:
    first = denoise(client, service, seed=42, n=2)
    second = denoise(client, service, seed=42, n=2)
    assert first.status_code == second.status_code == 200
    assert first.content == second.content


def test_different_seeds_differ(client: httpx.Client, service: ServiceProcess) -> None:
    a = latent_of(denoise(client, service, seed=1))
    b = latent_of(denoise(client, service, seed=2))
    assert not np.array_equal(a, b)


def test_omitted_seed_is_drawn_and_returned(client: httpx.Client, service: ServiceProcess) -> None:
    query = params(n=3)
    del query["seed"]
    body = npz(contexts())
    first = client.post(f"{service.url}{ROUTE}", content=body, params=query, headers=NPZ_HEADERS)
    second = client.post(f"{service.url}{ROUTE}", content=body, params=query, headers=NPZ_HEADERS)
    assert latent_of(first).shape == (3, 16, 16, 4)
    seeds = [int(s) for s in first.headers["x-seeds"].split(",")]
    assert len(seeds) == 3
    assert 0 <= seeds[0] <= MAX_SEED
    assert seeds == [seeds[0], seeds[0] + 1, seeds[0] + 2]
    assert first.headers["x-seeds"] != second.headers["x-seeds"]
    # The returned seed reproduces the images.
    again = denoise(client, service, body, seed=seeds[0], n=3)
    assert again.content == first.content


def test_image_i_equals_image_0_of_seed_plus_i(
    client: httpx.Client, service: ServiceProcess
) -> None:
    body = npz(contexts())
    batch = latent_of(denoise(client, service, body, seed=1000, n=3))
    for i in range(3):
        single = latent_of(denoise(client, service, body, seed=1000 + i, n=1))
        assert_same_image(batch[i], single[0])


def test_context_batch_one_broadcasts_to_n(client: httpx.Client, service: ServiceProcess) -> None:
    one = contexts(1)
    broadcast = latent_of(denoise(client, service, npz(one), n=3))
    repeated = {k: np.repeat(v, 3, axis=0) for k, v in one.items()}
    explicit = latent_of(denoise(client, service, npz(repeated), n=3))
    assert broadcast.shape == (3, 16, 16, 4)
    np.testing.assert_array_equal(broadcast, explicit)


def test_context_per_row(client: httpx.Client, service: ServiceProcess) -> None:
    """With n contexts, row i is conditioned on context i."""
    two = contexts(2, seed=5)
    batch = latent_of(denoise(client, service, npz(two), n=2, seed=9))
    row1 = {k: v[1:2] for k, v in two.items()}
    single = latent_of(denoise(client, service, npz(row1), n=1, seed=10))
    assert_same_image(batch[1], single[0])


def test_fp16_response(client: httpx.Client, service: ServiceProcess) -> None:
    full = latent_of(denoise(client, service, seed=3))
    half = latent_of(denoise(client, service, seed=3, fp16="true"))
    assert half.dtype == np.float16
    assert half.shape == full.shape
    np.testing.assert_array_equal(half, full.astype(np.float16))


def test_fp16_request_tensors_accepted(client: httpx.Client, service: ServiceProcess) -> None:
    """float16 contexts are upcast exactly: same result as their float32 values."""
    ctx = contexts()
    as_half = latent_of(denoise(client, service, npz(ctx, fp16=True), seed=4))
    rounded = {k: v.astype(np.float16).astype(np.float32) for k, v in ctx.items()}
    as_full = latent_of(denoise(client, service, npz(rounded), seed=4))
    assert as_half.dtype == np.float32
    np.testing.assert_array_equal(as_half, as_full)


def test_guidance_scale_changes_result(client: httpx.Client, service: ServiceProcess) -> None:
    a = latent_of(denoise(client, service, guidance_scale=1.0))
    b = latent_of(denoise(client, service, guidance_scale=9.0))
    assert not np.array_equal(a, b)


def test_the_sampler_is_a_query_parameter_by_any_of_its_names(
    client: httpx.Client, service: ServiceProcess
) -> None:
    ddim = latent_of(denoise(client, service, seed=8))
    assert np.array_equal(ddim, latent_of(denoise(client, service, seed=8, sampler="DDIM")))
    euler = latent_of(denoise(client, service, seed=8, sampler="Euler a"))
    assert np.array_equal(euler, latent_of(denoise(client, service, seed=8, sampler="k_euler_a")))
    assert not np.array_equal(ddim, euler)


# --- bad calls ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ({"width": 96, "height": 96}, "size"),
        ({"width": 64, "height": 128}, "size"),
        ({"width": 0}, "width"),
        ({"steps": 0}, "steps"),
        ({"steps": 101}, "steps"),
        ({"steps": "many"}, "steps"),
        ({"n": 0}, "n"),
        ({"n": 5}, "n"),
        ({"guidance_scale": 50.5}, "guidance_scale"),
        ({"guidance_scale": -0.5}, "guidance_scale"),
        ({"seed": -1}, "seed"),
        ({"seed": MAX_SEED + 1}, "seed"),
        ({"sampler": "plms"}, "sampler"),
    ],
)
def test_bad_query_is_422(
    client: httpx.Client, service: ServiceProcess, query: dict[str, Any], param: str
) -> None:
    assert_error(denoise(client, service, **query), 422, param=param)


def test_unsupported_size_type(client: httpx.Client, service: ServiceProcess) -> None:
    response = denoise(client, service, width=256, height=256)
    inner = assert_error(response, 422, param="size", error_type="unsupported_size")
    assert "64x64" in inner["message"]
    assert "128x128" in inner["message"]


def test_missing_width_is_422(client: httpx.Client, service: ServiceProcess) -> None:
    query = params()
    del query["width"]
    response = client.post(
        f"{service.url}{ROUTE}", content=npz(contexts()), params=query, headers=NPZ_HEADERS
    )
    assert_error(response, 422, param="width")


@pytest.mark.parametrize("content_type", ["application/json", "application/octet-stream", None])
def test_wrong_content_type_is_415(
    client: httpx.Client, service: ServiceProcess, content_type: str | None
) -> None:
    headers = {} if content_type is None else {"content-type": content_type}
    response = client.post(
        f"{service.url}{ROUTE}", content=npz(contexts()), params=params(), headers=headers
    )
    assert_error(response, 415, param="body", error_type="unsupported_media_type")


@pytest.mark.parametrize(
    "body", [b"", b"hello", b"PK\x03\x04" + b"\0" * 40, b'{"context": [1, 2]}']
)
def test_not_npz_is_422(client: httpx.Client, service: ServiceProcess, body: bytes) -> None:
    assert_error(denoise(client, service, body), 422, param="body")


def test_pickled_object_array_is_refused_unpickled(
    client: httpx.Client, service: ServiceProcess, tmp_path: Path
) -> None:
    # The payload is real: loading it with pickling allowed runs the marker.
    control = tmp_path / "control-marker"
    np.load(io.BytesIO(pickled_object_npy(control)), allow_pickle=True)
    assert control.exists()

    marker = tmp_path / "server-marker"
    ctx = contexts()
    body = raw_npz(
        {
            "context.npy": pickled_object_npy(marker),
            "unconditional_context.npy": npy(ctx["unconditional_context"]),
        }
    )
    response = denoise(client, service, body)
    assert 400 <= response.status_code < 500
    assert_error(response, response.status_code, param="context")
    assert not marker.exists()


@pytest.mark.parametrize("dtype", [np.float64, np.int32, np.uint8, ">f4"])
def test_wrong_dtype_is_422(client: httpx.Client, service: ServiceProcess, dtype: Any) -> None:
    ctx = contexts()
    ctx["context"] = ctx["context"].astype(dtype)
    body = raw_npz({f"{k}.npy": npy(v) for k, v in ctx.items()})
    assert_error(denoise(client, service, body), 422, param="context")


@pytest.mark.parametrize(
    ("member", "shape"),
    [
        ("context", (1, 77, 768)),
        ("unconditional_context", (1, 77, 768)),
        ("context", (1, 76, 128)),
        ("context", (77, 128)),
        ("context", (1, 1, 77, 128)),
    ],
)
def test_wrong_context_shape_is_422(
    client: httpx.Client, service: ServiceProcess, member: str, shape: tuple[int, ...]
) -> None:
    ctx = contexts()
    ctx[member] = np.zeros(shape, np.float32)
    assert_error(denoise(client, service, npz(ctx)), 422, param=member)


def test_context_batch_not_1_or_n_is_422(client: httpx.Client, service: ServiceProcess) -> None:
    assert_error(denoise(client, service, npz(contexts(2)), n=3), 422, param="context")


@pytest.mark.parametrize(
    ("member", "value"),
    [("context", np.nan), ("unconditional_context", np.inf), ("context", -np.inf)],
)
def test_non_finite_is_422(
    client: httpx.Client, service: ServiceProcess, member: str, value: float
) -> None:
    ctx = contexts()
    ctx[member][0, 3, 5] = value
    assert_error(denoise(client, service, npz(ctx)), 422, param=member)


def test_non_finite_fp16_is_422(client: httpx.Client, service: ServiceProcess) -> None:
    ctx = contexts(dtype=np.float16)
    ctx["context"][0, 0, 0] = np.nan
    assert_error(denoise(client, service, npz(ctx)), 422, param="context")


@pytest.mark.parametrize("missing", ["context", "unconditional_context"])
def test_missing_member_is_422(client: httpx.Client, service: ServiceProcess, missing: str) -> None:
    ctx = contexts()
    del ctx[missing]
    assert_error(denoise(client, service, npz(ctx)), 422, param=missing)


def test_extra_member_is_422(client: httpx.Client, service: ServiceProcess) -> None:
    body = npz({**contexts(), "extra": np.zeros((1,), np.float32)})
    assert_error(denoise(client, service, body), 422, param="extra")


def test_compressed_member_is_422(client: httpx.Client, service: ServiceProcess) -> None:
    members = {f"{k}.npy": npy(v) for k, v in contexts().items()}
    body = raw_npz(members, compression=zipfile.ZIP_DEFLATED)
    assert_error(denoise(client, service, body), 422, param="context")


def test_service_still_good_after_bad_calls(client: httpx.Client, service: ServiceProcess) -> None:
    assert latent_of(denoise(client, service)).shape == (1, 16, 16, 4)
