"""LoRA: low-rank updates merged into the UNet and text encoder's weights at load.

`SDSERVE_LORA=a.safetensors:0.8,b.safetensors` merges each file, at its scale (1 when
none is given), into the weights the process loaded: W += scale * (alpha / rank) * up @ down,
on every module the file names. Merged once at load, a LoRA costs nothing per step.

Key layouts read (safetensors only, like everything else):

* **diffusers / PEFT**: `unet.<module>.lora_A.weight` / `lora_B.weight` and
  `text_encoder.<module>...` (also the older `.lora.down/.up.weight`, the attention
  processors' `processor.to_q_lora.down.weight` and the text encoder's
  `lora_linear_layer`); alpha from the file's `lora_adapter_metadata` (what diffusers'
  `save_lora_weights` writes: `lora_alpha`, `alpha_pattern`, `use_rslora`) or per-module
  `.alpha` tensors, else alpha = rank.
* **kohya** (sd-scripts, A1111): `lora_unet_<module with _ for .>.lora_down.weight` /
  `lora_up.weight` / `.alpha`, `lora_te_...` for the text encoder, including
  convolution (LoCon) modules.

Modules are the diffusers modules of `shared.convert.plan`, so a LoRA reaches every Linear
and convolution the conversion maps. A key that names no module of the family, or a
variant that is not plain LoRA (DoRA, LoHa, LoKr, Tucker), fails the load naming it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from shared.convert.keras_weights import to_keras, variables_by_name
from shared.convert.plan import PlannedComponent, Weight, plan_for
from shared.convert.tensors import TensorFiles, refuse_pickle
from shared.errors import WeightsError

if TYPE_CHECKING:
    import keras

LORA_COMPONENTS: tuple[PlannedComponent, ...] = ("text_encoder", "diffusion_model")
_TEXT_MODEL = "text_model."
# Suffix -> which half of the pair it is, in every layout read.
_PARTS = {
    ".lora_A.weight": "down",
    ".lora_B.weight": "up",
    ".lora.down.weight": "down",
    ".lora.up.weight": "up",
    ".lora_linear_layer.down.weight": "down",
    ".lora_linear_layer.up.weight": "up",
    ".lora_down.weight": "down",
    ".lora_up.weight": "up",
    ".alpha": "alpha",
    # diffusers' attention-processor layout: `...attn1.processor.to_q_lora.down.weight`,
    # `...self_attn.to_q_lora.down.weight` (last: the suffixes above are more specific).
    ".down.weight": "down",
    ".up.weight": "up",
}
_UNSUPPORTED = {
    "dora_scale": "DoRA",
    "lora_magnitude_vector": "DoRA",
    "hada_": "LoHa",
    "lokr_": "LoKr",
    "lora_mid": "LoCon with Tucker decomposition",
}
# Old diffusers layouts name attention projections by processor: UNet
# `attn1.processor.to_q_lora` is `attn1.to_q`; text encoder `self_attn.to_q_lora` is
# `self_attn.q_proj`.
_PROCESSOR_RE = re.compile(r"\.processor\.(to_q|to_k|to_v|to_out)_lora$")
_TEXT_PROCESSOR_RE = re.compile(r"\.self_attn\.to_(q|k|v|out)_lora$")
_FOREIGN_PREFIXES = ("lora_te1_", "lora_te2_", "text_encoder_2.", "transformer.")


@dataclass(frozen=True)
class LoraSpec:
    """One entry of SDSERVE_LORA: a file and the scale to merge it at."""

    path: Path
    scale: float = 1.0

    @property
    def label(self) -> str:
        """How /v1/info names it: the file's name, never its path."""
        return f"{self.path.name} (scale {self.scale:g})"


