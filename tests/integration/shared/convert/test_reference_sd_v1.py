"""`sdserve convert` proved by numbers for sd-v1, and the converted weights served.

diffusers / transformers models of SD 1.5's real architecture (the configs of
runwayml/stable-diffusion-v1-5) with seeded random weights are saved as a diffusers folder
(float16, as published) and converted (the session's `sd_v1_checkpoint`, which the sd-v1
services also serve); the converted directory is loaded by our three stages (what every
service runs: shared.models through the stages' own loading), whose keras-cv models are
run on the same inputs as the PyTorch originals; and a LoRA against diffusers' own LoRA
loading. (The same weights as one original-layout single file:
test_reference_sd_v1_single_file.py.) The stages then serve a generation, compared with
keras-cv's own `generate_image` on the same models.

Memory: everything PyTorch computes is computed first and its models dropped before
keras-cv's are built, so the two real-size UNets (3.4 GB each in float32) are never held
at once.

Tolerance, and why: both sides compute in float32 on identical weights, so what differs
is arithmetic. keras-cv's UNet differs from diffusers' by design in two places: its GEGLU
uses the tanh approximation of GELU (diffusers: erf), and its GroupNormalization in the
transformer blocks uses eps 1e-5 (diffusers: 1e-6); the UNet's output moves by ~1e-4 of
its scale (measured 1.3e-4). The text encoder, decoder and image encoder agree to ~1e-5
(measured 1.3e-6 to 1.1e-5). We allow 5e-4 for the UNet and 1e-4 for the rest. A wrong
mapping moves outputs by hundreds of times that: swapping one text-encoder layer's q and
k projections moved its output by 6 %, one layer norm's scale and offset by 53 %, the
decoder's attention q and k by 10 %, one of its GroupNorms' scale and offset by 17 %.

The served generation against keras-cv's `generate_image` (both sides the same component
objects, the same context and initial noise, 3 steps), so any difference comes from the
serving code. The DDIM arithmetic is bit-identical (see test_sampler), but keras-cv runs
the text encoder on one row per call while our text encoder batches the prompt with its
negative prompt, and oneDNN picks different kernels (and summation orders) for different
batch sizes. That moves the contexts by float32 rounding (~1e-6 relative), which the UNet
then carries through three steps. We therefore compare latents with a relative tolerance
of 1e-4 of their scale and images to within 1 level of 255 on at least 99.9 % of pixels;
a real serving bug (wrong timestep, alpha, guidance or noise) moves them by orders of
magnitude more.
"""

from __future__ import annotations

import asyncio
import gc
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from shared.convert.keras_weights import variables_by_name
from shared.convert.lora import LoraSpec, lora_deltas, merge_loras
from shared.noise_schedule import initial_noise
from shared.pipeline.types import DecodeRequest, DenoiseParams, DenoiseRequest, EncodeRequest
from tests.integration.shared.convert.conftest import (
    SIZE,
    inputs,
    relative_error,
    run_keras,
    run_torch,
)
from tests.utils import sd_reference

pytestmark = pytest.mark.slow

FAMILY = "sd-v1"
TOLERANCE = {
    "text_encoder": 1e-4,
    "diffusion_model": 5e-4,
    "decoder": 1e-4,
    "image_encoder": 1e-4,
}
COMPONENTS = tuple(TOLERANCE)
LORA_SCALE = 0.8
LORA_RANK = 4
LORA_ALPHA = 8.0  # alpha / rank = 2
CHAIN_STEPS = 3
CHAIN_SEED = 1234
CHAIN_GUIDANCE = 7.5
CHAIN_PROMPT = "a watercolour of a lighthouse at dawn"


