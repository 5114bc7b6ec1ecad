"""`sdserve convert` of an original-layout (CompVis / A1111) SD 1.x single file.

SD 1.5's real architecture with seeded random weights, assembled as one checkpoint in
the original key layout (with the extras real ones carry). diffusers' own single-file
converters read it back into exactly the diffusers weights, so the layout is the real
one; converting it gives, tensor for tensor, the diffusers weights in Keras layout, which
test_reference_sd_v1.py proves by numbers.
"""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import numpy as np
import pytest

from shared.convert.convert import convert
from shared.convert.keras_weights import to_keras
from shared.convert.plan import plan_for
from tests.utils import sd_reference

pytestmark = pytest.mark.slow

FAMILY = "sd-v1"
PARTS = {
    "diffusion_model": "unet",
    "decoder": "vae",
    "image_encoder": "vae",
    "text_encoder": "text_encoder",
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory):
    from safetensors.numpy import save_file

    root = tmp_path_factory.mktemp("sd-v1-single-file")
    configs, weights = {}, {}
    for part, seed in (("unet", 21), ("vae", 22), ("text_encoder", 23)):
        configs[part], weights[part] = sd_reference.random_state(part, FAMILY, seed)
    tensors = sd_reference.original_checkpoint(FAMILY, weights)
    path = root / "sd15-original.safetensors"
    save_file(tensors, str(path))
    yield SimpleNamespace(root=root, path=path, tensors=tensors, weights=weights, configs=configs)
    shutil.rmtree(root, ignore_errors=True)


def test_layout_is_what_diffusers_reads(checkpoint):
    import torch
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
    )

    as_torch = {k: torch.from_numpy(np.asarray(v)) for k, v in checkpoint.tensors.items()}
    unet = convert_ldm_unet_checkpoint(as_torch, checkpoint.configs["unet"])
    vae = convert_ldm_vae_checkpoint(as_torch, checkpoint.configs["vae"])
    text = convert_ldm_clip_checkpoint(as_torch)
    text = {k.removeprefix("text_model."): v for k, v in text.items()}
    for part, read in (("unet", unet), ("vae", vae), ("text_encoder", text)):
        expected = checkpoint.weights[part]
        assert set(read) == set(expected), part
        assert all(np.array_equal(read[k].numpy(), expected[k]) for k in expected), part


def test_converts_to_the_diffusers_weights_in_keras_layout(checkpoint):
    from safetensors import safe_open

    out = checkpoint.root / "converted"
    manifest = convert(checkpoint.path, FAMILY, out)
    assert manifest["source"]["layout"] == "original"
    assert manifest["prediction_type"] == "epsilon"  # a single file does not say
    assert manifest["prediction_type_from"].startswith("sd-v1")
    unused = manifest["not_converted"]
    assert unused["count"] == 2 and set(unused["examples"]) == {"alphas_cumprod", "model_ema.decay"}
    for component, part in PARTS.items():
        expected = checkpoint.weights[part]
        with safe_open(str(out / f"{component}.safetensors"), framework="numpy") as converted:
            assert converted.metadata()["component"] == component
            plan = plan_for(FAMILY, component)
            assert set(converted.keys()) == {w.name for w in plan}
            for weight in plan:
                source = expected.get(
                    weight.name, expected.get(weight.name.removeprefix("text_model."))
                )
                assert np.array_equal(
                    converted.get_tensor(weight.name), to_keras(source, weight)
                ), weight.name