def parse_lora_list(text: str) -> list[LoraSpec]:
    """`a.safetensors:0.8,b.safetensors` -> specs (ValueError naming a bad entry)."""
    specs = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        path_text, sep, scale_text = item.rpartition(":")
        scale = 1.0
        if not sep:
            path_text = item
        else:
            try:
                scale = float(scale_text)
            except ValueError:
                path_text, scale = item, 1.0  # a ':' inside the path
            if not math.isfinite(scale):
                raise ValueError(f"{item!r}: the scale must be a finite number")
        path = Path(path_text).expanduser()
        try:
            refuse_pickle(path)
        except WeightsError as exc:
            raise ValueError(str(exc)) from None
        if not path.name.endswith(".safetensors"):
            raise ValueError(f"{item!r}: LoRA files must be .safetensors")
        if not path.is_file():
            raise ValueError(f"{item!r}: {path} is not a file")
        specs.append(LoraSpec(path, scale))
    return specs


@dataclass
class _Module:
    """One LoRA'd module: its low-rank pair and alpha."""

    key: str  # the file's key stem, for messages
    parts: dict[str, str] = field(default_factory=dict)  # "down"/"up"/"alpha" -> file key


@cache
def _modules(family: str, component: PlannedComponent) -> dict[str, Weight]:
    """The component's LoRA-able modules (diffusers names) -> their kernel weight."""
    return {
        w.name.removesuffix(".weight"): w
        for w in plan_for(family, component)
        if w.kind == "kernel" and w.name.endswith(".weight")
    }


@cache
def _kohya_names(family: str, component: PlannedComponent) -> dict[str, str]:
    return {module.replace(".", "_"): module for module in _modules(family, component)}


def _resolve_diffusers(family: str, stem: str) -> tuple[PlannedComponent, str] | None:
    """The (component, module) a diffusers-layout key stem names."""
    prefixed: list[tuple[str, PlannedComponent]] = [
        ("unet.", "diffusion_model"),
        ("text_encoder.", "text_encoder"),
    ]
    candidates: list[tuple[PlannedComponent, str]] = []
    for prefix, component in prefixed:
        if stem.startswith(prefix):
            candidates = [(component, stem.removeprefix(prefix))]
            break
    else:  # a bare PEFT state dict of one model
        candidates = [("diffusion_model", stem), ("text_encoder", stem)]
    for component, module in candidates:
        match = _PROCESSOR_RE.search(module)
        if match:
            proj = match.group(1)
            module = module[: match.start()] + "." + ("to_out.0" if proj == "to_out" else proj)
        match = _TEXT_PROCESSOR_RE.search(module)
        if match:
            module = module[: match.start()] + f".self_attn.{match.group(1)}_proj"
        modules = _modules(family, component)
        for name in (module, _TEXT_MODEL + module):
            if name in modules:
                return component, name
    return None


def _classify(files: TensorFiles, family: str) -> dict[tuple[PlannedComponent, str], _Module]:
    modules: dict[tuple[PlannedComponent, str], _Module] = {}
    unknown: list[str] = []
    for key in files:
        for marker, kind in _UNSUPPORTED.items():
            if marker in key:
                raise WeightsError(f"{key}: {kind} is not supported, only plain LoRA")
        if key.startswith(_FOREIGN_PREFIXES):
            raise WeightsError(f"{key}: this LoRA is for another model (SDXL?), not {family}")
        suffix = next((s for s in _PARTS if key.endswith(s)), None)
        if suffix is None:
            unknown.append(key)
            continue
        stem = key.removesuffix(suffix)
        where: tuple[PlannedComponent, str] | None = None
        if stem.startswith("lora_unet_"):
            module = _kohya_names(family, "diffusion_model").get(stem.removeprefix("lora_unet_"))
            where = ("diffusion_model", module) if module else None
        elif stem.startswith("lora_te_"):
            module = _kohya_names(family, "text_encoder").get(stem.removeprefix("lora_te_"))
            where = ("text_encoder", module) if module else None
        else:
            where = _resolve_diffusers(family, stem)
        if where is None:
            unknown.append(key)
            continue
        entry = modules.setdefault(where, _Module(stem))
        entry.parts[_PARTS[suffix]] = key
    if unknown:
        raise WeightsError(
            f"{len(unknown)} keys name no {family} UNet or text encoder module, e.g. {unknown[:3]}"
        )
    for (_, module), entry in modules.items():
        if "down" not in entry.parts or "up" not in entry.parts:
            raise WeightsError(f"{entry.key}: has no matching down/up pair ({module})")
    return modules


