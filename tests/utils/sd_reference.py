"""Reference Stable Diffusion models (diffusers / transformers, PyTorch) with seeded random
weights, for proving `sdserve convert` by numbers.

The models have the real SD 1.x / 2.x architectures (the configs diffusers ships for
runwayml/stable-diffusion-v1-5 and stabilityai/stable-diffusion-2-1). They are built on
PyTorch's meta device and given numpy-drawn weights (`assign=True`), which is several
times faster than PyTorch's own initialisation of an 860M-parameter UNet, and randomises
what a default initialisation leaves constant (norm scales of 1, offsets of 0), so a
swapped scale and offset cannot pass unnoticed. Weights are drawn in float32 and rounded
to float16, as most published checkpoints are; the PyTorch models hold those float16
values as float32, so both sides compute in float32 on identical weights.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

# torch imports triton whenever it is installed, and triton's native library crashes
# the process when loaded after TensorFlow; PyTorch runs on the CPU here, where triton
# is never used (tests/integration/shared/conftest.py says more).
sys.modules.setdefault("triton", None)  # type: ignore[arg-type]

UNET_CONFIGS: dict[str, dict[str, Any]] = {
    "sd-v1": {"cross_attention_dim": 768, "attention_head_dim": 8, "sample_size": 64},
    "sd-v2": {
        "cross_attention_dim": 1024,
        "attention_head_dim": [5, 10, 20, 20],
        "use_linear_projection": True,
        "sample_size": 96,
    },
}
TEXT_CONFIGS: dict[str, dict[str, Any]] = {
    "sd-v1": {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "max_position_embeddings": 77,
        "hidden_act": "quick_gelu",
        "projection_dim": 768,
    },
    "sd-v2": {
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 23,
        "num_attention_heads": 16,
        "max_position_embeddings": 77,
        "hidden_act": "gelu",
        "projection_dim": 512,
    },
}
VAE_CONFIG: dict[str, Any] = {
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 4,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}


POOL_SIZE = 1 << 24  # 16M float32 draws, sliced into every tensor


def random_weights(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, np.ndarray]:
    """float16 weights for a state dict's names and shapes, scaled to keep activations
    near unit size: kernels N(0, 1/fan_in), norm scales 1 + N(0, 0.1^2), the rest small.

    Drawing 860M normals (and converting them to float16 in numpy) costs many seconds;
    every tensor is instead a slice, at its own seeded offset, of one pool of 16M standard
    normals (tiled for the few larger tensors), so no two tensors share values at the same
    positions and a swap shows. Each is scaled and rounded in one pass of PyTorch's kernels
    straight into its float16 array (no float32 copy of an 860M-parameter model).
    """
    import torch

    rng = np.random.default_rng(seed)
    pool = torch.from_numpy(rng.standard_normal(POOL_SIZE, dtype=np.float32))
    weights = {}
    for name, shape in shapes.items():
        start, size = int(rng.integers(POOL_SIZE)), int(np.prod(shape))
        if len(shape) >= 2:
            scale, offset = float(1.0 / np.sqrt(np.prod(shape[1:]))), 0.0
        elif "norm" in name and name.endswith(".weight"):
            scale, offset = 0.1, 1.0
        else:
            scale, offset = 0.1, 0.0
        out = torch.empty(size, dtype=torch.float16)
        done = 0
        while done < size:  # `size` values of the pool from `start` on, wrapping around
            count = min(size - done, POOL_SIZE - start)
            piece = pool[start : start + count]
            # float32 arithmetic rounded once to float16, as `(x * scale).half()` rounds
            if offset:
                torch.add(piece * scale, offset, out=out[done : done + count])
            else:
                torch.mul(piece, scale, out=out[done : done + count])
            done, start = done + count, 0
        weights[name] = out.numpy().reshape(shape)
    return weights


def random_state(kind: str, family: str, seed: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(the model's diffusers config, its float16 random weights by state-dict name),
    without building the model (its shapes come from the meta device)."""
    import torch

    with torch.device("meta"):
        model = _construct(kind, family)
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    config = dict(getattr(model, "config", {})) if kind != "text_encoder" else {}
    return config, random_weights(shapes, seed)


def with_weights(kind: str, family: str, weights: dict[str, Any]) -> Any:
    """The PyTorch model (eval mode, float32) holding `weights` (numpy or torch tensors)."""
    import torch

    with torch.device("meta"):
        model = _construct(kind, family)
    tensors = {
        name: (torch.from_numpy(w) if isinstance(w, np.ndarray) else w).float()
        for name, w in weights.items()
    }  # .float() of a float32 tensor is the tensor itself, not a copy
    model.load_state_dict(tensors, assign=True)
    for module in model.modules():  # buffers outside the state dict (CLIP's position ids)
        for name, buffer in list(module.named_buffers(recurse=False)):
            if buffer.is_meta:
                assert name == "position_ids", name
                module.register_buffer(name, torch.arange(buffer.shape[-1])[None], False)
    return model.eval()


