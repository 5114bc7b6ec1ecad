"""A real AUTOMATIC1111 client, `webuiapi`, drives the session's all-in-one gateway:
txt2img, img2img with a mask, progress during a running job, interrupt, and the lists.
Each response is checked against A1111's documented schema, written down below from its
`modules/api/models.py` (TextToImageResponse, ProgressResponse, SDModelItem,
SamplerItem, UpscalerItem, ScriptsList), `Processed.js()` (the info) and
`State.dict()` (the progress state)."""

from __future__ import annotations

import base64
import io
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from shared.service_process import ServiceProcess

webuiapi = pytest.importorskip("webuiapi")

# A1111's documented shapes: field -> type(s).
GENERATION_RESPONSE = {"images": list, "parameters": dict, "info": str}
INFO = {
    "prompt": str,
    "all_prompts": list,
    "negative_prompt": str,
    "all_negative_prompts": list,
    "seed": int,
    "all_seeds": list,
    "subseed": int,
    "all_subseeds": list,
    "subseed_strength": (int, float),
    "width": int,
    "height": int,
    "sampler_name": str,
    "cfg_scale": (int, float),
    "steps": int,
    "batch_size": int,
    "restore_faces": (bool, type(None)),
    "face_restoration_model": (str, type(None)),
    "sd_model_name": (str, type(None)),
    "sd_model_hash": (str, type(None)),
    "sd_vae_name": (str, type(None)),
    "sd_vae_hash": (str, type(None)),
    "seed_resize_from_w": int,
    "seed_resize_from_h": int,
    "denoising_strength": (int, float, type(None)),
    "extra_generation_params": dict,
    "index_of_first_image": int,
    "infotexts": list,
    "styles": list,
    "job_timestamp": str,
    "clip_skip": int,
    "is_using_inpainting_conditioning": bool,
    "version": (str, type(None)),
}
PROGRESS = {
    "progress": (int, float),
    "eta_relative": (int, float),
    "state": dict,
    "current_image": (str, type(None)),
    "textinfo": (str, type(None)),
}
PROGRESS_STATE = {
    "skipped": bool,
    "interrupted": bool,
    "stopping_generation": bool,
    "job": str,
    "job_count": int,
    "job_timestamp": str,
    "job_no": int,
    "sampling_step": int,
    "sampling_steps": int,
}
SD_MODEL = {
    "title": str,
    "model_name": str,
    "hash": (str, type(None)),
    "sha256": (str, type(None)),
    "filename": str,
    "config": (str, type(None)),
}
SAMPLER = {"name": str, "aliases": list, "options": dict}
SCRIPTS = {"txt2img": list, "img2img": list}

RED = (200, 30, 30)


def assert_shape(obj: Any, fields: dict[str, Any], *, extra: bool = False) -> None:
    """Every documented field, of its type (and, unless `extra`, nothing else)."""
    assert isinstance(obj, dict), obj
    missing = set(fields) - set(obj)
    assert not missing, f"missing {sorted(missing)}"
    if not extra:
        assert set(obj) == set(fields), sorted(set(obj) - set(fields))
    for name, kind in fields.items():
        assert isinstance(obj[name], kind), (name, obj[name])


@pytest.fixture(scope="module")
def gateway(tiny_stack: dict[str, ServiceProcess]) -> str:
    return tiny_stack["all-in-one"].url


@pytest.fixture(scope="module")
def api(gateway: str) -> Iterator[Any]:
    yield webuiapi.WebUIApi(baseurl=f"{gateway}/sdapi/v1", steps=6)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_txt2img_answers_as_a1111_does(api: Any, gateway: str) -> None:
    # webuiapi asks for "Euler a" unless told otherwise: Euler ancestral runs.
    result = api.txt2img(
        prompt="a red bicycle", width=64, height=64, seed=7, batch_size=1, n_iter=2, cfg_scale=6
    )
    assert_shape(result.json, GENERATION_RESPONSE)
    assert_shape(result.info, INFO, extra=True)
    info = result.info
    assert len(result.images) == 2 and all(i.size == (64, 64) for i in result.images)
    assert all(i.format == "PNG" for i in result.images)
    assert info["seed"] == 7 and info["all_seeds"] == [7, 8]  # as A1111 numbers them
    assert info["all_prompts"] == ["a red bicycle"] * 2 and info["batch_size"] == 1
    assert (info["steps"], info["cfg_scale"], info["width"], info["height"]) == (6, 6, 64, 64)
    assert info["sampler_name"] == "Euler a" and info["sd_model_name"] == "tiny"
    assert not info["substituted"]
    assert info["ignored"] == []  # webuiapi's defaults ask for nothing we skip
    assert info["interrupted"] is False
    assert info["infotexts"][1].endswith(
        "Steps: 6, Sampler: Euler a, CFG scale: 6, Seed: 8, Size: 64x64, Model: tiny, "
        "Version: sdserve 0.1.0"
    )
    assert result.parameters["prompt"] == "a red bicycle" and result.parameters["n_iter"] == 2
    # The gateway's own generation with the same fields draws the same images.
    ours = httpx.post(
        f"{gateway}/v1/images/generations",
        json={
            "prompt": "a red bicycle",
            "size": "64x64",
            "n": 2,
            "seed": 7,
            "steps": 6,
            "guidance_scale": 6,
            "sampler": "euler_ancestral",
        },
        timeout=120,
    ).json()
    for image, data in zip(result.images, ours["data"], strict=True):
        same = Image.open(io.BytesIO(base64.b64decode(data["b64_json"])))
        assert int(np.abs(pixels(image) - pixels(same)).max()) <= 2


