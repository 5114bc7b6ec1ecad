"""Where a component's weights come from, checked before any of them is used.

Sources, in order of precedence for one component:
1. a single file for that component (`SDSERVE_DIFFUSION_WEIGHTS=...`, a fine-tuned UNet);
2. `random`: the seeded initialisation the model was built with (tests, offline smoke);
3. `embedded`: the directory shipped inside the package (tiny), like 4 below;
4. a local directory (sha256-checked, never downloads): `<component>.safetensors` or
   `<component>.weights.h5` listed in its SHA256SUMS (what `sdserve convert` writes, and
   tiny's layout), else keras-cv's published file names checked against keras-cv's hashes;
5. `pretrained`: keras-cv's published files, downloaded once into the cache, sha256-checked.

Only `.h5`, `.weights.h5` and `.safetensors` files are read; nothing is ever unpickled. A
`.safetensors` file written by `sdserve convert` (shared.convert) is keyed by diffusers
names and loaded through the family's conversion plan; any other is keyed by Keras
variable paths (`save_safetensors`). LoRA files (SDSERVE_LORA) are merged afterwards, by
shared.models, with shared.convert.lora.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from shared.deferred_init import fill, zero_unfilled
from shared.errors import WeightsError
from shared.families.base import Component, ModelFamily, PublishedWeights
from shared.noise_schedule import PREDICTION_TYPES

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

# Tiny (and any family without published files) reads `<component>.weights.h5` from a
# directory, with hashes listed in this file in `sha256sum` format.
CHECKSUMS_FILE = "SHA256SUMS"
DOWNLOAD_CONNECT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class WeightsOrigin:
    """What /v1/info and the logs say about one component's weights."""

    source: str  # "random", "pretrained", "embedded", "directory", "file"
    path: str | None = None
    sha256: str | None = None
    seed: int | None = None
    # What a UNet's output is: "epsilon" (noise) or "v_prediction" (sdserve convert's
    # metadata says; every other source predicts noise).
    prediction_type: str = "epsilon"
    # LoRA merged on top, as "file.safetensors (scale 0.8)" (file names only).
    loras: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """What /v1/info shows: the file's name, never its path on this machine."""
        if self.source == "random":
            text = f"random (seed {self.seed}, not trained)"
        else:
            text = f"{self.source}:{Path(str(self.path)).name} (sha256 {str(self.sha256)[:12]}…)"
        if self.prediction_type != "epsilon":
            text += f", predicts {self.prediction_type}"
        return text + "".join(f" + LoRA {lora}" for lora in self.loras)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_checksums(directory: Path) -> dict[str, str]:
    listing = directory / CHECKSUMS_FILE
    if not listing.is_file():
        return {}
    sums: dict[str, str] = {}
    for line in listing.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            sums[parts[1].lstrip("*")] = parts[0].lower()
    return sums


def _verify(path: Path, expected: str, how_to_fix: str) -> str:
    actual = sha256_of(path)
    if actual != expected:
        raise WeightsError(f"{path} has sha256 {actual} but {expected} was expected; {how_to_fix}")
    return actual


def resolve_directory_file(
    family: ModelFamily, component: Component, directory: Path
) -> tuple[Path, str]:
    """The file for `component` in a weights directory, with its checked sha256.

    A `<component>.safetensors` or `<component>.weights.h5` listed in the directory's
    SHA256SUMS wins (converted checkpoints, tiny); otherwise keras-cv's published file.
    """
    sums = _read_checksums(directory)
    own_names = (f"{component}.safetensors", f"{component}.weights.h5")
    for filename in own_names:
        if filename in sums:
            path = directory / filename
            if not path.is_file():
                raise WeightsError(
                    f"{family.spec.name} {component}: {filename} is listed in "
                    f"{CHECKSUMS_FILE} but missing from {directory}"
                )
            return path, _verify(path, sums[filename], f"check {directory / CHECKSUMS_FILE}")
    published = family.published_weights.get(component)
    if published is not None:
        path = directory / published.filename
        if not path.is_file():
            raise WeightsError(
                f"{family.spec.name} {component}: {published.filename} is missing from "
                f"{directory}; download it from {published.url}, or convert a checkpoint "
                f"there with `sdserve convert`"
            )
        return path, _verify(path, published.sha256, "the file is corrupt or not keras-cv's")
    raise WeightsError(
        f"{family.spec.name} {component}: need {own_names[1]} (or {own_names[0]}) and its "
        f"line in {CHECKSUMS_FILE} in {directory}"
    )


