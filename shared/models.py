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
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from shared.config import Settings, Size
from shared.convert.lora import LORA_COMPONENTS, merge_loras
from shared.deferred_init import deferred_initialisation, initialise_unfilled
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


def batch_buckets(most: int) -> tuple[int, ...]:
    """The batch sizes a model is called with: 1, 2, 4, 8 ... and `most` itself."""
    sizes, batch = [], 1
    while batch < most:
        sizes.append(batch)
        batch *= 2
    return (*sizes, most)


Inputs = Any  # one array, or a mapping of input name -> array (all of one batch size)


def _batch_of(inputs: Inputs) -> int:
    first = next(iter(inputs.values())) if isinstance(inputs, Mapping) else inputs
    return int(first.shape[0])


def _rows(inputs: Inputs, start: int, stop: int) -> Inputs:
    if isinstance(inputs, Mapping):
        return {k: v[start:stop] for k, v in inputs.items()}
    return inputs[start:stop]


def _pad(array: np.ndarray, batch: int) -> np.ndarray:
    """`array` grown to `batch` rows by repeating its last row: padding rows are real
    inputs (no NaN or overflow in reduced precision); their outputs are dropped."""
    missing = batch - len(array)
    if missing <= 0:
        return array
    return np.concatenate([array, np.repeat(array[-1:], missing, axis=0)])


def _padded(inputs: Inputs, batch: int) -> Inputs:
    if isinstance(inputs, Mapping):
        return {k: _pad(np.asarray(v), batch) for k, v in inputs.items()}
    return _pad(np.asarray(inputs), batch)


def _signature(inputs: Inputs) -> tuple[Any, ...]:
    if isinstance(inputs, Mapping):
        return tuple(sorted((k, tuple(v.shape), str(v.dtype)) for k, v in inputs.items()))
    return (tuple(inputs.shape), str(inputs.dtype))


class ModelRunner:
    """One compiled Keras model: numpy in, float32 numpy out.

    With `buckets`, every call's batch is padded to the smallest bucket that holds it
    (a call bigger than the largest bucket runs in chunks of it), so the model only ever
    sees the bucket shapes: `warm_buckets` traces (and, under XLA, compiles) each of them
    before serving, and no request pays for a graph. Padding rows repeat the last real
    row and are sliced off; rows of a batch do not mix in these models, so a real row's
    result changes only by the float rounding any batch composition brings.

    Graph builds after `mark_ready` are counted in `builds_after_ready`:
    - `trace`: the tracing count of Keras's predict `tf.function`
      (`experimental_get_tracing_count`), which grows exactly when TensorFlow traces a
      new concrete function;
    - `xla_compile` (XLA only): a call whose input signature (shapes, dtypes) this runner
      has not run before. The outer function is traced shape-relaxed (Keras traces it
      with `reduce_retracing`), but XLA compiles one executable per concrete input
      shape, so a new signature is a new compilation; a seen one hits XLA's cache.
    """

    def __init__(
        self,
        model: keras.Model,
        *,
        xla: bool,
        buckets: tuple[int, ...] = (),
        example: Inputs = None,
    ) -> None:
        model.compile(jit_compile=xla)
        self.model = model
        self.xla = xla
        self.buckets = tuple(sorted(set(buckets)))
        self.example = example  # one row of inputs, what warm_buckets grows to each bucket
        self.builds_after_ready = {"trace": 0, "xla_compile": 0}
        self._ready = False
        self._signatures: set[tuple[Any, ...]] = set()
        self._traces = 0

    def __call__(self, inputs: Inputs) -> np.ndarray:
        if not self.buckets:
            return self._predict(inputs)
        batch, largest = _batch_of(inputs), self.buckets[-1]
        if batch > largest:
            return np.concatenate(
                [self(_rows(inputs, i, i + largest)) for i in range(0, batch, largest)]
            )
        bucket = next(b for b in self.buckets if b >= batch)
        return self._predict(_padded(inputs, bucket))[:batch]

    def _predict(self, inputs: Inputs) -> np.ndarray:
        output = np.asarray(self.model.predict_on_batch(inputs), dtype=np.float32)
        if self.xla:
            signature = _signature(inputs)
            if signature not in self._signatures:
                self._signatures.add(signature)
                if self._ready:
                    self.builds_after_ready["xla_compile"] += 1
        traces = self._tracing_count()
        if self._ready and traces > self._traces:
            self.builds_after_ready["trace"] += traces - self._traces
        self._traces = traces
        return output

    def _tracing_count(self) -> int:
        function = getattr(self.model, "predict_function", None)
        count = getattr(function, "experimental_get_tracing_count", None)
        return int(count()) if count is not None else 0

    def warm_buckets(self) -> None:
        """Run every bucket once (tracing and compiling its graph)."""
        if self.example is None:
            return
        for bucket in self.buckets:
            self._predict(_padded(self.example, bucket))

    def mark_ready(self) -> None:
        """From now on, every graph built is counted (the part says it is ready)."""
        self._traces = self._tracing_count()
        self._ready = True


