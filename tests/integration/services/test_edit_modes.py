"""img2img and inpainting at the stage level, remote (real services) and local (in-process).

The done-when of the edit modes, per topology: after inpainting, the latent outside the
mask equals the encoded init latent exactly and inside it differs; img2img with a small
strength returns (almost) the init latent; local and remote give the same bytes.
"""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest

from shared.config import Settings
from shared.pipeline.local.decoder import make_decoder
from shared.pipeline.local.diffusion import make_diffusion
from shared.pipeline.types import DenoiseParams, DenoiseRequest, EncodeImageRequest
from shared.service_process import ServiceProcess, run_services
from tests.utils.wire import assert_error, npz, read_npz

from .common import TINY_ENV

SIZE = 64
LATENT = SIZE // 4  # tiny downsamples 4x


@pytest.fixture(scope="module")
def remote(tmp_path_factory):
    # Fresh services, not the session's shared stack: the exact-bytes comparison with the
    # in-process stages needs both sides to have traced their graphs for the same shapes in
    # the same order (a process that skipped warm-up traces one graph for its first shape
    # and a generic one later, and the two round differently in the last float bits).
    logs = tmp_path_factory.mktemp("edit-modes")
    decoder = ServiceProcess("services.decoder", TINY_ENV, log_path=logs / "decoder.log")
    diffusion = ServiceProcess("services.diffusion", TINY_ENV, log_path=logs / "diffusion.log")
    with run_services(decoder, diffusion):
        yield decoder, diffusion


@pytest.fixture(scope="module")
def local():
    # Embedded weights, as the services.
    settings = Settings(model="tiny", sizes=[(64, 64), (128, 128)], warm_up=False)
    decoder, diffusion = make_decoder(settings), make_diffusion(settings)
    for stage in (decoder, diffusion):
        stage.load()
    for stage in (decoder, diffusion):
        stage.warm()
    yield decoder, diffusion
    decoder.shutdown()
    diffusion.shutdown()


def _image() -> np.ndarray:
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    return np.stack([x * 4, y * 4, (x + y) * 2], axis=-1).astype(np.uint8)[None]


def _contexts() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    context = rng.standard_normal((1, 77, 128)).astype(np.float32)
    return {"context": context, "unconditional_context": np.zeros_like(context)}


def _mask() -> np.ndarray:
    mask = np.zeros((1, LATENT, LATENT, 1), np.float32)
    mask[:, 2:6, 3:7] = 1
    return mask


QUERY = {"width": SIZE, "height": SIZE, "steps": 6, "seed": 11, "guidance_scale": 5.0}


