"""`sdserve convert` proved by numbers for sd-v1.

diffusers / transformers models of SD 1.5's real architecture (the configs of
runwayml/stable-diffusion-v1-5) with seeded random weights are saved as a diffusers folder
(float16, as published), converted, loaded by our family through
shared.models.build_component (what every service runs) and run on the same inputs as
the PyTorch originals. Then the same weights as one original-layout single file, and a
LoRA against diffusers' own LoRA loading.

Tolerance, and why: both sides compute in float32 on identical weights, so what differs
is arithmetic. keras-cv's UNet differs from diffusers' by design in two places: its GEGLU
uses the tanh approximation of GELU (diffusers: erf), and its GroupNormalization in the
transformer blocks uses eps 1e-5 (diffusers: 1e-6); the UNet's output moves by ~1e-4 of
its scale (measured 1.2e-4). The text encoder, decoder and image encoder agree to ~1e-5
(measured 1e-6 to 1.4e-5). We allow 5e-4 for the UNet and 1e-4 for the rest: a wrong
mapping (a transposed kernel, a swapped q/k, scale/offset mix-up, a missing shortcut)
moves outputs by tens of percent.
"""

from __future__ import annotations

import shutil
from types import SimpleNamespace

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
    unet, unet_w = sd_reference.build("unet", FAMILY, seed=1)
    vae, vae_w = sd_reference.build("vae", FAMILY, seed=2)
    text, text_w = sd_reference.build("text_encoder", FAMILY, seed=3)
    weights = {"unet": unet_w, "vae": vae_w, "text_encoder": text_w}
    configs = {"unet": dict(unet.config), "vae": dict(vae.config), "text_encoder": {}}
    folder = root / "sd15-diffusers"
    # An SD 1.x v-prediction fine-tune (they exist): the UNet's outputs do not depend on
    # it, and the prediction type then travels from the scheduler to the loaded UNet.
    sd_reference.write_diffusers_folder(folder, weights, configs, "v_prediction")
    out = root / "converted"
    manifest = convert(folder, FAMILY, out)
    yield SimpleNamespace(
        root=root,
        folder=folder,
        out=out,
        manifest=manifest,
        weights=weights,
        torch={
            "diffusion_model": unet,
            "decoder": vae,
            "image_encoder": vae,
            "text_encoder": text,
        },
        keras=KerasModels(FAMILY, out),
        x=inputs(FAMILY, seed=4),
        outputs={},  # component -> the PyTorch model's output, computed once
    )
    shutil.rmtree(root, ignore_errors=True)  # gigabytes; pytest keeps old temp dirs


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
    theirs = reference_output(reference, component)
    error = relative_error(ours, theirs)
    print(f"sd-v1 {component}: relative error {error:.2e} (scale {np.abs(theirs).max():.3g})")
    assert error < TOLERANCE[component]


def reference_output(reference, component):
    if component not in reference.outputs:
        reference.outputs[component] = run_torch(component, reference.torch[component], reference.x)
    return reference.outputs[component]


@pytest.fixture(scope="module")
def single_file(reference):
    from safetensors.numpy import save_file

    checkpoint = sd_reference.original_checkpoint(FAMILY, reference.weights)
    path = reference.root / "sd15-original.safetensors"
    save_file(checkpoint, str(path))
    return path, checkpoint


def test_single_file_layout_is_what_diffusers_reads(reference, single_file):
    """diffusers' own single-file converters read our assembled checkpoint back into
    exactly the diffusers weights: the original layout here is the real one."""
    import torch
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
    )

    _, checkpoint = single_file
    as_torch = {k: torch.from_numpy(np.asarray(v)) for k, v in checkpoint.items()}
    unet = convert_ldm_unet_checkpoint(as_torch, dict(reference.torch["diffusion_model"].config))
    vae = convert_ldm_vae_checkpoint(as_torch, dict(reference.torch["decoder"].config))
    text = convert_ldm_clip_checkpoint(as_torch)
    for read, expected in (
        (unet, reference.weights["unet"]),
        (vae, reference.weights["vae"]),
        (
            {k.removeprefix("text_model."): v for k, v in text.items()},
            reference.weights["text_encoder"],
        ),
    ):
        assert set(read) == set(expected)
        assert all(np.array_equal(read[k].numpy(), expected[k]) for k in expected)


def test_single_file_converts_to_the_same_weights(reference, single_file):
    from safetensors import safe_open

    path, _ = single_file
    out = reference.root / "converted-single"
    manifest = convert(path, FAMILY, out)
    assert manifest["source"]["layout"] == "original"
    assert manifest["prediction_type"] == "epsilon"  # a single file does not say
    assert manifest["prediction_type_from"].startswith("sd-v1")
    unused = manifest["not_converted"]
    assert unused["count"] == 2 and set(unused["examples"]) == {"alphas_cumprod", "model_ema.decay"}
    for component in COMPONENTS:
        name = f"{component}.safetensors"
        with (
            safe_open(str(out / name), framework="numpy") as ours,
            safe_open(str(reference.out / name), framework="numpy") as folder,
        ):
            keys = set(ours.keys())
            assert keys == set(folder.keys())
            assert all(np.array_equal(ours.get_tensor(k), folder.get_tensor(k)) for k in keys)
    shutil.rmtree(out)