@pytest.fixture(scope="module")
def reference(sd_v1_checkpoint: SimpleNamespace, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("sd-v1-reference")
    x = inputs(FAMILY, seed=4)
    torch_side = _pytorch_side(sd_v1_checkpoint.folder, root / "lora", x)
    stages = _stages(sd_v1_checkpoint.out)
    yield SimpleNamespace(
        out=sd_v1_checkpoint.out,
        manifest=sd_v1_checkpoint.manifest,
        x=x,
        **torch_side,
        stages=stages,
        keras=_keras_models(*stages),
    )
    for stage in stages:
        stage.shutdown()
    shutil.rmtree(root, ignore_errors=True)


def _stages(weights: Path) -> tuple[Any, Any, Any]:
    """Our text encoder, diffusion and decoder stages on the converted weights, loaded
    and ready (float32, no XLA, one UNet call per CFG pass: keras-cv's own way)."""
    from shared.config import Settings
    from shared.pipeline.local.decoder import make_decoder
    from shared.pipeline.local.diffusion import make_diffusion
    from shared.pipeline.local.text_encoder import make_text_encoder

    settings = Settings(
        model=FAMILY,
        weights=str(weights),
        sizes=[(SIZE, SIZE)],
        xla="off",
        batched_cfg="off",
        precision="float32",
        warm_up=False,  # one request each: warming would trace the graphs twice
    )
    stages = make_text_encoder(settings), make_diffusion(settings), make_decoder(settings)
    for stage in stages:
        stage.load()
    for stage in stages:  # after every build: building seeds TensorFlow
        stage.warm()
    return stages


def _keras_models(text_encoder: Any, diffusion: Any, decoder: Any) -> Any:
    """component -> (the stage's keras-cv model, its WeightsOrigin)."""
    runners = {
        "text_encoder": (text_encoder.models, text_encoder.models.text_encoder),
        "diffusion_model": (diffusion.models, diffusion.models.diffusion[(SIZE, SIZE)]),
        "decoder": (decoder.models, decoder.models.decoder[(SIZE, SIZE)]),
        "image_encoder": (decoder.models, decoder.models.image_encoder[(SIZE, SIZE)]),
    }
    models = {c: (runner.model, loaded.origins[c]) for c, (loaded, runner) in runners.items()}
    return models.__getitem__


def _pytorch_side(folder: Path, lora_dir: Path, x: dict[str, Any]) -> dict[str, Any]:
    """Everything the PyTorch models give, computed at once, the models then dropped:
    each component's output; a random LoRA (rank 4, alpha 8) for the UNet and text
    encoder written by diffusers (PEFT layout) and in kohya's layout, loaded by diffusers
    onto twins of the models at LORA_SCALE: PEFT's update of every module, and the
    outputs with the (PEFT-layout) LoRA active."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils.peft_utils import set_weights_and_activate_adapters

    unet = sd_reference.from_folder("unet", FAMILY, folder)
    vae = sd_reference.from_folder("vae", FAMILY, folder)
    text = sd_reference.from_folder("text_encoder", FAMILY, folder)
    models = {"text_encoder": text, "diffusion_model": unet, "decoder": vae, "image_encoder": vae}
    outputs = {component: run_torch(component, model, x) for component, model in models.items()}

    unet_lora = sd_reference.random_lora(unet, sd_reference.UNET_LORA_RE, LORA_RANK, seed=5)
    text_lora = sd_reference.random_lora(text, sd_reference.TEXT_LORA_RE, LORA_RANK, seed=6)
    files = {
        "peft": sd_reference.save_peft_lora(lora_dir, unet_lora, text_lora, LORA_ALPHA),
        "kohya": sd_reference.save_kohya_lora(
            lora_dir / "kohya.safetensors", unet_lora, text_lora, LORA_ALPHA
        ),
    }
    updates: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    lora_outputs = {}
    for layout, path in files.items():
        state, alphas, metadata = StableDiffusionPipeline.lora_state_dict(
            str(path), return_lora_metadata=True
        )
        twins = {
            "diffusion_model": sd_reference.twin("unet", FAMILY, unet),
            "text_encoder": sd_reference.twin("text_encoder", FAMILY, text),
        }
        StableDiffusionPipeline.load_lora_into_unet(
            state, alphas, twins["diffusion_model"], adapter_name=layout, metadata=metadata
        )
        StableDiffusionPipeline.load_lora_into_text_encoder(
            state,
            alphas,
            twins["text_encoder"],
            prefix="text_encoder",
            adapter_name=layout,
            metadata=metadata,
        )
        twins["diffusion_model"].set_adapters([layout], weights=[LORA_SCALE])
        set_weights_and_activate_adapters(twins["text_encoder"], [layout], [LORA_SCALE])
        updates[layout] = {
            component: {
                _plan_name(component, module) + ".weight": delta
                for module, delta in sd_reference.peft_deltas(twin, layout).items()
            }
            for component, twin in twins.items()
        }
        if layout == "peft":
            lora_outputs = {c: run_torch(c, twin, x) for c, twin in twins.items()}
        del twins
    lora = SimpleNamespace(
        files=files,
        updates=updates,
        outputs=lora_outputs,
        modules={"diffusion_model": len(unet_lora), "text_encoder": len(text_lora)},
    )
    del models, unet, vae, text
    gc.collect()
    return {"outputs": outputs, "lora": lora}


def _plan_name(component: str, module: str) -> str:
    """transformers 5 names CLIP's modules without the `text_model.` the plans use."""
    if component == "text_encoder" and not module.startswith("text_model."):
        return "text_model." + module
    return module


def test_manifest_says_what_was_converted(reference):
    manifest = reference.manifest
    assert manifest["family"] == FAMILY and manifest["prediction_type"] == "epsilon"
    assert manifest["prediction_type_from"] == "scheduler/scheduler_config.json"
    source = manifest["source"]
    assert source["name"] == "sd15-diffusers" and source["layout"] == "diffusers"
    assert "unet/diffusion_pytorch_model.fp16.safetensors" in source["files"]
    assert set(manifest["components"]) == set(COMPONENTS)
    assert manifest["components"]["diffusion_model"]["tensors"] == 686
    assert manifest["components"]["diffusion_model"]["dtypes"] == {"float16": 686}
    assert manifest["not_converted"]["count"] == 0
    sums = (reference.out / "SHA256SUMS").read_text()
    assert all(f"{c['sha256']}  {c['file']}" in sums for c in manifest["components"].values())


@pytest.mark.parametrize("component", COMPONENTS)
def test_component_matches_diffusers(reference, component):
    model, origin = reference.keras(component)
    assert origin.source == "directory" and origin.path.endswith(f"{component}.safetensors")
    # What the sampler will follow (shared.models.LoadedModels.prediction_type); a
    # v-prediction UNet's: test_reference_sd_v2.py.
    assert origin.prediction_type == "epsilon"
    ours = run_keras(component, model, reference.x)
    theirs = reference.outputs[component]
    error = relative_error(ours, theirs)
    print(f"sd-v1 {component}: relative error {error:.2e} (scale {np.abs(theirs).max():.3g})")
    assert error < TOLERANCE[component]


@pytest.mark.parametrize("layout", ["peft", "kohya"])
@pytest.mark.parametrize("component", ["text_encoder", "diffusion_model"])
def test_lora_updates_match_diffusers(reference, layout, component):
    """Every module's update as we read the file equals PEFT's, after diffusers loaded
    the same file (its kohya conversion included)."""
    lora = reference.lora
    ours = lora_deltas(LoraSpec(lora.files[layout], LORA_SCALE), FAMILY, component)
    theirs = lora.updates[layout][component]
    assert len(ours) == lora.modules[component] and set(ours) == set(theirs)
    worst = max(relative_error(ours[k], theirs[k]) for k in ours)
    print(f"sd-v1 LoRA {layout} {component}: {len(ours)} modules, worst relative error {worst:.1e}")
    assert worst < 1e-5


@pytest.mark.parametrize("component", ["text_encoder", "diffusion_model"])
def test_merged_lora_model_matches_diffusers_lora(reference, component):
    """Our family's model with the LoRA merged (merge_loras, what SDSERVE_LORA runs at
    load) computes what diffusers computes with the adapter active."""
    model, _ = reference.keras(component)
    spec = LoraSpec(reference.lora.files["peft"], LORA_SCALE)
    variables = variables_by_name(model, FAMILY, component)
    saved = {
        name: variables[name].numpy().copy() for name in reference.lora.updates["peft"][component]
    }
    try:
        assert merge_loras(model, FAMILY, component, [spec]) == (
            f"pytorch_lora_weights.safetensors (scale {LORA_SCALE:g})",
        )
        ours = run_keras(component, model, reference.x)
    finally:
        for name, value in saved.items():
            variables[name].assign(value)
    theirs, plain = reference.lora.outputs[component], reference.outputs[component]
    error, moved = relative_error(ours, theirs), relative_error(plain, theirs)
    print(f"sd-v1 LoRA {component}: relative error {error:.2e}, the LoRA moved it {moved:.2f}")
    assert moved > 100 * TOLERANCE[component]  # the LoRA matters
    assert error < TOLERANCE[component]


class RecordingDecoder:
    """Wraps keras-cv's decoder call to capture the latent generate_image decodes."""

    def __init__(self, model):
        self.model = model
        self.latent = None

    def predict_on_batch(self, latent):
        self.latent = np.asarray(latent)
        return self.model.predict_on_batch(latent)


def test_served_chain_matches_keras_cv_generate_image(reference):
    """Our three stages chained in-process on the converted weights, against keras-cv's
    own `generate_image` on the same models (tolerance: the module's docstring)."""
    from keras_cv.src.models.stable_diffusion.stable_diffusion import StableDiffusion

    text_encoder, diffusion, decoder = reference.stages

    async def ours():
        encoded = await text_encoder.encode(EncodeRequest(prompts=[CHAIN_PROMPT]))
        params = DenoiseParams(
            width=SIZE,
            height=SIZE,
            steps=CHAIN_STEPS,
            guidance_scale=CHAIN_GUIDANCE,
            seed=CHAIN_SEED,
        )
        denoised = await diffusion.denoise(
            DenoiseRequest(encoded.context, encoded.unconditional_context, params)
        )
        decoded = await decoder.decode(DecodeRequest(denoised.latent))
        return encoded, denoised, decoded

    encoded, denoised, decoded = asyncio.run(ours())

    keras_cv = StableDiffusion(img_height=SIZE, img_width=SIZE, jit_compile=False)
    keras_cv._tokenizer = text_encoder.tokenizer._tokenizer
    keras_cv._text_encoder = text_encoder.models.text_encoder.model
    keras_cv._diffusion_model = diffusion.models.diffusion[(SIZE, SIZE)].model
    recorder = RecordingDecoder(decoder.models.decoder[(SIZE, SIZE)].model)
    keras_cv._decoder = recorder

    # The text encoder itself: keras-cv's encode_text of the same prompt.
    keras_context = np.asarray(keras_cv.encode_text(CHAIN_PROMPT))
    np.testing.assert_allclose(encoded.context, keras_context, rtol=1e-4, atol=1e-5)

    keras_images = keras_cv.generate_image(
        encoded.context,
        batch_size=1,
        num_steps=CHAIN_STEPS,
        unconditional_guidance_scale=CHAIN_GUIDANCE,
        diffusion_noise=initial_noise(CHAIN_SEED, (SIZE // 8, SIZE // 8, 4)),
    )

    ours_latent, keras_latent = denoised.latent, recorder.latent
    assert ours_latent.shape == keras_latent.shape == (1, SIZE // 8, SIZE // 8, 4)
    assert np.isfinite(ours_latent).all()
    scale = float(np.abs(keras_latent).max())
    max_diff = float(np.abs(ours_latent - keras_latent).max())
    print(f"latent scale {scale:.4g}, max |diff| {max_diff:.3g} ({max_diff / scale:.2g} relative)")
    assert max_diff <= 1e-4 * scale

    assert decoded.images.shape == keras_images.shape == (1, SIZE, SIZE, 3)
    assert decoded.images.dtype == keras_images.dtype == np.uint8
    pixel_diff = np.abs(decoded.images.astype(int) - keras_images.astype(int))
    print(f"pixels differing: {(pixel_diff > 0).mean():.4%}, max {pixel_diff.max()}")
    assert pixel_diff.max() <= 1
    assert (pixel_diff > 0).mean() <= 0.001
    # Not a vacuous comparison: the image has structure.
    assert keras_images.std() > 1
