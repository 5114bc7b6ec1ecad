"""`sdserve convert` proved by numbers for sd-v1.

diffusers / transformers models of SD 1.5's real architecture (the configs of
runwayml/stable-diffusion-v1-5) with seeded random weights are saved as a diffusers folder
(float16, as published), converted, loaded by our family through
shared.models.build_component (what every service runs) and run on the same inputs as
the PyTorch originals; and a LoRA against diffusers' own LoRA loading. (The same weights
as one original-layout single file: test_reference_sd_v1_single_file.py.)

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
"""

from __future__ import annotations

import gc
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from shared.convert.convert import convert
from shared.convert.keras_weights import variables_by_name
from shared.convert.lora import LoraSpec, lora_deltas, merge_loras
from tests.integration.shared.convert.conftest import (
    KerasModels,
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


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("sd-v1-reference")
    folder = root / "sd15-diffusers"
    for part, seed in (("unet", 1), ("vae", 2), ("text_encoder", 3)):
        config, weights = sd_reference.random_state(part, FAMILY, seed)
        sd_reference.write_part(folder, part, weights, config)
        del weights
    # An SD 1.x v-prediction fine-tune (they exist): the UNet's outputs do not depend on
    # it, and the prediction type then travels from the scheduler to the loaded UNet.
    sd_reference.write_scheduler(folder, "v_prediction")
    out = root / "converted"
    manifest = convert(folder, FAMILY, out)
    x = inputs(FAMILY, seed=4)
    yield SimpleNamespace(
        root=root,
        out=out,
        manifest=manifest,
        x=x,
        **_pytorch_side(folder, root / "lora", x),
        keras=KerasModels(FAMILY, out),
    )
    shutil.rmtree(root, ignore_errors=True)  # gigabytes; pytest keeps old temp dirs


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
    assert manifest["family"] == FAMILY and manifest["prediction_type"] == "v_prediction"
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
    # What the sampler will follow (shared.models.LoadedModels.prediction_type).
    expected = "v_prediction" if component == "diffusion_model" else "epsilon"
    assert origin.prediction_type == expected
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
