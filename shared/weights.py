"""Where a component's weights come from, checked before any of them is used.

Sources, in order of precedence for one component:
1. a single file for that component (`SDSERVE_DIFFUSION_WEIGHTS=...`, a fine-tuned UNet);
2. `random`: the seeded initialisation the model was built with (tests, offline smoke);
3. `embedded`: the directory shipped inside the package (tiny), like 4 below;
4. a local directory holding keras-cv's published files (sha256-checked, never downloads);
5. `pretrained`: keras-cv's published files, downloaded once into the cache, sha256-checked.

Only `.h5`, `.weights.h5` and `.safetensors` files are read; nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from shared.errors import WeightsError
from shared.families.base import Component, ModelFamily, PublishedWeights

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

    @property
    def label(self) -> str:
        if self.source == "random":
            return f"random (seed {self.seed}, not trained)"
        return f"{self.source}:{self.path} (sha256 {str(self.sha256)[:12]}…)"


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
    """The file for `component` in a weights directory, with its checked sha256."""
    published = family.published_weights.get(component)
    if published is not None:
        path = directory / published.filename
        if not path.is_file():
            raise WeightsError(
                f"{family.spec.name} {component}: {published.filename} is missing from "
                f"{directory}; download it from {published.url}"
            )
        return path, _verify(path, published.sha256, "the file is corrupt or not keras-cv's")
    filename = f"{component}.weights.h5"
    path = directory / filename
    expected = _read_checksums(directory).get(filename)
    if not path.is_file() or expected is None:
        raise WeightsError(
            f"{family.spec.name} {component}: need {filename} and its line in "
            f"{CHECKSUMS_FILE} in {directory}"
        )
    return path, _verify(path, expected, f"check {directory / CHECKSUMS_FILE}")


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


def load_weights_file(model: keras.Model, path: Path, *, what: str) -> None:
    """Load `.h5` (keras-cv/legacy), `.weights.h5` (Keras 3) or `.safetensors` weights."""
    name = path.name
    try:
        if name.endswith(".safetensors"):
            _load_safetensors(model, path)
        elif name.endswith(".h5"):
            with warnings.catch_warnings():
                # Keras only warns when parts of a file do not match the model and keeps
                # those layers randomly initialised; a partial load must not pass as a load.
                warnings.filterwarnings("error", message=".*(Skipping|retain).*")
                model.load_weights(str(path))
        else:
            raise WeightsError(f"{what}: {path} is not .h5, .weights.h5 or .safetensors")
    except WeightsError:
        raise
    except Exception as exc:  # Keras raises bare ValueErrors for mismatched files.
        raise WeightsError(f"{what}: cannot load {path}: {exc}") from None


def _load_safetensors(model: keras.Model, path: Path) -> None:
    from safetensors.numpy import load_file

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
        variable.assign(value)


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
    """Put the configured weights into a freshly built (randomly initialised) model."""
    what = f"{family.spec.name} {component}"
    if override is not None:
        load_weights_file(model, override, what=what)
        return WeightsOrigin("file", str(override), sha256_of(override))
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
    load_weights_file(model, path, what=what)
    return origin
