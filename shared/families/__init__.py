"""Model families: tiny (our own), sd-v1 and sd-v2 (keras-cv components)."""

from __future__ import annotations

from shared.families.base import COMPONENTS, Component, FamilySpec, ModelFamily, PublishedWeights
from shared.families.sd_v1 import StableDiffusionV1
from shared.families.sd_v2 import StableDiffusionV2
from shared.families.tiny import TinyFamily

__all__ = [
    "COMPONENTS",
    "FAMILY_NAMES",
    "Component",
    "FamilySpec",
    "ModelFamily",
    "PublishedWeights",
    "get_family",
]

# Every family module imports no more than the standard library at load time (each
# imports Keras or keras-cv only when it builds a model), so the registry can name them
# all here and settings can read a family's spec cheaply.
_FAMILIES: dict[str, type[ModelFamily]] = {
    "tiny": TinyFamily,
    "sd-v1": StableDiffusionV1,
    "sd-v2": StableDiffusionV2,
}
FAMILY_NAMES: tuple[str, ...] = tuple(_FAMILIES)


def get_family(name: str) -> ModelFamily:
    """A fresh family object by name (fresh, so callers may adjust its weights table)."""
    if name not in _FAMILIES:
        raise ValueError(f"unknown model family {name!r}; expected tiny, sd-v1 or sd-v2")
    return _FAMILIES[name]()