def build(kind: str, family: str, seed: int) -> tuple[Any, dict[str, np.ndarray]]:
    """(PyTorch model in eval mode, its float16 weights by diffusers / transformers name)."""
    _, weights = random_state(kind, family, seed)
    return with_weights(kind, family, weights), weights


def from_folder(kind: str, family: str, folder: Path) -> Any:
    """The PyTorch model of one part of a diffusers folder (`write_diffusers_folder`)."""
    from safetensors import safe_open

    weights: dict[str, Any] = {}
    for path in sorted((folder / PART_FOLDERS[kind]).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (a safe_open handle, not a dict)
                # float32 one tensor at a time: never the whole float16 file besides
                weights[key] = handle.get_tensor(key).float()
    return with_weights(kind, family, weights)


def _construct(kind: str, family: str) -> Any:
    if kind == "unet":
        from diffusers import UNet2DConditionModel

        return UNet2DConditionModel(**UNET_CONFIGS[family])
    if kind == "vae":
        from diffusers import AutoencoderKL

        return AutoencoderKL(**VAE_CONFIG)
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(**TEXT_CONFIGS[family]))


PART_FOLDERS = {"unet": "unet", "vae": "vae", "text_encoder": "text_encoder"}
PART_FILES = {
    "unet": "diffusion_pytorch_model",
    "vae": "diffusion_pytorch_model",
    "text_encoder": "model",
}


def write_part(root: Path, part: str, weights: dict[str, np.ndarray], config: Any) -> None:
    """One part of a diffusers folder: <part>/<file>.fp16.safetensors and config.json
    (written with the safetensors package, as diffusers writes them)."""
    from safetensors.numpy import save_file

    (root / part).mkdir(parents=True)
    save_file(weights, str(root / part / f"{PART_FILES[part]}.fp16.safetensors"))
    (root / part / "config.json").write_text(json.dumps(config, default=str))


def write_scheduler(root: Path, prediction_type: str) -> None:
    """scheduler/scheduler_config.json saying what the UNet predicts, and model_index.json."""
    (root / "scheduler").mkdir(parents=True)
    scheduler = {"_class_name": "DDIMScheduler", "prediction_type": prediction_type}
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
    (root / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))


def original_checkpoint(
    family: str,
    weights: dict[str, dict[str, np.ndarray]],
    parts: tuple[str, ...] = ("unet", "vae", "text_encoder"),
) -> dict[str, np.ndarray]:
    """The same weights as one original-layout (CompVis / A1111) checkpoint, with the
    extras real ones carry (an EMA marker, CLIP's projection, the noise schedule).

    Keys come from `shared.convert.layouts`; the tests check this layout independently by
    reading the file back with diffusers' own single-file converters.
    """
    from shared.convert.layouts import original_refs
    from shared.convert.plan import plan_for

    sources = {
        "diffusion_model": "unet",
        "decoder": "vae",
        "image_encoder": "vae",
        "text_encoder": "text_encoder",
    }
    checkpoint: dict[str, np.ndarray] = {}
    fused: dict[str, list[tuple[int, np.ndarray]]] = {}
    for component, part in sources.items():
        if part not in parts:
            continue
        tensors = weights[part]
        for weight in plan_for(family, component):  # type: ignore[arg-type]
            name = weight.name
            value = tensors.get(name, tensors.get(name.removeprefix("text_model.")))
            assert value is not None, name
            ref = original_refs(family, component, name)[0]  # type: ignore[arg-type]
            if ref.rows is None:
                checkpoint[ref.key] = value
            else:
                fused.setdefault(ref.key, []).append((ref.rows[0], value))
    for key, pieces in fused.items():  # OpenCLIP's q, k, v in one tensor
        checkpoint[key] = np.concatenate([value for _, value in sorted(pieces, key=lambda p: p[0])])
    checkpoint["alphas_cumprod"] = np.linspace(0.99, 0.01, 1000, dtype=np.float32)
    checkpoint["model_ema.decay"] = np.asarray(0.9999, dtype=np.float32)
    if family == "sd-v2":
        checkpoint["cond_stage_model.model.text_projection"] = np.zeros((1024, 1024), np.float16)
        checkpoint["cond_stage_model.model.logit_scale"] = np.asarray(4.6, dtype=np.float32)
    return checkpoint


