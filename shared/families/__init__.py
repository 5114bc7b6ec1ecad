"""Model families: tiny (our own), sd-v1 and sd-v2 (keras-cv components)."""

from __future__ import annotations

from shared.families.base import COMPONENTS, Component, FamilySpec, ModelFamily, PublishedWeights

__all__ = [
    "COMPONENTS",
    "Component",
    "FamilySpec",
    "ModelFamily",
    "PublishedWeights",
    "get_family",
]


def get_family(name: str) -> ModelFamily:
    """A fresh family object by name (fresh, so callers may adjust its weights table)."""
    if name == "tiny":
        from shared.families.tiny import TinyFamily

        return TinyFamily()
    if name == "sd-v1":
        from shared.families.sd_v1 import StableDiffusionV1

        return StableDiffusionV1()
    if name == "sd-v2":
        from shared.families.sd_v2 import StableDiffusionV2

        return StableDiffusionV2()
    raise ValueError(f"unknown model family {name!r}; expected tiny, sd-v1 or sd-v2")
