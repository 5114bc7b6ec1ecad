"""Converted weight files and the Keras models they fill.

A converted component file is safetensors keyed by the plan's diffusers names, each
tensor already in Keras layout, with metadata naming its format, family and component
(and, for the UNet, the prediction type). Loading zips the family's plan with
`model.weights`; the plan's shapes are checked against the model first, so a keras-cv
version whose models differ fails loudly instead of loading weights into wrong places.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from shared.convert.plan import PLANNED_FAMILIES, PlannedComponent, Weight, plan_for
from shared.deferred_init import fill
from shared.errors import WeightsError

if TYPE_CHECKING:
    import keras

CONVERTED_FORMAT = "sdserve-keras-cv/1"


def to_keras(array: np.ndarray, weight: Weight) -> np.ndarray:
    """A PyTorch-layout tensor in the layout of Keras weight `weight` (see Weight)."""
    if weight.kind != "kernel":
        return np.ascontiguousarray(array.reshape(weight.shape))
    if len(weight.shape) == 2:
        if array.ndim == 4:  # a 1x1 convolution where Keras has a Dense
            array = array[:, :, 0, 0]
        return np.ascontiguousarray(array.T)
    if array.ndim == 2:  # a Linear where Keras has a 1x1 convolution
        array = array[:, :, None, None]
    return np.ascontiguousarray(array.transpose(2, 3, 1, 0))


def from_keras(array: np.ndarray, weight: Weight) -> np.ndarray:
    """The inverse of `to_keras` into the Linear / Conv2d layout diffusers uses."""
    if weight.kind != "kernel":
        return array
    if len(weight.shape) == 2:
        return np.ascontiguousarray(array.T)
    return np.ascontiguousarray(array.transpose(3, 2, 0, 1))


def variables_by_name(
    model: keras.Model, family: str, component: PlannedComponent
) -> dict[str, keras.Variable]:
    """The model's weights keyed by the plan's diffusers names, after checking that the
    plan describes this model (count and every shape)."""
    if family not in PLANNED_FAMILIES:
        raise WeightsError(
            f"{family} {component}: converted weights and LoRA are for "
            f"{' and '.join(PLANNED_FAMILIES)} only"
        )
    plan = plan_for(family, component)
    variables = model.weights
    if len(plan) != len(variables):
        raise WeightsError(
            f"{family} {component}: the model has {len(variables)} weights where the "
            f"conversion plan has {len(plan)}; keras-cv's model differs from 0.9.0's"
        )
    for weight, variable in zip(plan, variables, strict=True):
        if tuple(variable.shape) != weight.shape:
            raise WeightsError(
                f"{family} {component}: {weight.name} is {weight.shape} in the conversion "
                f"plan but {tuple(variable.shape)} in the model ({variable.path})"
            )
    return {weight.name: variable for weight, variable in zip(plan, variables, strict=True)}


def read_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as handle:
        return dict(handle.metadata() or {})


def load_converted(
    model: keras.Model, path: Path, family: str, component: PlannedComponent
) -> dict[str, str]:
    """Fill `model` from a converted file (checked first); returns the file's metadata."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as handle:
        metadata = dict(handle.metadata() or {})
        held = (metadata.get("family"), metadata.get("component"))
        if held != (family, component):
            raise WeightsError(
                f"{path.name} holds {held[0]}'s {held[1]}, not {family}'s {component}"
            )
        variables = variables_by_name(model, family, component)
        keys = set(handle.keys())
        missing = sorted(set(variables) - keys)
        extra = sorted(keys - set(variables))
        if missing or extra:
            raise WeightsError(
                f"{path.name} does not match {family} {component}: {len(missing)} tensors "
                f"missing {missing[:3]}, {len(extra)} unexpected {extra[:3]}; convert the "
                "checkpoint again"
            )
        for name, variable in variables.items():
            value = handle.get_tensor(name)
            if tuple(value.shape) != tuple(variable.shape):
                raise WeightsError(
                    f"{path.name}: {name} has shape {value.shape}, the model needs "
                    f"{tuple(variable.shape)}"
                )
            fill(variable, value)  # cast to the variable's dtype
    return metadata
