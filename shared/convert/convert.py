"""`sdserve convert`: a diffusers folder or an original-layout single file -> weights our
sd-v1 / sd-v2 families load.

Everything is checked before anything is written: each component's every tensor must be
present with the shape the family needs (errors name the tensor, in the source's own
key). The output directory is written beside its final place and renamed into it, so it
is never half written:

    OUT/text_encoder.safetensors      the four components, keyed by diffusers names,
    OUT/diffusion_model.safetensors   in Keras layout (float16 sources stay float16)
    OUT/decoder.safetensors
    OUT/image_encoder.safetensors
    OUT/SHA256SUMS                    what `SDSERVE_WEIGHTS=OUT` checks before loading
    OUT/sdserve-weights.json          the manifest (MANIFEST_FILE)
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shared.convert.keras_weights import CONVERTED_FORMAT, to_keras
from shared.convert.layouts import Ref
from shared.convert.plan import PLANNED_FAMILIES, PlannedComponent, Weight, plan_for
from shared.convert.sources import (
    DIFFUSERS_FOLDERS,
    PredictionType,
    Source,
    open_source,
)
from shared.convert.tensors import TensorFiles, write_tensors
from shared.errors import WeightsError
from shared.noise_schedule import PREDICTION_TYPES
from shared.weights import CHECKSUMS_FILE, sha256_of

log = logging.getLogger(__name__)

MANIFEST_FILE = "sdserve-weights.json"
MANIFEST_FORMAT = "sdserve-weights/1"
ALL_COMPONENTS: tuple[PlannedComponent, ...] = (
    "text_encoder",
    "diffusion_model",
    "decoder",
    "image_encoder",
)
COMPONENT_FILES: dict[PlannedComponent, str] = {c: f"{c}.safetensors" for c in ALL_COMPONENTS}
# The UNet tensor whose width says which text encoder a checkpoint was trained with.
_CONTEXT_PROBE = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
_CONTEXT_FAMILY = {768: "sd-v1", 1024: "sd-v2"}
_SHOWN = 5  # shape mismatches listed by name; the rest are counted


@dataclass(frozen=True)
class Located:
    """One planned weight and where the source stores it."""

    weight: Weight
    ref: Ref


@dataclass
class Problems:
    """What stops a conversion: shape mismatches, and missing tensors per component."""

    shapes: list[str] = field(default_factory=list)
    missing: dict[str, list[str]] = field(default_factory=dict)
    planned: dict[str, int] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.shapes or self.missing)

    def describe(self) -> str:
        parts = self.shapes[:_SHOWN]
        if len(self.shapes) > _SHOWN:
            parts.append(f"{len(self.shapes) - _SHOWN} more shapes differ")
        for component, keys in self.missing.items():
            parts.append(
                f"{component}: {len(keys)} of its {self.planned[component]} tensors are "
                f"missing, e.g. {', '.join(keys[:2])}"
            )
        return "; ".join(parts)


def _locate(
    source: Source, family: str, component: PlannedComponent, problems: Problems
) -> list[Located]:
    files = source.tensors(component)
    plan = plan_for(family, component)
    problems.planned[component] = len(plan)
    found = []
    for weight in plan:
        refs = source.refs(family, component, weight.name)
        ref = next((r for r in refs if r.key in files), None)
        if ref is None:
            problems.missing.setdefault(component, []).append(refs[0].describe())
            continue
        shape = files.shape(ref.key)
        if ref.rows is not None:
            start, stop = ref.rows
            if shape[0] < stop:
                problems.shapes.append(
                    f"{component}: {ref.key} has {shape[0]} rows, {family} needs {stop}"
                )
                continue
            shape = (stop - start, *shape[1:])
        if shape not in weight.torch_shapes():
            problems.shapes.append(
                f"{component}: {ref.describe()} has shape {shape}, {family} needs "
                f"{weight.torch_shapes()[0]}"
            )
            continue
        found.append(Located(weight, ref))
    return found


def detect_family(source: Source) -> str | None:
    """sd-v1 or sd-v2 by the width of the text the UNet attends to (None: cannot tell)."""
    if not source.has("diffusion_model"):
        return None
    files = source.tensors("diffusion_model")
    for ref in source.refs("sd-v1", "diffusion_model", _CONTEXT_PROBE):
        if ref.key in files:
            shape = files.shape(ref.key)
            return _CONTEXT_FAMILY.get(shape[1]) if len(shape) >= 2 else None
    return None


def _input_channels(source: Source) -> int | None:
    """The UNet's input channels (4; 9 for an inpainting UNet), if it has a conv_in."""
    if not source.has("diffusion_model"):
        return None
    files = source.tensors("diffusion_model")
    for ref in source.refs("sd-v1", "diffusion_model", "conv_in.weight"):
        if ref.key in files and len(files.shape(ref.key)) == 4:
            return files.shape(ref.key)[1]
    return None