def example_inputs(component: Component, family: ModelFamily, size: Size) -> Inputs:
    """One row of zeros shaped like the component's inputs at `size`."""
    width, height = size
    if component == "text_encoder":
        tokens = np.zeros((1, family.spec.max_tokens), np.int32)
        return {"tokens": tokens, "positions": tokens.copy()}
    latent = np.zeros((1, *family.latent_shape(height, width)), np.float32)
    if component == "decoder":
        return latent
    if component == "image_encoder":
        return np.zeros((1, height, width, 3), np.float32)
    return {
        "latent": latent,
        "timestep_embedding": np.zeros((1, TIMESTEP_EMBEDDING_DIM), np.float32),
        "context": np.zeros((1, family.spec.max_tokens, family.spec.context_dim), np.float32),
    }


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

    def runners(self) -> dict[Component, list[ModelRunner]]:
        found: dict[Component, list[ModelRunner]] = {}
        if self.text_encoder is not None:
            found["text_encoder"] = [self.text_encoder]
        for component, sized in (
            ("diffusion_model", self.diffusion),
            ("decoder", self.decoder),
            ("image_encoder", self.image_encoder),
        ):
            if sized:
                found[component] = list(sized.values())  # type: ignore[index]
        return found

    def warm_buckets(self) -> None:
        """Trace (and compile) every batch bucket of every model."""
        for runners in self.runners().values():
            for runner in runners:
                runner.warm_buckets()

    def mark_ready(self) -> None:
        for runners in self.runners().values():
            for runner in runners:
                runner.mark_ready()

    def builds_after_ready(self, component: Component) -> dict[str, int]:
        """Graphs traced or XLA-compiled by `component`'s models since ready, by kind."""
        total = {"trace": 0, "xla_compile": 0}
        for runner in self.runners().get(component, []):
            for kind, count in runner.builds_after_ready.items():
                total[kind] += count
        return total

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
    override = settings.component_weights_file(component)
    # Weights about to be loaded are built without initial values (seconds of random
    # numbers for a UNet, overwritten at once); random weights are built as always.
    loading = override is not None or settings.weights != "random"
    with _dtype_policy(precision), deferred_initialisation() if loading else nullcontext():
        model = family.build(component, height, width)
    try:
        origin = load_component_weights(
            model,
            family,
            component,
            source=settings.weights,
            override=override,
            cache_dir=settings.cache_dir,
            seed=seed,
        )
    finally:
        initialise_unfilled()
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


def _largest_call(component: Component, settings: Settings, strategy: ExecutionStrategy) -> int:
    """The most rows one call of `component` gets: a prompt and its negative per image
    for the text encoder, both CFG passes of each row for a UNet with batched CFG."""
    doubled = component == "text_encoder" or (
        component == "diffusion_model" and strategy.batched_cfg
    )
    return settings.max_batch * (2 if doubled else 1)


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
        chosen = strategy.for_component(component)
        model, origin = build_component(family, component, first, settings, chosen.precision)
        loaded.origins[component] = origin
        buckets = (
            batch_buckets(_largest_call(component, settings, strategy)) if strategy.buckets else ()
        )
        if component == "text_encoder":
            loaded.text_encoder = ModelRunner(
                model,
                xla=chosen.xla,
                buckets=buckets,
                example=example_inputs(component, family, first),
            )
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
                runners[size] = ModelRunner(
                    sized,
                    xla=chosen.xla,
                    buckets=buckets,
                    example=example_inputs(component, family, size),
                )
        loaded.load_seconds[component] = round(time.perf_counter() - started, 3)
        log.info(
            "built %s %s in %.1fs, weights: %s",
            family.spec.name,
            component,
            loaded.load_seconds[component],
            origin.label,
        )
    return loaded