def _remote_latents(remote, route, extra_tensors, extra_query=None):
    decoder, diffusion = remote
    encoded = httpx.post(
        f"{decoder.url}/v1/encode-image",
        content=npz({"images": _image()}),
        headers={"content-type": "application/x-npz"},
    )
    assert encoded.status_code == 200, encoded.text
    init = read_npz(encoded.content)["latent"]
    assert init.shape == (1, LATENT, LATENT, 4)
    response = httpx.post(
        f"{diffusion.url}{route}",
        params={**QUERY, **(extra_query or {})},
        content=npz({**_contexts(), "init_latent": init, **extra_tensors}),
        headers={"content-type": "application/x-npz"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return init, read_npz(response.content)["latent"]


def _local_latents(local, mask=None, strength=1.0, num_resamples=1):
    decoder, diffusion = local

    async def run():
        init = (await decoder.encode_image(EncodeImageRequest(_image()))).latent
        contexts = _contexts()
        params = DenoiseParams(
            width=SIZE,
            height=SIZE,
            steps=6,
            guidance_scale=5.0,
            seed=11,
            strength=strength,
            num_resamples=num_resamples,
        )
        result = await diffusion.denoise(
            DenoiseRequest(
                contexts["context"],
                contexts["unconditional_context"],
                params,
                init_latent=init,
                mask=mask,
            )
        )
        return init, result.latent

    return asyncio.run(run())


def _assert_inpainted(init, latent, mask):
    keep = np.broadcast_to(mask == 0, latent.shape)
    np.testing.assert_array_equal(latent[keep], init[keep])
    assert np.abs(latent[~keep] - init[~keep]).mean() > 1e-3


@pytest.mark.parametrize("num_resamples", [1, 2])
def test_inpaint_keeps_the_outside_exactly_remote_and_local(remote, local, num_resamples):
    mask = _mask()
    init_r, latent_r = _remote_latents(
        remote, "/v1/inpaint", {"mask": mask}, {"num_resamples": num_resamples}
    )
    _assert_inpainted(init_r, latent_r, mask)
    init_l, latent_l = _local_latents(local, mask=mask, num_resamples=num_resamples)
    _assert_inpainted(init_l, latent_l, mask)
    # One code path: the service gives the in-process result byte for byte.
    np.testing.assert_array_equal(init_r, init_l)
    np.testing.assert_array_equal(latent_r, latent_l)


def test_img2img_small_strength_stays_near_the_init_latent(remote, local):
    init, near = _remote_latents(remote, "/v1/img2img", {}, {"strength": 0.05, "steps": 20})
    _, far = _remote_latents(remote, "/v1/img2img", {}, {"strength": 1.0, "steps": 20})
    near_diff = float(np.abs(near - init).mean())
    far_diff = float(np.abs(far - init).mean())
    assert near_diff < far_diff / 5, (near_diff, far_diff)
    _, unchanged = _remote_latents(remote, "/v1/img2img", {}, {"strength": 0.01})
    np.testing.assert_array_equal(unchanged, init)  # round(0.06) = 0 steps
    _, latent_l = _local_latents(local, strength=0.5)
    _, latent_r = _remote_latents(remote, "/v1/img2img", {}, {"strength": 0.5})
    np.testing.assert_array_equal(latent_r, latent_l)


def test_encode_image_batches_and_checks_its_input(remote):
    decoder, _ = remote
    images = np.concatenate([_image(), 255 - _image()])
    response = httpx.post(
        f"{decoder.url}/v1/encode-image",
        content=npz({"images": images}),
        headers={"content-type": "application/x-npz"},
    )
    latent = read_npz(response.content)["latent"]
    assert latent.shape == (2, LATENT, LATENT, 4) and not np.array_equal(latent[0], latent[1])
    for bad, param in [
        (np.zeros((1, 60, 64, 3), np.uint8), "images"),
        (np.zeros((1, 64, 64, 4), np.uint8), "images"),
        (np.zeros((1, 64, 64, 3), np.float32), "images"),
    ]:
        response = httpx.post(
            f"{decoder.url}/v1/encode-image",
            content=npz({"images": bad}),
            headers={"content-type": "application/x-npz"},
        )
        assert_error(response, 422, param=param)


@pytest.mark.parametrize(
    ("route", "tensors", "query", "param"),
    [
        ("/v1/inpaint", {"mask": np.full((1, LATENT, LATENT, 1), 2.0, np.float32)}, {}, "mask"),
        ("/v1/inpaint", {"mask": np.zeros((1, 4, 4, 1), np.float32)}, {}, "mask"),
        ("/v1/img2img", {}, {"strength": 0}, "strength"),
        ("/v1/img2img", {}, {"strength": 1.5}, "strength"),
        (
            "/v1/inpaint",
            {"mask": np.zeros((1, LATENT, LATENT, 1), np.float32)},
            {"num_resamples": 0},
            "num_resamples",
        ),
    ],
)
def test_bad_edit_inputs_are_422_naming_the_field(remote, route, tensors, query, param):
    _, diffusion = remote
    init = np.zeros((1, LATENT, LATENT, 4), np.float32)
    response = httpx.post(
        f"{diffusion.url}{route}",
        params={**QUERY, **query},
        content=npz({**_contexts(), "init_latent": init, **tensors}),
        headers={"content-type": "application/x-npz"},
    )
    assert_error(response, 422, param=param)


def test_init_latent_of_the_wrong_size_is_refused(remote):
    _, diffusion = remote
    response = httpx.post(
        f"{diffusion.url}/v1/img2img",
        params=QUERY,
        content=npz({**_contexts(), "init_latent": np.zeros((1, 8, 8, 4), np.float32)}),
        headers={"content-type": "application/x-npz"},
    )
    assert_error(response, 422, param="init_latent")