def _failure(source: Source, family: str, problems: Problems) -> WeightsError:
    hint = ""
    foreign = source.foreign_kind()
    detected = detect_family(source)
    if _input_channels(source) == 9:
        hint = (
            " It is an inpainting UNet (9 input channels); sdserve serves the standard "
            "4-channel UNet and inpaints with it (RePaint)."
        )
    elif foreign is not None:
        hint = f" It looks like {foreign}, which sdserve does not serve."
    elif detected is not None and detected != family:
        hint = f" Its UNet attends to {detected}'s text width: convert with --family {detected}."
    return WeightsError(
        f"cannot convert {source.name} as {family}: {problems.describe()}.{hint} "
        "Nothing was written."
    )


def _prediction_type(
    source: Source, family: str, asked: PredictionType | None
) -> tuple[PredictionType, str]:
    """The prediction type and where it came from."""
    if asked is not None:
        if asked not in PREDICTION_TYPES:
            raise WeightsError(f"prediction type {asked!r} is not one of {PREDICTION_TYPES}")
        if source.prediction_type not in (None, asked):
            log.warning(
                "%s says it predicts %s; --prediction-type %s overrides it",
                source.name,
                source.prediction_type,
                asked,
            )
        return asked, "--prediction-type"
    if source.prediction_type is not None:
        origin = (
            "scheduler/scheduler_config.json"
            if source.layout == "diffusers"
            else "the file's modelspec.prediction_type"
        )
        return source.prediction_type, origin
    if family == "sd-v1":
        return "epsilon", "sd-v1 (SD 1.x models predict noise)"
    raise WeightsError(
        f"{source.name} does not say what its UNet predicts, and SD 2.x models differ: the "
        "768x768 ones (stable-diffusion-2, 2-1) predict v, the 512x512 base ones noise; "
        "pass --prediction-type v_prediction or --prediction-type epsilon. Nothing was written."
    )


def _read(files: TensorFiles, located: Located) -> np.ndarray:
    """The tensor in Keras layout; float16 stays float16, anything else is float32."""
    ref = located.ref
    array = files.get(ref.key, keep_float16=True)
    if ref.rows is not None:
        array = array[ref.rows[0] : ref.rows[1]]
    return to_keras(array, located.weight)


def _unused(source: Source, used: dict[str, set[str]]) -> dict[str, Any]:
    """What the source holds that no component took (EMA copies, CLIP's unused last
    block and projections, schedules): counted by top-level prefix, a few named."""
    left: list[str] = []
    for folder, files in source.tensor_sets():
        prefix = f"{folder}/" if folder else ""
        left += [f"{prefix}{key}" for key in files if key not in used.get(folder, set())]
    groups = Counter(".".join(key.split(".")[:2]) for key in left)
    return {"count": len(left), "by_prefix": dict(sorted(groups.items())), "examples": left[:10]}


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise WeightsError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise WeightsError(f"{out} is not empty; pass --overwrite to replace it")


