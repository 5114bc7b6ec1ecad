"""`sdserve convert` proved by numbers for sd-v2 (SD 2.x: OpenCLIP text encoder, linear
projections and 64-wide attention heads in the UNet, v-prediction for 768x768 models).

transformers' CLIPTextModel and diffusers' UNet2DConditionModel with SD 2.1's configs
(stabilityai/stable-diffusion-2-1: 23 layers 1024 wide with GELU; the UNet's linear
projections, 1024-wide context) with seeded random weights are saved as a diffusers
folder with a v-prediction scheduler, converted, loaded by our family through
shared.models.build_component (what every service runs) and run on the same inputs as
the PyTorch originals. The UNet plan is also checked name by name against diffusers' real
SD 2.1 UNet, and the transformer block, where sd-v2 differs from sd-v1, is run alone
against diffusers' Transformer2DModel (a wrong mapping there is found without the whole
UNet). An original-layout single file (OpenCLIP's fused q/k/v) is read back by diffusers'
own converter and converts to the same text encoder weights. (The VAE is sd-v1's:
test_reference_sd_v1.py.)

Memory: the PyTorch UNet is run and dropped before keras-cv's is built, so the two
real-size UNets (3.4 GB each in float32) are never held at once.

Tolerance: keras-cv's TextEncoderV2 uses the tanh approximation of GELU where SD 2.x's
OpenCLIP uses erf, through 23 layers; measured 1.7e-4 of the output's scale, allowed
1e-3. The UNet's transformer blocks also use tanh-GELU in their GEGLU and
GroupNormalization eps 1e-5 (diffusers: 1e-6): one block measured 8e-5, the whole UNet
1.4e-4; allowed 5e-4 for both, as for sd-v1's whole UNet.
"""

from __future__ import annotations

import gc
import shutil
from types import SimpleNamespace

import numpy as np
import pytest

from shared.convert.convert import convert
from shared.convert.plan import ARCHITECTURES, _unet_transformer, plan_for
from shared.errors import WeightsError
from tests.integration.shared.convert.conftest import (
    SIZE,
    KerasModels,
    inputs,
    relative_error,
    run_keras,
    run_torch,
)
from tests.utils import sd_reference

pytestmark = pytest.mark.slow

FAMILY = "sd-v2"
TEXT_TOLERANCE = 1e-3
UNET_TOLERANCE = BLOCK_TOLERANCE = 5e-4


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("sd-v2-reference")
    x = inputs(FAMILY, seed=13)
    folder = root / "sd21-diffusers"
    # The UNet first, run and dropped before the other models are built (memory).
    unet_config, unet_w = sd_reference.random_state("unet", FAMILY, seed=16)
    sd_reference.write_part(folder, "unet", unet_w, unet_config)
    unet = sd_reference.with_weights("unet", FAMILY, unet_w)
    del unet_w  # the float32 UNet holds its own copy
    unet_output = run_torch("diffusion_model", unet, x)
    del unet
    gc.collect()
    text, text_w = sd_reference.build("text_encoder", FAMILY, seed=11)
    vae, vae_w = sd_reference.build("vae", FAMILY, seed=12)
    weights = {"text_encoder": text_w, "vae": vae_w}
    sd_reference.write_part(folder, "text_encoder", text_w, {})
    sd_reference.write_part(folder, "vae", vae_w, dict(vae.config))
    del vae
    sd_reference.write_scheduler(folder, "v_prediction")
    out = root / "converted"
    manifest = convert(folder, FAMILY, out, components=["text_encoder", "diffusion_model"])
    yield SimpleNamespace(
        root=root,
        out=out,
        manifest=manifest,
        weights=weights,
        text=text,
        unet_output=unet_output,
        keras=KerasModels(FAMILY, out),
        x=x,
    )
    shutil.rmtree(root, ignore_errors=True)


def test_text_encoder_matches_transformers(reference):
    assert reference.manifest["prediction_type"] == "v_prediction"
    assert set(reference.manifest["components"]) == {"text_encoder", "diffusion_model"}
    model, origin = reference.keras("text_encoder")
    assert origin.source == "directory"
    ours = run_keras("text_encoder", model, reference.x)
    theirs = run_torch("text_encoder", reference.text, reference.x)
    error = relative_error(ours, theirs)
    print(f"sd-v2 text_encoder: relative error {error:.2e} (scale {np.abs(theirs).max():.3g})")
    assert error < TEXT_TOLERANCE


def test_unet_matches_diffusers(reference):
    """The whole converted UNet, built and loaded as a service does (and dropped after:
    it is 3.4 GB), against diffusers' on the same latent, timestep and context."""
    from shared.families import get_family
    from shared.models import build_component

    settings = reference.keras.settings
    model, origin = build_component(
        get_family(FAMILY), "diffusion_model", (SIZE, SIZE), settings, "float32"
    )
    assert origin.source == "directory" and origin.prediction_type == "v_prediction"
    ours = run_keras("diffusion_model", model, reference.x)
    del model
    theirs = reference.unet_output
    error = relative_error(ours, theirs)
    print(f"sd-v2 UNet: relative error {error:.2e} (scale {np.abs(theirs).max():.3g})")
    assert error < UNET_TOLERANCE