def fetch_published(published: PublishedWeights, cache_dir: Path) -> tuple[Path, str]:
    """keras-cv's published file from the cache, downloading it once if absent."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / published.filename
    if target.is_file():
        return target, _verify(target, published.sha256, f"delete {target} to download again")
    log.info("downloading %s from %s", published.filename, published.url)
    how_to_supply = (
        f"download {published.url} yourself and put it in {cache_dir} or in a directory "
        f"named by SDSERVE_WEIGHTS"
    )
    fd, tmp_name = tempfile.mkstemp(dir=cache_dir, prefix=f".{published.filename}.")
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    try:
        timeout = httpx.Timeout(60.0, connect=DOWNLOAD_CONNECT_TIMEOUT_S)
        with (
            os.fdopen(fd, "wb") as out,
            httpx.stream("GET", published.url, follow_redirects=True, timeout=timeout) as resp,
        ):
            resp.raise_for_status()
            for chunk in resp.iter_bytes(1 << 20):
                digest.update(chunk)
                out.write(chunk)
    except httpx.HTTPError as exc:
        tmp.unlink(missing_ok=True)
        raise WeightsError(
            f"could not download {published.filename} ({exc.__class__.__name__}: {exc}); "
            f"{how_to_supply}"
        ) from None
    actual = digest.hexdigest()
    if actual != published.sha256:
        tmp.unlink(missing_ok=True)
        raise WeightsError(
            f"downloaded {published.filename} has sha256 {actual}, expected {published.sha256}"
        )
    tmp.replace(target)
    return target, actual


def load_weights_file(
    model: keras.Model, path: Path, family: ModelFamily, component: Component
) -> dict[str, str]:
    """Load `.h5` (keras-cv/legacy), `.weights.h5` (Keras 3) or `.safetensors` weights.

    Returns a converted file's metadata (family, component, prediction type), else {}.
    """
    what = f"{family.spec.name} {component}"
    name = path.name
    try:
        if name.endswith(".safetensors"):
            return _load_safetensors(model, path, family, component)
        if name.endswith(".h5"):
            zero_unfilled(model)  # Keras's loader assigns into existing variables
            with warnings.catch_warnings():
                # Keras only warns when parts of a file do not match the model and keeps
                # those layers randomly initialised; a partial load must not pass as a load.
                warnings.filterwarnings("error", message=".*(Skipping|retain).*")
                model.load_weights(str(path))
            return {}
        raise WeightsError(f"{what}: {path} is not .h5, .weights.h5 or .safetensors")
    except WeightsError:
        raise
    except Exception as exc:  # Keras raises bare ValueErrors for mismatched files.
        raise WeightsError(f"{what}: cannot load {path}: {exc}") from None


def _load_safetensors(
    model: keras.Model, path: Path, family: ModelFamily, component: Component
) -> dict[str, str]:
    from safetensors.numpy import load_file

    from shared.convert.keras_weights import CONVERTED_FORMAT, load_converted, read_metadata

    metadata = read_metadata(path)
    if metadata.get("format") == CONVERTED_FORMAT:
        return load_converted(model, path, family.spec.name, component)
    tensors = load_file(str(path))
    variables = {v.path: v for v in model.weights}
    missing = sorted(set(variables) - set(tensors))
    unexpected = sorted(set(tensors) - set(variables))
    if missing or unexpected:
        raise WeightsError(
            f"{path}: names do not match the model (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]})"
        )
    for key, variable in variables.items():
        value = tensors[key]
        if tuple(value.shape) != tuple(variable.shape):
            raise WeightsError(
                f"{path}: {key} has shape {value.shape}, model needs {tuple(variable.shape)}"
            )
        fill(variable, value)
    return {}


def save_safetensors(model: keras.Model, path: Path) -> None:
    """Write a model's weights keyed by variable path (what `_load_safetensors` reads)."""
    from safetensors.numpy import save_file

    save_file({v.path: v.numpy() for v in model.weights}, str(path))


def load_component_weights(
    model: keras.Model,
    family: ModelFamily,
    component: Component,
    *,
    source: str,
    override: Path | None,
    cache_dir: Path,
    seed: int = 0,
) -> WeightsOrigin:
    """Put the configured weights into a freshly built model (its variables may be
    unfilled: shared.deferred_init)."""
    if override is not None:
        metadata = load_weights_file(model, override, family, component)
        origin = WeightsOrigin("file", str(override), sha256_of(override))
        return _with_metadata(origin, metadata, component)
    if source == "random":
        return WeightsOrigin("random", seed=seed)
    if source == "pretrained":
        published = family.published_weights.get(component)
        if published is None:
            raise WeightsError(
                f"{family.spec.name} has no published weights for {component}; use "
                f"SDSERVE_WEIGHTS=random or a directory"
            )
        path, digest = fetch_published(published, cache_dir)
        origin = WeightsOrigin("pretrained", str(path), digest)
    elif source == "embedded":
        if family.embedded_weights is None:
            raise WeightsError(f"{family.spec.name} has no embedded weights")
        path, digest = resolve_directory_file(family, component, family.embedded_weights)
        origin = WeightsOrigin("embedded", str(path), digest)
    else:
        path, digest = resolve_directory_file(family, component, Path(source))
        origin = WeightsOrigin("directory", str(path), digest)
    metadata = load_weights_file(model, path, family, component)
    if origin.source == "directory":
        _check_manifest(Path(source), metadata, family, component)
    return _with_metadata(origin, metadata, component)


def _with_metadata(
    origin: WeightsOrigin, metadata: dict[str, str], component: Component
) -> WeightsOrigin:
    """The origin with what a converted UNet's metadata says it predicts."""
    if component != "diffusion_model":
        return origin
    predicted = metadata.get("prediction_type", "epsilon")
    if predicted not in PREDICTION_TYPES:
        raise WeightsError(
            f"{Path(str(origin.path)).name}: prediction_type {predicted!r} is not one of "
            f"{', '.join(PREDICTION_TYPES)}"
        )
    return replace(origin, prediction_type=predicted)


def _check_manifest(
    directory: Path, metadata: dict[str, str], family: ModelFamily, component: Component
) -> None:
    """A converted directory's manifest and the file loaded from it must agree."""
    from shared.convert.convert import read_manifest

    manifest = read_manifest(directory)
    if manifest is None or not metadata:
        return
    for key, expected in (
        ("family", family.spec.name),
        ("prediction_type", metadata.get("prediction_type")),
    ):
        if manifest.get(key) != expected:
            raise WeightsError(
                f"{directory}: the manifest says {key} {manifest.get(key)!r} but "
                f"{component}'s file says {expected!r}; convert the checkpoint again"
            )
