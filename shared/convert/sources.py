"""A checkpoint to convert: a diffusers folder or one original-layout `.safetensors` file.

`open_source(path)` says which it is, refuses pickle-based files, and gives each
component's tensors (`TensorFiles`) with the keys to look a diffusers-named tensor up
under (`shared.convert.layouts`). It also reads what the source says about itself: the
scheduler's prediction type (diffusers) or the ModelSpec metadata (single files), and
the VAE's latent scaling factor, which keras-cv fixes at 0.18215.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from shared.convert.layouts import (
    UNET_PREFIX,
    VAE_PREFIX,
    Ref,
    diffusers_refs,
    original_refs,
)
from shared.convert.plan import PlannedComponent
from shared.convert.tensors import PICKLE_ADVICE, PICKLE_SUFFIXES, TensorFiles, refuse_pickle
from shared.errors import WeightsError
from shared.noise_schedule import PREDICTION_TYPES
from shared.weights import sha256_of

Layout = Literal["diffusers", "original"]
PredictionType = Literal["epsilon", "v_prediction"]
# keras-cv's decoder divides latents by this and its image encoder multiplies by it.
VAE_SCALING_FACTOR = 0.18215

DIFFUSERS_FOLDERS: dict[PlannedComponent, str] = {
    "text_encoder": "text_encoder",
    "diffusion_model": "unet",
    "decoder": "vae",
    "image_encoder": "vae",
}
# A checkpoint key that only SDXL (or another family we do not serve) has.
_FOREIGN_MARKERS = {
    "conditioner.embedders.": "an SDXL checkpoint",
    "model.diffusion_model.label_emb.": "an SDXL (or class-conditioned) checkpoint",
    "add_embedding.linear_1.weight": "an SDXL UNet",
}
_SHARD_RE = re.compile(r"-\d{5}-of-\d{5}$")
_MODELSPEC_PREDICTION = {"epsilon": "epsilon", "v": "v_prediction", "v_prediction": "v_prediction"}


@dataclass
class Source:
    """An opened checkpoint. Close it (or use it as a context manager) when done."""

    name: str  # the file or folder name, never its path (the manifest may be published)
    layout: Layout
    root: Path
    # Files read, relative to the folder (or the file's own name), with their sha256.
    files: dict[str, str] = field(default_factory=dict)
    # What the source says it predicts, if it says.
    prediction_type: PredictionType | None = None
    _tensors: dict[str, TensorFiles] = field(default_factory=dict)

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for files in self._tensors.values():
            files.close()

    @property
    def sha256(self) -> str:
        """The single file's sha256; for a folder, sha256 of its `sha256sum`-style listing."""
        if self.layout == "original":
            return next(iter(self.files.values()))
        listing = "".join(f"{digest}  {name}\n" for name, digest in sorted(self.files.items()))
        return hashlib.sha256(listing.encode()).hexdigest()

    def tensors(self, component: PlannedComponent) -> TensorFiles:
        where = DIFFUSERS_FOLDERS[component] if self.layout == "diffusers" else ""
        files = self._tensors.get(where)
        if files is None:
            raise WeightsError(
                f"{self.name} has no {component.replace('_', ' ')}: its {where}/ folder is "
                "missing or holds no .safetensors"
            )
        return files

    def tensor_sets(self) -> list[tuple[str, TensorFiles]]:
        """(folder, tensors) for each set of files read ("" for a single file)."""
        return list(self._tensors.items())

    def has(self, component: PlannedComponent) -> bool:
        where = DIFFUSERS_FOLDERS[component] if self.layout == "diffusers" else ""
        return where in self._tensors

    def refs(self, family: str, component: PlannedComponent, name: str) -> list[Ref]:
        if self.layout == "diffusers":
            return diffusers_refs(component, name)
        return original_refs(family, component, name)

    def foreign_kind(self) -> str | None:
        """What unsupported kind of checkpoint this is, if a telltale key says so."""
        for files in self._tensors.values():
            for key in files:
                for marker, kind in _FOREIGN_MARKERS.items():
                    if key.startswith(marker):
                        return kind
        return None

    def hash_files(self) -> None:
        """sha256 of every file read (the manifest records them)."""
        for rel in self.files:
            path = self.root if self.layout == "original" else self.root / rel
            self.files[rel] = sha256_of(path)