def test_unet_plan_names_every_tensor_of_the_real_sd2_unet():
    import torch
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**sd_reference.UNET_CONFIGS[FAMILY])
    shapes = {name: tuple(t.shape) for name, t in unet.state_dict().items()}
    plan = {w.name: w for w in plan_for(FAMILY, "diffusion_model")}
    assert set(plan) == set(shapes)
    wrong = [n for n, w in plan.items() if shapes[n] not in w.torch_shapes()]
    assert not wrong, wrong[:5]
    # What makes it SD 2.x: Linear projections into 64-wide heads, 1024-wide context.
    assert shapes["down_blocks.0.attentions.0.proj_in.weight"] == (320, 320)
    assert shapes["mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight"] == (1280, 1024)


def test_unet_transformer_block_matches_diffusers():
    """keras-cv's SpatialTransformer as DiffusionModelV2 builds it (10 heads of 64,
    linear projections) against diffusers' Transformer2DModel of SD 2.1's second level,
    its weights placed by the family's plan."""
    import keras
    import torch
    from diffusers.models.transformers.transformer_2d import Transformer2DModel
    from keras_cv.src.models.stable_diffusion.diffusion_model import SpatialTransformer

    from shared.convert.keras_weights import to_keras

    width, context_dim, side = 640, ARCHITECTURES[FAMILY].context_dim, 8
    torch_block = Transformer2DModel(
        num_attention_heads=10,
        attention_head_dim=64,
        in_channels=width,
        cross_attention_dim=context_dim,
        use_linear_projection=True,
        norm_num_groups=32,
    ).eval()
    shapes = {name: tuple(t.shape) for name, t in torch_block.state_dict().items()}
    weights = sd_reference.random_weights(shapes, seed=14)
    torch_block.load_state_dict({k: torch.from_numpy(v).float() for k, v in weights.items()})

    keras.utils.set_random_seed(0)
    block = SpatialTransformer(10, 64, fully_connected=True)
    rng = np.random.default_rng(15)
    x = rng.standard_normal((1, side, side, width), dtype=np.float32)
    context = rng.standard_normal((1, 77, context_dim), dtype=np.float32)
    block([x, context])  # builds it
    plan = _unet_transformer("block", width, ARCHITECTURES[FAMILY])
    assert [w.shape for w in plan] == [tuple(v.shape) for v in block.weights]
    for weight, variable in zip(plan, block.weights, strict=True):
        source = weights[weight.name.removeprefix("block.")].astype(np.float32)
        variable.assign(to_keras(source, weight))

    ours = np.asarray(block([x, context]))
    with torch.no_grad():
        theirs = torch_block(
            torch.from_numpy(x.transpose(0, 3, 1, 2)),
            encoder_hidden_states=torch.from_numpy(context),
        ).sample.numpy()
    error = relative_error(ours, theirs.transpose(0, 2, 3, 1))
    print(f"sd-v2 UNet transformer block: relative error {error:.2e}")
    assert error < BLOCK_TOLERANCE


def test_single_file_openclip_layout(reference):
    """SD 2.x single file: diffusers' OpenCLIP converter reads our q/k/v fusion back into
    the transformers weights; converting it needs the prediction type said, then gives
    the text encoder the diffusers folder gave."""
    import torch
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
    from safetensors import safe_open
    from safetensors.numpy import save_file

    weights = dict(reference.weights)
    checkpoint = sd_reference.original_checkpoint(FAMILY, weights, parts=("vae", "text_encoder"))
    as_torch = {k: torch.from_numpy(np.asarray(v)) for k, v in checkpoint.items()}
    read = convert_open_clip_checkpoint(reference.text, as_torch)
    read = {k.removeprefix("text_model."): v for k, v in read.items()}
    expected = reference.weights["text_encoder"]
    assert set(expected) <= set(read)
    assert all(np.array_equal(read[k].numpy(), expected[k]) for k in expected)

    path = reference.root / "sd21-original.safetensors"
    save_file(checkpoint, str(path))
    out = reference.root / "converted-single"
    components = ["text_encoder", "decoder", "image_encoder"]
    with pytest.raises(WeightsError, match="--prediction-type v_prediction"):
        convert(path, FAMILY, out, components=components)
    assert not out.exists()
    manifest = convert(path, FAMILY, out, components=components, prediction_type="v_prediction")
    assert manifest["prediction_type_from"] == "--prediction-type"
    name = "text_encoder.safetensors"
    with (
        safe_open(str(out / name), framework="numpy") as ours,
        safe_open(str(reference.out / name), framework="numpy") as folder,
    ):
        keys = set(ours.keys())
        assert keys == set(folder.keys())
        assert all(np.array_equal(ours.get_tensor(k), folder.get_tensor(k)) for k in keys)