def twin(kind: str, family: str, model: Any) -> Any:
    """A second PyTorch model sharing `model`'s weight tensors (no copy): LoRA adapters
    go on the twin, leaving the original as it was."""
    import torch

    with torch.device("meta"):
        copy = _construct(kind, family)
    copy.load_state_dict(model.state_dict(), assign=True)
    for (name, buffer), (_, source) in zip(
        copy.named_buffers(), model.named_buffers(), strict=True
    ):
        if buffer.is_meta:
            module_name, _, attr = name.rpartition(".")
            copy.get_submodule(module_name).register_buffer(attr, source.clone(), False)
    return copy.eval()


# What a typical LoRA trains (attention and feed-forward projections, and the UNet
# transformer blocks' in/out projections), in three UNet blocks (first, middle, last) and
# three text-encoder layers, plus two LoCon-style modules (a 3x3 convolution and a
# ResBlock's time-embedding Dense) to exercise those kernels.
UNET_LORA_RE = (
    r"^(down_blocks\.0\.attentions\.0|mid_block\.attentions\.0|up_blocks\.3\.attentions\.2)\."
    r"(transformer_blocks\.0\.(attn[12]\.to_(q|k|v|out\.0)|ff\.net\.(0\.proj|2))|proj_in|proj_out)$"
    r"|^down_blocks\.0\.resnets\.0\.conv1$|^up_blocks\.3\.resnets\.2\.time_emb_proj$"
)
TEXT_LORA_RE = r"layers\.(0|5|11)\.(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])$"


def random_lora(
    model: Any, pattern: str, rank: int, seed: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """module name -> (down, up) in PyTorch layout for the Linear / Conv2d modules whose
    names match `pattern`; sized so the update moves outputs by tens of percent."""
    import re

    rng = np.random.default_rng(seed)
    lora = {}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if not re.search(pattern, name) or weight is None or weight.ndim < 2:
            continue
        out_dim, in_dim, *kernel = weight.shape
        fan_in = in_dim * int(np.prod(kernel or [1]))
        down = rng.standard_normal((rank, in_dim, *kernel), dtype=np.float32) / np.sqrt(fan_in)
        up = 0.3 / np.sqrt(rank) * rng.standard_normal((out_dim, rank, *[1] * len(kernel)))
        lora[name] = (down, up.astype(np.float32))
    return lora


def save_peft_lora(
    directory: Path,
    unet_lora: dict[str, tuple[np.ndarray, np.ndarray]],
    text_lora: dict[str, tuple[np.ndarray, np.ndarray]],
    alpha: float,
) -> Path:
    """The LoRA as diffusers' own `save_lora_weights` writes it (PEFT layout, alpha in
    `lora_adapter_metadata`)."""
    import torch
    from diffusers import StableDiffusionPipeline

    def layers(lora: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
        tensors = {}
        for module, (down, up) in lora.items():
            tensors[f"{module}.lora_A.weight"] = torch.from_numpy(down)
            tensors[f"{module}.lora_B.weight"] = torch.from_numpy(up)
        return tensors

    def metadata(lora: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
        rank = next(iter(lora.values()))[0].shape[0]
        return {"r": rank, "lora_alpha": alpha, "target_modules": sorted(lora)}

    StableDiffusionPipeline.save_lora_weights(
        str(directory),
        unet_lora_layers=layers(unet_lora),
        text_encoder_lora_layers=layers(text_lora),
        unet_lora_adapter_metadata=metadata(unet_lora),
        text_encoder_lora_adapter_metadata=metadata(text_lora),
    )
    return directory / "pytorch_lora_weights.safetensors"


def save_kohya_lora(
    path: Path,
    unet_lora: dict[str, tuple[np.ndarray, np.ndarray]],
    text_lora: dict[str, tuple[np.ndarray, np.ndarray]],
    alpha: float,
) -> Path:
    """The LoRA in kohya's layout (sd-scripts, A1111), bfloat16 as sd-scripts often saves."""
    import torch
    from safetensors.torch import save_file

    tensors = {}
    for prefix, lora in (("lora_unet_", unet_lora), ("lora_te_", text_lora)):
        for module, (down, up) in lora.items():
            if prefix == "lora_te_" and not module.startswith("text_model."):
                module = "text_model." + module  # kohya names CLIP's modules in full
            stem = prefix + module.replace(".", "_")
            tensors[f"{stem}.lora_down.weight"] = torch.from_numpy(down).bfloat16()
            tensors[f"{stem}.lora_up.weight"] = torch.from_numpy(up).bfloat16()
            tensors[f"{stem}.alpha"] = torch.tensor(alpha, dtype=torch.bfloat16)
    save_file(tensors, str(path))
    return path


def peft_deltas(model: Any, adapter: str) -> dict[str, np.ndarray]:
    """PEFT's own update (scale included) of each LoRA'd module, PyTorch layout."""
    from peft.tuners.lora import LoraLayer

    deltas = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and adapter in module.lora_A:
            deltas[name] = module.get_delta_weight(adapter).detach().float().numpy()
    return deltas