def test_img2img_with_a_mask_repaints_only_the_mask(api: Any) -> None:
    image = Image.new("RGB", (64, 64), RED)
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))  # white: repaint
    inside = (slice(16, 48), slice(16, 48))
    results = [
        api.img2img(
            images=[image],
            mask_image=mask,
            prompt="a blue door",
            denoising_strength=0.75,
            inpainting_mask_invert=invert,
            inpainting_fill=1,
            inpaint_full_res=False,
            width=64,
            height=64,
            seed=3,
        )
        for invert in (0, 1)
    ]
    for result in results:
        assert_shape(result.json, GENERATION_RESPONSE)
        assert_shape(result.info, INFO, extra=True)
        assert result.info["denoising_strength"] == 0.75 and result.info["all_seeds"] == [3]
        assert result.info["extra_generation_params"] == {"Mask blur": 4}
        assert result.info["ignored"] == []  # whole-picture inpainting from the original
        assert result.parameters["init_images"] is None  # include_init_images is off
    masked, inverted = (pixels(r.images[0]) for r in results)
    kept = np.ones((64, 64), bool)
    kept[inside] = False
    # Outside the mask the image comes back as sent; inside it is repainted.
    assert (masked[kept] == RED).all() and not (masked[inside] == RED).all()
    # Inverted (A1111's inpainting_mask_invert): the black repaints, the white is kept.
    assert (inverted[inside] == RED).all() and not (inverted[kept] == RED).all()


def test_progress_and_interrupt_of_a_running_txt2img(api: Any) -> None:
    finished: dict[str, Any] = {}

    def draw() -> None:
        finished["result"] = api.txt2img(prompt="slow", width=64, height=64, steps=1000)

    idle = api.get_progress()
    assert_shape(idle, PROGRESS)
    assert (idle["progress"], idle["state"]["job_count"]) == (0, 0)
    thread = threading.Thread(target=draw)
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while (progress := api.get_progress())["current_image"] is None:
            assert time.monotonic() < deadline, progress
            time.sleep(0.05)
        interrupted = api.interrupt()
    finally:
        thread.join(timeout=120)
    assert_shape(progress, PROGRESS)
    assert_shape(progress["state"], PROGRESS_STATE)
    state = progress["state"]
    assert state["job_count"] == 1 and state["sampling_steps"] == 1000
    assert 100 <= state["sampling_step"] < 1000  # a preview comes every 100 steps
    assert 0 < progress["progress"] < 1 and progress["eta_relative"] > 0
    preview = Image.open(io.BytesIO(base64.b64decode(progress["current_image"])))
    assert preview.format == "PNG" and preview.size == (16, 16)  # the latent's, as decoded
    assert interrupted == {}
    result = finished["result"]
    assert result.images == [] and result.info["interrupted"] is True
    assert len(result.info["all_seeds"]) == 1
    after = api.get_progress()
    assert after["state"]["job_count"] == 0 and after["progress"] == 0


def test_the_lists_are_in_a1111s_shapes(api: Any) -> None:
    models = api.get_sd_models()
    assert [m["title"] for m in models] == ["tiny"]
    for model in models:
        assert_shape(model, SD_MODEL)
    samplers = api.get_samplers()
    assert [s["name"] for s in samplers] == ["DDIM", "DPM++ 2M", "DPM++ 2M Karras", "Euler a"]
    for sampler in samplers:
        assert_shape(sampler, SAMPLER)
    assert api.get_upscalers() == [] and api.get_loras() == []
    assert_shape(api.get_scripts(), SCRIPTS)
    assert api.util_get_current_model() == "tiny"
    assert api.get_options()["sd_model_checkpoint"] == "tiny"