def open_source(path: Path) -> Source:
    """A diffusers folder or an original-layout single file; WeightsError otherwise."""
    if not path.exists():
        raise WeightsError(f"{path} does not exist")
    if path.is_dir():
        return _open_folder(path)
    refuse_pickle(path)
    if not path.name.endswith(".safetensors"):
        raise WeightsError(f"{path.name}: expected a diffusers folder or a .safetensors file")
    source = Source(name=path.name, layout="original", root=path, files={path.name: ""})
    files = TensorFiles([path])
    source._tensors[""] = files
    if not any(key.startswith((UNET_PREFIX, VAE_PREFIX)) for key in files):
        source.close()
        raise WeightsError(
            f"{path.name} holds no model.diffusion_model.* or first_stage_model.* tensors: "
            "not an original-layout Stable Diffusion checkpoint (a single UNet or LoRA file "
            "is not a checkpoint)"
        )
    spec = files.metadata.get("modelspec.prediction_type")
    if spec is not None and spec.lower() in _MODELSPEC_PREDICTION:
        source.prediction_type = _MODELSPEC_PREDICTION[spec.lower()]  # type: ignore[assignment]
    return source


def _pick_weights_files(folder: Path) -> list[Path]:
    """The folder's safetensors (all shards), preferring full precision over variants."""
    names = sorted(p.name for p in folder.iterdir() if p.is_file())
    by_variant: dict[str, list[Path]] = {}
    for name in names:
        if not name.endswith(".safetensors"):
            continue
        stem = _SHARD_RE.sub("", name.removesuffix(".safetensors"))
        variant = stem.split(".", 1)[1] if "." in stem else ""
        by_variant.setdefault(variant, []).append(folder / name)
    for preferred in ("", "fp16"):
        if preferred in by_variant:
            return by_variant[preferred]
    if len(by_variant) == 1:
        return next(iter(by_variant.values()))
    if by_variant:
        raise WeightsError(
            f"{folder.name}/ holds several weight variants ({', '.join(sorted(by_variant))}); "
            "keep one"
        )
    pickles = [n for n in names if n.lower().endswith(PICKLE_SUFFIXES)]
    if pickles:
        raise WeightsError(f"{folder.name}/{pickles[0]} {PICKLE_ADVICE}")
    return []


def _read_json(path: Path) -> dict[str, object]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise WeightsError(f"cannot read {path.parent.name}/{path.name}: {exc}") from None
    return value if isinstance(value, dict) else {}


def _open_folder(root: Path) -> Source:
    source = Source(name=root.name, layout="diffusers", root=root)
    if not (root / "unet").is_dir() and not (root / "text_encoder").is_dir():
        raise WeightsError(
            f"{root.name} is not a diffusers folder (no unet/ or text_encoder/ inside)"
        )
    try:
        for folder in sorted(set(DIFFUSERS_FOLDERS.values())):
            if not (root / folder).is_dir():
                continue
            paths = _pick_weights_files(root / folder)
            if paths:
                source._tensors[folder] = TensorFiles(paths)
                source.files.update({f"{folder}/{p.name}": "" for p in paths})
        vae_config = root / "vae" / "config.json"
        if vae_config.is_file():
            source.files["vae/config.json"] = ""
            scaling = _read_json(vae_config).get("scaling_factor", VAE_SCALING_FACTOR)
            if not isinstance(scaling, int | float) or abs(scaling - VAE_SCALING_FACTOR) > 1e-6:
                raise WeightsError(
                    f"vae/config.json: scaling_factor {scaling} is not SD 1.x/2.x's "
                    f"{VAE_SCALING_FACTOR} (an SDXL VAE?); keras-cv's decoder assumes it"
                )
        scheduler = root / "scheduler" / "scheduler_config.json"
        if scheduler.is_file():
            source.files["scheduler/scheduler_config.json"] = ""
            said = _read_json(scheduler).get("prediction_type", "epsilon")
            if said not in PREDICTION_TYPES:
                raise WeightsError(
                    f"scheduler/scheduler_config.json: prediction_type {said!r} is not one "
                    f"sdserve samples ({', '.join(PREDICTION_TYPES)})"
                )
            source.prediction_type = "v_prediction" if said == "v_prediction" else "epsilon"
    except WeightsError:
        source.close()
        raise
    return source
