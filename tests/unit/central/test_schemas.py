"""Request bodies to generation parameters: what a field left out becomes."""

from __future__ import annotations

import pytest

from central.schemas import HfTextToImageRequest, ImageEditFields, ImageGenerationRequest
from shared.config import Settings, load_settings


@pytest.fixture(scope="module")
def tiny() -> Settings:
    return load_settings(model="tiny", weights="random", default_guidance_scale=None)


@pytest.fixture(scope="module")
def sd() -> Settings:
    return load_settings(model="sd-v1", weights="random", default_guidance_scale=None)


def test_guidance_left_out_is_the_familys_default(tiny: Settings, sd: Settings) -> None:
    assert ImageGenerationRequest(prompt="x").to_params(tiny).denoise.guidance_scale == 5.0
    assert ImageGenerationRequest(prompt="x").to_params(sd).denoise.guidance_scale == 7.5
    edit = ImageEditFields(prompt="x").to_params(tiny, 64, 64)
    assert edit.denoise.guidance_scale == 5.0
    assert HfTextToImageRequest(inputs="x").to_params(sd).denoise.guidance_scale == 7.5
    # JSON null means "not given", as OpenAI clients send it.
    null = ImageGenerationRequest(prompt="x", guidance_scale=None).to_params(tiny)
    assert null.denoise.guidance_scale == 5.0


def test_guidance_given_is_kept_even_zero(tiny: Settings) -> None:
    for value in (0.0, 7.5, 12.0):
        params = ImageGenerationRequest(prompt="x", guidance_scale=value).to_params(tiny)
        assert params.denoise.guidance_scale == value
    body = {"inputs": "x", "parameters": {"guidance_scale": 0}}
    assert HfTextToImageRequest.model_validate(body).to_params(tiny).denoise.guidance_scale == 0.0


def test_an_operator_default_overrides_the_familys() -> None:
    settings = load_settings(model="tiny", weights="random", default_guidance_scale=3.0)
    assert ImageGenerationRequest(prompt="x").to_params(settings).denoise.guidance_scale == 3.0
