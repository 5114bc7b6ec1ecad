"""Building, loading and running a family's Keras models (no HTTP here).

`load_components` builds only the components a process needs, each from its own seed so
that random weights are identical whichever process (or topology) builds them, loads the
configured weights, and compiles one runner per served size under the execution strategy.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from shared.config import Settings, Size
from shared.convert.lora import LORA_COMPONENTS, merge_loras
from shared.execution import ExecutionStrategy
from shared.families.base import TIMESTEP_EMBEDDING_DIM, Component, ModelFamily
from shared.weights import WeightsOrigin, load_component_weights

if TYPE_CHECKING:
    from collections.abc import Iterator

    import keras

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# TensorFlow's C++ start-up chatter (CPU features, oneDNN notes) buries our own logs.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
log = logging.getLogger(__name__)

# Each component gets its own seed offset, so its random weights do not depend on which
# other components the same process built first.
_SEED_OFFSET: dict[Component, int] = {
    "text_encoder": 0,
    "diffusion_model": 1000,
    "decoder": 2000,
    "image_encoder": 3000,
}


@contextmanager
def _dtype_policy(name: str) -> Iterator[None]:
    import keras

    previous = keras.config.dtype_policy().name
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


class ModelRunner:
    """One compiled Keras model: numpy in, float32 numpy out."""

    def __init__(self, model: keras.Model, *, xla: bool) -> None:
        model.compile(jit_compile=xla)
        self.model = model

    def __call__(self, inputs: Any) -> np.ndarray:
        output = self.model.predict_on_batch(inputs)
        return np.asarray(output, dtype=np.float32)


def _at_size(
    base: keras.Model, component: Component, family: ModelFamily, size: Size
) -> keras.Model:
    """The same model (shared weights) with static input shapes for another image size.

    keras-cv's models are built for one size and its attention blocks need static
    spatial shapes, so one graph per size is built over the same layers instead of
    building (and storing) the weights once per size.
    """
    import keras

    width, height = size
    if component == "decoder":
        latent = keras.Input(family.latent_shape(height, width), name="latent")
        return keras.Model(latent, base.call(latent), name=f"{base.name}_{width}x{height}")
    if component == "image_encoder":
        image = keras.Input((height, width, 3), name="image")
        return keras.Model(image, base.call(image), name=f"{base.name}_{width}x{height}")
    inputs = {
        "latent": keras.Input(family.latent_shape(height, width), name="latent"),
        "timestep_embedding": keras.Input((TIMESTEP_EMBEDDING_DIM,), name="timestep_embedding"),
        "context": keras.Input((family.spec.max_tokens, family.spec.context_dim), name="context"),
    }
    return keras.Model(inputs, base.call(inputs), name=f"{base.name}_{width}x{height}")


@dataclass
class LoadedModels:
    family: ModelFamily
    strategy: ExecutionStrategy
    sizes: list[Size]
    origins: dict[Component, WeightsOrigin] = field(default_factory=dict)
    text_encoder: ModelRunner | None = None
    diffusion: dict[Size, ModelRunner] = field(default_factory=dict)
    decoder: dict[Size, ModelRunner] = field(default_factory=dict)
    image_encoder: dict[Size, ModelRunner] = field(default_factory=dict)
    load_seconds: dict[str, float] = field(default_factory=dict)

    def weights_summary(self) -> Mapping[str, str]:
        return {name: origin.label for name, origin in self.origins.items()}

    @property
    def random_weights(self) -> bool:
        return any(o.source == "random" for o in self.origins.values())

    @property
    def prediction_type(self) -> str:
        """What the loaded UNet outputs (its weights say; "epsilon" without a UNet)."""
        origin = self.origins.get("diffusion_model")
        return "epsilon" if origin is None else origin.prediction_type


def build_component(
    family: ModelFamily, component: Component, size: Size, settings: Settings, precision: str
) -> tuple[keras.Model, WeightsOrigin]:
    import keras

    seed = settings.weights_seed + _SEED_OFFSET[component]
    keras.utils.set_random_seed(seed)
    width, height = size
    with _dtype_policy(precision):
        model = family.build(component, height, width)
    origin = load_component_weights(
        model,
        family,
        component,
        source=settings.weights,
        override=settings.component_weights_file(component),
        cache_dir=settings.cache_dir,
        seed=seed,
    )
    if settings.lora and component in LORA_COMPONENTS:
        merged = merge_loras(model, family.spec.name, component, settings.lora)
        origin = replace(origin, loras=merged)
    if origin.source == "random":
        log.warning(
            "%s %s has RANDOM weights (seed %d): outputs are noise, for tests and smoke runs",
            family.spec.name,
            component,
            seed,
        )
    return model, origin


def load_components(
    settings: Settings,
    family: ModelFamily,
    strategy: ExecutionStrategy,
    components: Iterable[Component],
) -> LoadedModels:
    loaded = LoadedModels(family=family, strategy=strategy, sizes=list(settings.sizes))
    first = settings.sizes[0]
    for component in components:
        started = time.perf_counter()
        model, origin = build_component(family, component, first, settings, strategy.precision)
        loaded.origins[component] = origin
        if component == "text_encoder":
            loaded.text_encoder = ModelRunner(model, xla=strategy.xla)
        else:
            runners = {
                "diffusion_model": loaded.diffusion,
                "decoder": loaded.decoder,
                "image_encoder": loaded.image_encoder,
            }[component]
            for size in settings.sizes:
                # The image encoder is built size-free; give it the same static shapes.
                reuse = size == first and component != "image_encoder"
                sized = model if reuse else _at_size(model, component, family, size)
                runners[size] = ModelRunner(sized, xla=strategy.xla)
        loaded.load_seconds[component] = round(time.perf_counter() - started, 3)
        log.info(
            "built %s %s in %.1fs, weights: %s",
            family.spec.name,
            component,
            loaded.load_seconds[component],
            origin.label,
        )
    return loaded