def _adapter_config(metadata: dict[str, str], component: PlannedComponent) -> dict[str, Any]:
    """diffusers' `lora_adapter_metadata` for one model (PEFT LoraConfig fields)."""
    raw = metadata.get("lora_adapter_metadata")
    if not raw:
        return {}
    try:
        config = json.loads(raw)
    except ValueError:
        raise WeightsError("lora_adapter_metadata is not JSON") from None
    prefix = "unet." if component == "diffusion_model" else "text_encoder."
    return {k.removeprefix(prefix): v for k, v in config.items() if k.startswith(prefix)}


def _alpha(
    files: TensorFiles, entry: _Module, module: str, rank: int, config: dict[str, Any]
) -> float:
    if "alpha" in entry.parts:
        return float(files.get(entry.parts["alpha"]).reshape(-1)[0])
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if re.fullmatch(rf"(.*\.)?{pattern}", module):
            return float(value)
    return float(config.get("lora_alpha", rank))


def lora_deltas(spec: LoraSpec, family: str, component: PlannedComponent) -> dict[str, np.ndarray]:
    """Weight name -> scale * (alpha / rank) * up @ down, in PyTorch layout, for one
    component (the file is checked whole: a key naming nothing fails)."""
    with TensorFiles([spec.path]) as files:
        try:
            modules = _classify(files, family)
        except WeightsError as exc:
            raise WeightsError(f"LoRA {spec.path.name}: {exc}") from None
        config = _adapter_config(files.metadata, component)
        if config.get("use_dora"):
            raise WeightsError(f"LoRA {spec.path.name}: DoRA is not supported")
        planned = _modules(family, component)
        deltas = {}
        for (where, module), entry in modules.items():
            if where != component:
                continue
            down = files.get(entry.parts["down"])
            up = files.get(entry.parts["up"])
            rank = down.shape[0]
            weight = planned[module]
            target = weight.torch_shapes()[0]
            if up.shape[0] != target[0] or up.reshape(up.shape[0], -1).shape[1] != rank:
                raise WeightsError(
                    f"LoRA {spec.path.name}: {entry.parts['up']} has shape {up.shape}, "
                    f"{module} needs ({target[0]}, {rank})"
                )
            product = up.reshape(target[0], rank) @ down.reshape(rank, -1)
            if product.size != math.prod(target):
                raise WeightsError(
                    f"LoRA {spec.path.name}: {entry.parts['down']} has shape {down.shape}, "
                    f"which does not fit {module} {target}"
                )
            alpha = _alpha(files, entry, module, rank, config)
            denominator = math.sqrt(rank) if config.get("use_rslora") else rank
            factor = spec.scale * alpha / denominator
            deltas[weight.name] = (factor * product).reshape(target).astype(np.float32)
    return deltas


def merge_loras(
    model: keras.Model, family: str, component: PlannedComponent, specs: Sequence[LoraSpec]
) -> tuple[str, ...]:
    """Merge each LoRA into `model` (a loaded text encoder or UNet); returns their labels."""
    if component not in LORA_COMPONENTS or not specs:
        return ()
    variables = variables_by_name(model, family, component)
    weights = {w.name: w for w in plan_for(family, component)}
    for spec in specs:
        for name, delta in lora_deltas(spec, family, component).items():
            variable = variables[name]
            merged = np.asarray(variable.numpy(), dtype=np.float32) + to_keras(delta, weights[name])
            variable.assign(merged)
    return tuple(spec.label for spec in specs)
