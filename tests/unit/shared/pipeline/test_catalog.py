"""A gateway serving models of two families fills each request's defaults from the model
it names (steps, guidance, sampler and sizes differ per family)."""

from __future__ import annotations

from pathlib import Path

import pytest

from central.schemas import ImageGenerationRequest
from shared.config import Settings
from shared.errors import ModelNotFound
from shared.families import get_family
from shared.pipeline.catalog import Catalog

# Every stage remote: the catalog is built without loading any model.
MODELS = """
[[model]]
name = "tiny"
family = "tiny"
diffusion_url = "http://127.0.0.1:9/tiny"
text_encoder_url = "http://127.0.0.1:9/tiny-text"
decoder_url = "http://127.0.0.1:9/tiny-decoder"

[[model]]
name = "sd15"
family = "sd-v1"
diffusion_url = "http://127.0.0.1:9/sd"
text_encoder_url = "http://127.0.0.1:9/sd-text"
decoder_url = "http://127.0.0.1:9/sd-decoder"
"""


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    models_file = tmp_path / "models.toml"
    models_file.write_text(MODELS)
    return Catalog(Settings(model="tiny", models_file=models_file))


@pytest.mark.parametrize(("model", "family"), [(None, "tiny"), ("tiny", "tiny"), ("sd15", "sd-v1")])
def test_a_request_gets_the_defaults_of_the_model_it_names(
    catalog: Catalog, model: str | None, family: str
) -> None:
    spec = get_family(family).spec
    body = ImageGenerationRequest(prompt="a red square", model=model)
    params = body.to_params(catalog.settings_for(model))
    assert params.denoise.steps == spec.default_steps
    assert params.denoise.guidance_scale == spec.default_guidance_scale
    assert params.denoise.sampler == spec.default_sampler
    assert (params.denoise.width, params.denoise.height) == spec.default_sizes[0]


def test_the_families_defaults_differ_here() -> None:
    """Otherwise the test above could not tell one family's defaults from the other's."""
    tiny, sd = get_family("tiny").spec, get_family("sd-v1").spec
    assert tiny.default_guidance_scale != sd.default_guidance_scale
    assert tiny.default_sizes[0] != sd.default_sizes[0]


def test_an_unknown_model_is_named(catalog: Catalog) -> None:
    with pytest.raises(ModelNotFound, match="dall-e-3"):
        catalog.settings_for("dall-e-3")