@pytest.fixture(scope="module")
def lora(reference):
    """One random LoRA (rank 4, alpha 8) for the UNet and text encoder, written by
    diffusers (PEFT layout) and in kohya's layout, and loaded by diffusers onto twins of
    the reference models at LORA_SCALE."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils.peft_utils import set_weights_and_activate_adapters

    unet, text = reference.torch["diffusion_model"], reference.torch["text_encoder"]
    unet_lora = sd_reference.random_lora(unet, sd_reference.UNET_LORA_RE, LORA_RANK, seed=5)
    text_lora = sd_reference.random_lora(text, sd_reference.TEXT_LORA_RE, LORA_RANK, seed=6)
    directory = reference.root / "lora"
    peft_file = sd_reference.save_peft_lora(directory, unet_lora, text_lora, LORA_ALPHA)
    kohya_file = sd_reference.save_kohya_lora(
        directory / "kohya.safetensors", unet_lora, text_lora, LORA_ALPHA
    )
    twins = {}
    for name, path in (("peft", peft_file), ("kohya", kohya_file)):
        state, alphas, metadata = StableDiffusionPipeline.lora_state_dict(
            str(path), return_lora_metadata=True
        )
        unet_twin = sd_reference.twin("unet", FAMILY, unet)
        text_twin = sd_reference.twin("text_encoder", FAMILY, text)
        StableDiffusionPipeline.load_lora_into_unet(
            state, alphas, unet_twin, adapter_name=name, metadata=metadata
        )
        StableDiffusionPipeline.load_lora_into_text_encoder(
            state, alphas, text_twin, prefix="text_encoder", adapter_name=name, metadata=metadata
        )
        unet_twin.set_adapters([name], weights=[LORA_SCALE])
        set_weights_and_activate_adapters(text_twin, [name], [LORA_SCALE])
        twins[name] = {"diffusion_model": unet_twin, "text_encoder": text_twin}
    return SimpleNamespace(
        files={"peft": peft_file, "kohya": kohya_file},
        twins=twins,
        modules={"diffusion_model": unet_lora, "text_encoder": text_lora},
    )


@pytest.mark.parametrize("layout", ["peft", "kohya"])
@pytest.mark.parametrize("component", ["text_encoder", "diffusion_model"])
def test_lora_updates_match_diffusers(lora, layout, component):
    """Every module's update as we read the file equals PEFT's, after diffusers loaded
    the same file (its kohya conversion included)."""
    ours = lora_deltas(LoraSpec(lora.files[layout], LORA_SCALE), FAMILY, component)
    theirs = sd_reference.peft_deltas(lora.twins[layout][component], layout)
    theirs = {
        (
            "text_model." + k
            if component == "text_encoder" and not k.startswith("text_model.")
            else k
        )
        + ".weight": v
        for k, v in theirs.items()
    }
    assert len(ours) == len(lora.modules[component]) and set(ours) == set(theirs)
    worst = max(relative_error(ours[k], theirs[k]) for k in ours)
    print(f"sd-v1 LoRA {layout} {component}: {len(ours)} modules, worst relative error {worst:.1e}")
    assert worst < 1e-5


@pytest.mark.parametrize("component", ["text_encoder", "diffusion_model"])
def test_merged_lora_model_matches_diffusers_lora(reference, lora, component):
    """Our family's model with the LoRA merged (merge_loras, what SDSERVE_LORA runs at
    load) computes what diffusers computes with the adapter active."""
    model, _ = reference.keras(component)
    spec = LoraSpec(lora.files["peft"], LORA_SCALE)
    variables = variables_by_name(model, FAMILY, component)
    touched = lora_deltas(spec, FAMILY, component)
    saved = {name: variables[name].numpy().copy() for name in touched}
    try:
        assert merge_loras(model, FAMILY, component, [spec]) == (
            f"pytorch_lora_weights.safetensors (scale {LORA_SCALE:g})",
        )
        ours = run_keras(component, model, reference.x)
    finally:
        for name, value in saved.items():
            variables[name].assign(value)
    theirs = run_torch(component, lora.twins["peft"][component], reference.x)
    plain = reference_output(reference, component)
    error, moved = relative_error(ours, theirs), relative_error(plain, theirs)
    print(f"sd-v1 LoRA {component}: relative error {error:.2e}, the LoRA moved it {moved:.2f}")
    assert moved > 100 * TOLERANCE[component]  # the LoRA matters
    assert error < TOLERANCE[component]