def convert(
    source_path: Path,
    family: str,
    out: Path,
    *,
    prediction_type: PredictionType | None = None,
    components: Sequence[PlannedComponent] = ALL_COMPONENTS,
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Convert `source_path` for `family` into `out`; returns the manifest written.

    Raises WeightsError, with nothing written, for a pickle, a wrong family, a missing
    tensor or a shape mismatch (naming the tensor), a non-empty `out` without
    `overwrite`, or an SD 2.x source whose prediction type is unknown and not given.
    """
    say = progress or (lambda message: None)
    if family not in PLANNED_FAMILIES:
        raise WeightsError(f"family {family!r}: convert makes {' or '.join(PLANNED_FAMILIES)}")
    unknown = sorted(set(components) - set(ALL_COMPONENTS))
    if unknown or not components:
        raise WeightsError(f"components {unknown or '(none)'}: choose from {ALL_COMPONENTS}")
    _prepare_out(out, overwrite)
    with open_source(source_path) as source:
        say(f"checking {source.name} ({source.layout} layout) against {family}")
        problems = Problems()
        located: dict[PlannedComponent, list[Located]] = {}
        for component in components:
            if not source.has(component):
                where = DIFFUSERS_FOLDERS[component]
                problems.shapes.append(f"{component}: no {where}/ folder with .safetensors")
                continue
            located[component] = _locate(source, family, component, problems)
        if problems:
            raise _failure(source, family, problems)
        predicted, predicted_from = _prediction_type(source, family, prediction_type)
        say("hashing the source")
        source.hash_files()
        manifest = _write(source, family, out, located, predicted, predicted_from, say)
    return manifest


def _write(
    source: Source,
    family: str,
    out: Path,
    located: dict[PlannedComponent, list[Located]],
    predicted: PredictionType,
    predicted_from: str,
    say: Callable[[str], None],
) -> dict[str, Any]:
    out.parent.mkdir(parents=True, exist_ok=True)
    # Beside `out` (so the final rename stays on one file system), with the umask's mode.
    staging = out.parent / f".{out.name}.partial-{secrets.token_hex(4)}"
    staging.mkdir()
    try:
        used: dict[str, set[str]] = {}
        described: dict[str, Any] = {}
        for component, entries in located.items():
            say(f"writing {COMPONENT_FILES[component]} ({len(entries)} tensors)")
            folder = DIFFUSERS_FOLDERS[component] if source.layout == "diffusers" else ""
            files = source.tensors(component)
            used.setdefault(folder, set()).update(entry.ref.key for entry in entries)
            # float16 stays float16; float32, bfloat16 (and anything else) become float32.
            specs = [
                (
                    entry.weight.name,
                    entry.weight.shape,
                    np.dtype(np.float16 if files.dtype(entry.ref.key) == "F16" else np.float32),
                )
                for entry in entries
            ]
            metadata = {
                "format": CONVERTED_FORMAT,
                "family": family,
                "component": component,
                "prediction_type": predicted,
                "source_sha256": source.sha256,
            }
            path = staging / COMPONENT_FILES[component]
            write_tensors(path, specs, (_read(files, entry) for entry in entries), metadata)
            dtypes = Counter(str(dtype) for _, _, dtype in specs)
            described[component] = {
                "file": path.name,
                "sha256": sha256_of(path),
                "tensors": len(entries),
                "dtypes": dict(sorted(dtypes.items())),
            }
        (staging / CHECKSUMS_FILE).write_text(
            "".join(f"{d['sha256']}  {d['file']}\n" for d in described.values())
        )
        manifest = {
            "format": MANIFEST_FORMAT,
            "family": family,
            "prediction_type": predicted,
            "prediction_type_from": predicted_from,
            "source": {
                "name": source.name,
                "layout": source.layout,
                "sha256": source.sha256,
                "files": dict(sorted(source.files.items())),
            },
            "components": described,
            "not_converted": _unused(source, used),
            "converter": f"sdserve {_version()}, keras-cv 0.9.0 layout",
        }
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    say(f"wrote {out}")
    return manifest


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """The manifest of a converted directory, or None when there is none."""
    path = directory / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise WeightsError(f"cannot read {path}: {exc}") from None
    if not isinstance(value, dict) or value.get("format") != MANIFEST_FORMAT:
        raise WeightsError(f"{path} is not an sdserve weights manifest ({MANIFEST_FORMAT})")
    return value


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sdserve")
    except PackageNotFoundError:
        return "unknown"
