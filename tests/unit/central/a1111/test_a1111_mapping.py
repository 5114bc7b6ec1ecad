"""How an A1111 request maps onto ours: samplers, sizes, image counts, mask blur, and
which fields are reported as ignored."""

from __future__ import annotations

from typing import Any

import pytest

from central.a1111.samplers import SAMPLERS, choose_sampler
from central.a1111.schemas import Img2ImgRequest, Txt2ImgRequest
from shared.errors import InvalidInput, UnsupportedSize
from tests.utils.gateway import SETTINGS

# What webuiapi 0.9 sends for a txt2img it was given only a prompt (its defaults).
WEBUIAPI_TXT2IMG: dict[str, Any] = {
    "enable_hr": False, "hr_scale": 2, "hr_upscaler": "Latent", "hr_second_pass_steps": 0,
    "hr_resize_x": 0, "hr_resize_y": 0, "hr_checkpoint_name": None, "hr_sampler_name": None,
    "hr_scheduler": None, "hr_prompt": "", "hr_negative_prompt": "", "denoising_strength": 0.7,
    "firstphase_width": 0, "firstphase_height": 0, "prompt": "a cat", "styles": [], "seed": -1,
    "subseed": -1, "subseed_strength": 0.0, "seed_resize_from_h": 0, "seed_resize_from_w": 0,
    "batch_size": 1, "n_iter": 1, "steps": 20, "cfg_scale": 7.0, "width": 64, "height": 64,
    "restore_faces": False, "tiling": False, "do_not_save_samples": False,
    "do_not_save_grid": False, "negative_prompt": "", "eta": 1.0, "s_churn": 0, "s_tmax": 0,
    "s_tmin": 0, "s_noise": 1, "override_settings": {},
    "override_settings_restore_afterwards": True, "sampler_name": "Euler a",
    "scheduler": "automatic", "sampler_index": "Euler a", "script_name": None,
    "script_args": [], "send_images": True, "save_images": False, "alwayson_scripts": {},
}  # fmt: skip


def test_a1111_names_pick_our_samplers_and_others_are_substituted() -> None:
    assert [s.name for s in SAMPLERS] == ["DDIM", "DPM++ 2M", "DPM++ 2M Karras", "Euler a"]
    for name, ours in (
        ("DDIM", "ddim"),
        (" ddim ", "ddim"),
        ("Euler a", "euler_ancestral"),
        ("k_euler_a", "euler_ancestral"),
        ("DPM++ 2M Karras", "dpmpp_2m_karras"),
        ("dpm++ 2m", "dpmpp_2m"),
    ):
        choice = choose_sampler(name, "ddim")
        assert (choice.ran.id, choice.substituted) == (ours, False), name
    for name in ("LMS", "DPM++ SDE"):  # A1111 has them, we do not: the default runs
        choice = choose_sampler(name, "dpmpp_2m")
        assert (choice.ran.id, choice.requested, choice.substituted) == ("dpmpp_2m", name, True)
    for nothing in (None, ""):
        choice = choose_sampler(nothing, "euler_ancestral")
        assert choice.ran.id == "euler_ancestral" and not choice.substituted


def test_a_clients_defaults_ask_for_nothing_we_skip() -> None:
    assert Txt2ImgRequest.model_validate(WEBUIAPI_TXT2IMG).ignored() == []


def test_what_is_asked_for_and_not_done_is_listed() -> None:
    body = Txt2ImgRequest.model_validate(
        {
            **WEBUIAPI_TXT2IMG,
            "restore_faces": True,
            "enable_hr": True,
            "hr_scale": 4,  # part of the hires fix: enable_hr names it
            "eta": 0.3,
            "styles": ["noir"],
            "scheduler": "Karras",
            "save_images": True,
            "controlnet_units": [{"model": "canny"}],  # an extension's field
            "override_settings": {"sd_model_checkpoint": "tiny", "CLIP_stop_at_last_layers": 2},
        }
    )
    assert sorted(body.ignored()) == sorted(
        [
            "restore_faces",
            "enable_hr",
            "eta",
            "styles",
            "scheduler",
            "save_images",
            "controlnet_units",
            "override_settings.CLIP_stop_at_last_layers",
        ]
    )
    assert body.checkpoint == "tiny"
    inpaint = Img2ImgRequest.model_validate(
        {"prompt": "x", "init_images": ["a", "b"], "mask": "m", "inpainting_fill": 0}
    )
    assert inpaint.ignored() == ["init_images[1:]", "inpaint_full_res", "inpainting_fill"]
    plain = Img2ImgRequest.model_validate({"prompt": "x", "init_images": ["a"]})
    assert plain.ignored() == []  # without a mask, the inpainting fields mean nothing


def test_sizes_and_counts_map_or_name_the_field() -> None:
    sizes = [(64, 64), (128, 64)]
    assert Txt2ImgRequest(width=128, height=64).size(sizes) == (128, 64)
    assert Txt2ImgRequest().size(sizes) == (64, 64)  # omitted: the first served
    with pytest.raises(UnsupportedSize) as wrong_height:
        Txt2ImgRequest(width=128, height=128).size(sizes)
    with pytest.raises(UnsupportedSize) as wrong_width:
        Txt2ImgRequest(width=96, height=64).size(sizes)
    assert (wrong_height.value.param, wrong_width.value.param) == ("height", "width")
    fields = Txt2ImgRequest(prompt="x", seed=-1, batch_size=2, n_iter=2).job_fields(
        SETTINGS, (64, 64), "tiny", choose_sampler(None, "ddim")
    )
    assert fields["n"] == 4 and fields["seed"] is None and fields["size"] == "64x64"
    assert fields["steps"] == SETTINGS.steps and fields["sampler"] == "ddim"
    assert fields["guidance_scale"] == SETTINGS.guidance_scale
    with pytest.raises(InvalidInput) as too_many:
        Txt2ImgRequest(prompt="x", n_iter=SETTINGS.max_images_per_request + 1).check_n(SETTINGS)
    assert too_many.value.param == "n_iter"


@pytest.mark.parametrize(("pixels", "cells"), [(0, 0), (1, 1), (4, 1), (8, 1), (9, 2), (64, 8)])
def test_mask_blur_in_pixels_becomes_latent_cells(pixels: int, cells: int) -> None:
    body = Img2ImgRequest(init_images=["a"], mask_blur=pixels)
    assert body.latent_mask_blur(downsampling_factor=8) == cells
