"""Models built without initial values for loading (shared.deferred_init), on tiny's
components: what is loaded is exactly the file, nothing is left pending in Keras, and
random weights are the same numbers they always were."""

import numpy as np
import pytest

from shared.config import Settings
from shared.deferred_init import (
    deferred_initialisation,
    fill,
    initialise_unfilled,
    is_unfilled,
    zero_unfilled,
)
from shared.families import get_family
from shared.models import build_component
from shared.weights import CHECKSUMS_FILE, save_safetensors, sha256_of

LATENT = get_family("tiny").latent_shape(64, 64)


@pytest.fixture(scope="module")
def tiny():
    return get_family("tiny")


def _seeded(family, component, seed):
    import keras

    keras.utils.set_random_seed(seed)
    return family.build(component, 64, 64)


def _pending():
    from keras.src.backend.common import global_state

    return global_state.get_global_attribute("uninitialized_variables") or []


def _values(model):
    return [np.asarray(v) for v in model.weights]


def _same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(_values(a), _values(b), strict=True))


def test_a_deferred_model_has_no_values_until_filled(tiny):
    source = _seeded(tiny, "decoder", 1)
    with deferred_initialisation():
        model = tiny.build("decoder", 64, 64)
    assert model.weights and all(is_unfilled(v) for v in model.weights)
    for variable, value in zip(model.weights, _values(source), strict=True):
        fill(variable, value.astype(np.float16) if value.ndim > 1 else value)
    initialise_unfilled()
    assert not _pending()
    assert not any(is_unfilled(v) for v in model.weights)
    for ours, theirs in zip(_values(model), _values(source), strict=True):
        expected = theirs.astype(np.float16).astype(np.float32) if theirs.ndim > 1 else theirs
        assert ours.dtype == np.float32 and np.array_equal(ours, expected)
    assert np.isfinite(np.asarray(model(np.zeros((1, *LATENT), np.float32)))).all()


def test_what_no_file_filled_gets_its_initial_values(tiny):
    with deferred_initialisation():
        model = tiny.build("decoder", 64, 64)
    first = model.weights[0]
    fill(first, np.ones(first.shape, np.float32))
    initialise_unfilled()
    assert not _pending() and not any(is_unfilled(v) for v in model.weights)
    assert np.all(np.asarray(first) == 1)
    # Nothing pending is left to trip Keras's next scope (a graph over the same layers).
    model(np.zeros((1, *LATENT), np.float32))


def test_zero_unfilled_lets_keras_load_into_the_model(tiny, tmp_path):
    source = _seeded(tiny, "decoder", 2)
    source.save_weights(tmp_path / "decoder.weights.h5")
    with deferred_initialisation():
        model = tiny.build("decoder", 64, 64)
    zero_unfilled(model)
    assert all(not np.asarray(v).any() for v in model.weights)
    model.load_weights(tmp_path / "decoder.weights.h5")
    initialise_unfilled()
    assert _same(model, source)


@pytest.mark.parametrize("layout", ["weights.h5", "safetensors"])
def test_build_component_loads_files_exactly_and_leaves_random_weights_alone(
    tiny, tmp_path, layout
):
    random_settings = Settings(model="tiny", weights="random", weights_seed=7)
    random_model, _ = build_component(tiny, "decoder", (64, 64), random_settings, "float32")
    again, _ = build_component(tiny, "decoder", (64, 64), random_settings, "float32")
    assert _same(random_model, again)

    name = f"decoder.{layout}"
    if layout == "safetensors":
        save_safetensors(random_model, tmp_path / name)
    else:
        random_model.save_weights(tmp_path / name)
    (tmp_path / CHECKSUMS_FILE).write_text(f"{sha256_of(tmp_path / name)}  {name}\n")
    loaded, origin = build_component(
        tiny, "decoder", (64, 64), Settings(model="tiny", weights=str(tmp_path)), "float32"
    )
    assert origin.source == "directory" and not _pending()
    assert _same(loaded, random_model)
