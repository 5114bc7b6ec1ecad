"""The models file (SDSERVE_MODELS_FILE): its entries, read and checked. Light on
imports, so `sdserve up` reads it without loading the models (shared.pipeline.catalog
builds them)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.config import ConfigError
from shared.families import FAMILY_NAMES

MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"


class ModelEntry(BaseModel):
    """One `[[model]]` of the models file."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=MODEL_NAME_PATTERN)
    family: str
    weights: str = ""
    diffusion_url: str | None = None
    text_encoder_url: str | None = None
    decoder_url: str | None = None


def read_models_file(path: Path) -> list[ModelEntry]:
    """The file's models, checked (ConfigError naming what is wrong)."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"SDSERVE_MODELS_FILE: cannot read {path}: {exc}") from None
    raw = document.get("model")
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"SDSERVE_MODELS_FILE: {path} has no [[model]] entries")
    entries = []
    for i, item in enumerate(raw):
        try:
            entry = ModelEntry.model_validate(item)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            message = f"SDSERVE_MODELS_FILE: model {i + 1}: {where}: {first['msg']}"
            raise ConfigError(message) from None
        if entry.family not in FAMILY_NAMES:
            raise ConfigError(
                f"SDSERVE_MODELS_FILE: model {entry.name}: family must be one of "
                f"{', '.join(FAMILY_NAMES)}"
            )
        entries.append(entry)
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise ConfigError(f"SDSERVE_MODELS_FILE: model names repeat: {', '.join(names)}")
    return entries


def render_models_file(entries: list[ModelEntry]) -> str:
    """The TOML of `entries` (what `sdserve up` hands the gateway)."""
    lines = []
    for entry in entries:
        lines.append("[[model]]")
        for key, value in entry.model_dump(exclude_none=True).items():
            lines.append(f"{key} = {json.dumps(value)}")  # a JSON string is a TOML string
        lines.append("")
    return "\n".join(lines)
