"""The tiny family: stage contracts, seeded determinism, conditioning and weight files."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras
import numpy as np
import pytest

from shared.families.base import COMPONENTS, TIMESTEP_EMBEDDING_DIM, Component
from shared.families.tiny import TinyFamily

REPO_ROOT = Path(__file__).resolve().parents[4]
SIZES = (64, 128)
BATCH = 2


def _build(family: TinyFamily, component: Component, seed: int, size: int = 64) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return family.build(component, size, size)


def _digest(model: keras.Model) -> str:
    h = hashlib.sha256()
    for w in model.get_weights():
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()


def _inputs(family: TinyFamily, component: Component, size: int, seed: int = 0) -> Any:
    """Deterministic example inputs for one component at one image size."""
    rng = np.random.default_rng(seed)
    spec = family.spec
    if component == "text_encoder":
        tokens = rng.integers(0, 49408, size=(BATCH, spec.max_tokens), dtype=np.int32)
        positions = np.tile(np.arange(spec.max_tokens, dtype=np.int32), (BATCH, 1))
        return {"tokens": tokens, "positions": positions}
    if component == "diffusion_model":
        return {
            "latent": rng.standard_normal((BATCH, *family.latent_shape(size, size)), np.float32),
            "timestep_embedding": rng.standard_normal((BATCH, TIMESTEP_EMBEDDING_DIM), np.float32),
            "context": rng.standard_normal((BATCH, spec.max_tokens, spec.context_dim), np.float32),
        }
    if component == "decoder":
        return rng.standard_normal((BATCH, *family.latent_shape(size, size)), np.float32)
    return rng.uniform(-1.0, 1.0, (BATCH, size, size, 3)).astype(np.float32)


def _expected_shape(family: TinyFamily, component: Component, size: int) -> tuple[int, ...]:
    spec = family.spec
    if component == "text_encoder":
        return (BATCH, spec.max_tokens, spec.context_dim)
    if component == "decoder":
        return (BATCH, size, size, 3)
    return (BATCH, *family.latent_shape(size, size))


def _run(model: keras.Model, inputs: Any) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(model(inputs, training=False)))


@pytest.fixture(scope="module")
def family() -> TinyFamily:
    return TinyFamily()


@pytest.fixture(scope="module")
def seed0_models(family: TinyFamily) -> dict[tuple[Component, int], keras.Model]:
    """Every component built with seed 0, at each size (shared by several tests)."""
    models: dict[tuple[Component, int], keras.Model] = {}
    for size in SIZES:
        for component in COMPONENTS:
            models[(component, size)] = _build(family, component, seed=0, size=size)
    return models


def test_spec(family: TinyFamily) -> None:
    spec = family.spec
    assert (spec.name, spec.context_dim, spec.latent_channels) == ("tiny", 128, 4)
    assert (spec.downsampling_factor, spec.max_tokens, spec.size_multiple) == (4, 77, 32)
    assert family.published_weights == {}
    assert family.embedded_weights is not None and family.embedded_weights.name == "tiny_weights"
    assert family.latent_shape(64, 128) == (16, 32, 4)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("component", COMPONENTS)
def test_output_shapes_and_dtypes(
    family: TinyFamily,
    seed0_models: dict[tuple[Component, int], keras.Model],
    component: Component,
    size: int,
) -> None:
    model = seed0_models[(component, size)]
    out = _run(model, _inputs(family, component, size))
    assert out.shape == _expected_shape(family, component, size)
    assert out.dtype == np.float32
    assert np.isfinite(out).all()
    assert float(np.std(out)) > 0.0


def test_input_names_and_dtypes(seed0_models: dict[tuple[Component, int], keras.Model]) -> None:
    text = seed0_models[("text_encoder", 64)]
    assert set(text.input) == {"tokens", "positions"}
    assert {k: v.dtype for k, v in text.input.items()} == {"tokens": "int32", "positions": "int32"}
    assert {k: tuple(v.shape) for k, v in text.input.items()} == {
        "tokens": (None, 77),
        "positions": (None, 77),
    }
    unet = seed0_models[("diffusion_model", 128)]
    assert {k: tuple(v.shape) for k, v in unet.input.items()} == {
        "latent": (None, 32, 32, 4),
        "timestep_embedding": (None, 320),
        "context": (None, 77, 128),
    }
    # The VAE halves are fully convolutional: one model for every size.
    assert tuple(seed0_models[("decoder", 64)].input.shape) == (None, None, None, 4)
    assert tuple(seed0_models[("image_encoder", 64)].input.shape) == (None, None, None, 3)


def test_vae_models_serve_every_size(
    family: TinyFamily, seed0_models: dict[tuple[Component, int], keras.Model]
) -> None:
    decoder = seed0_models[("decoder", 64)]
    encoder = seed0_models[("image_encoder", 64)]
    for h, w in ((96, 160), (128, 128)):
        latent = np.zeros((1, h // 4, w // 4, 4), np.float32)
        assert _run(decoder, latent).shape == (1, h, w, 3)
        image = np.zeros((1, h, w, 3), np.float32)
        assert _run(encoder, image).shape == (1, h // 4, w // 4, 4)


def test_unet_other_multiples_of_32(family: TinyFamily) -> None:
    keras.utils.set_random_seed(0)
    unet = family.build_diffusion_model(96, 160)
    inputs = _inputs(family, "diffusion_model", 64)
    inputs["latent"] = np.zeros((BATCH, 24, 40, 4), np.float32)
    assert _run(unet, inputs).shape == (BATCH, 24, 40, 4)
    with pytest.raises(ValueError, match="multiples of 32"):
        family.build_diffusion_model(64, 80)


@pytest.mark.parametrize("component", COMPONENTS)
def test_same_seed_same_weights_other_seed_different(
    family: TinyFamily,
    seed0_models: dict[tuple[Component, int], keras.Model],
    component: Component,
) -> None:
    reference = seed0_models[(component, 64)]
    again = _build(family, component, seed=0)
    other = _build(family, component, seed=1)
    ref_weights = reference.get_weights()
    assert len(ref_weights) == len(again.get_weights()) == len(other.get_weights())
    for a, b in zip(ref_weights, again.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    # Every randomly initialised tensor moves with the seed; ones/zeros inits do not.
    differs = [
        not np.array_equal(a, b) for a, b in zip(ref_weights, other.get_weights(), strict=True)
    ]
    assert any(differs)
    assert _digest(reference) != _digest(other)


_DIGEST_SCRIPT = """
import hashlib, keras, numpy as np
from shared.families.base import COMPONENTS
from shared.families.tiny import TinyFamily
family = TinyFamily()
for component in COMPONENTS:
    keras.utils.set_random_seed(0)
    model = family.build(component, 64, 64)
    h = hashlib.sha256()
    for w in model.get_weights():
        h.update(np.ascontiguousarray(w).tobytes())
    print(component, h.hexdigest())
"""


def test_same_seed_same_weights_in_another_process(
    family: TinyFamily, seed0_models: dict[tuple[Component, int], keras.Model]
) -> None:
    env = dict(os.environ)
    env["KERAS_BACKEND"] = "tensorflow"
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["PYTHONHASHSEED"] = "12345"  # a different hash seed must not matter either
    result = subprocess.run(
        [sys.executable, "-c", _DIGEST_SCRIPT],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    lines = [line.split() for line in result.stdout.splitlines() if line.strip()]
    theirs = {parts[0]: parts[1] for parts in lines if len(parts) == 2}
    ours = {c: _digest(seed0_models[(c, 64)]) for c in COMPONENTS}
    assert theirs == ours


def test_unet_output_depends_on_every_input(
    family: TinyFamily, seed0_models: dict[tuple[Component, int], keras.Model]
) -> None:
    unet = seed0_models[("diffusion_model", 64)]
    inputs = _inputs(family, "diffusion_model", 64)
    base = _run(unet, inputs)
    np.testing.assert_array_equal(base, _run(unet, inputs))  # deterministic call
    rng = np.random.default_rng(99)
    for name in ("context", "timestep_embedding", "latent"):
        changed = dict(inputs)
        changed[name] = rng.standard_normal(inputs[name].shape).astype(np.float32)
        out = _run(unet, changed)
        assert float(np.max(np.abs(out - base))) > 1e-4, f"output ignores {name}"


def test_the_text_encoder_output_depends_only_on_the_prompt(
    family: TinyFamily, seed0_models: dict[tuple[Component, int], keras.Model]
) -> None:
    text = seed0_models[("text_encoder", 64)]
    inputs = _inputs(family, "text_encoder", 64)
    inputs["tokens"][:, 10:] = 49407  # the prompt ends at 10, padding after it
    base = _run(text, inputs)
    # Every position after the end token holds the end token's state...
    np.testing.assert_allclose(base[:, 11:], np.repeat(base[:, 10:11], 66, axis=1), atol=1e-6)
    # ...so a token after the prompt's end changes nothing,
    changed = {k: v.copy() for k, v in inputs.items()}
    changed["tokens"][:, 40] = 1000
    np.testing.assert_allclose(_run(text, changed), base, rtol=0, atol=1e-5)
    # while a change inside the prompt reaches every position (through the prompt's mean).
    inside = {k: v.copy() for k, v in inputs.items()}
    inside["tokens"][:, 5] = 1000
    assert float(np.min(np.abs(_run(text, inside) - base).max(-1))) > 1e-4


def test_the_layout_prior_is_one_map_stretched_to_each_size(
    family: TinyFamily, seed0_models: dict[tuple[Component, int], keras.Model]
) -> None:
    """The prompt's layout map has weights on one grid; each size gets it resized, so a
    128x128 image shows the 64x64 layout scaled up, not a different one."""
    context = _inputs(family, "diffusion_model", 64)["context"]
    maps = {}
    for size in SIZES:
        unet = seed0_models[("diffusion_model", size)]
        layout = keras.Model(unet.inputs, unet.get_layer("layout_resize").output)
        inputs = {**_inputs(family, "diffusion_model", size), "context": context}
        maps[size] = np.asarray(layout(inputs))
        assert maps[size].shape[1:3] == family.latent_shape(size, size)[:2]
    stretched = keras.ops.image.resize(maps[64], (32, 32), interpolation="bilinear")
    np.testing.assert_allclose(maps[128], np.asarray(stretched), rtol=0, atol=1e-5)
    assert float(np.abs(maps[64][0] - maps[64][1]).max()) > 1e-3  # it depends on the prompt


def test_a_unet_re_called_at_another_size_equals_one_built_for_it(
    family: TinyFamily, seed0_models: dict[tuple[Component, int], keras.Model]
) -> None:
    """The stages build each model once and re-call it on every other size's inputs
    (`shared.models`); nothing in it may keep the size it was built for."""
    built_for_64 = seed0_models[("diffusion_model", 64)]
    inputs = {
        "latent": keras.Input(family.latent_shape(128, 128), name="latent"),
        "timestep_embedding": keras.Input((TIMESTEP_EMBEDDING_DIM,), name="timestep_embedding"),
        "context": keras.Input((family.spec.max_tokens, family.spec.context_dim), name="context"),
    }
    re_called = keras.Model(inputs, built_for_64.call(inputs))
    example = _inputs(family, "diffusion_model", 128)
    np.testing.assert_allclose(
        _run(re_called, example),
        _run(seed0_models[("diffusion_model", 128)], example),
        rtol=0,
        atol=1e-5,
    )


@pytest.mark.parametrize("component", COMPONENTS)
def test_weights_h5_round_trip(
    family: TinyFamily,
    seed0_models: dict[tuple[Component, int], keras.Model],
    component: Component,
    tmp_path: Path,
) -> None:
    source = seed0_models[(component, 64)]
    path = tmp_path / f"{component}.weights.h5"
    source.save_weights(str(path))
    fresh = _build(family, component, seed=1)
    inputs = _inputs(family, component, 64)
    assert not np.allclose(_run(fresh, inputs), _run(source, inputs))
    fresh.load_weights(str(path))
    for a, b in zip(source.get_weights(), fresh.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(_run(fresh, inputs), _run(source, inputs), rtol=0, atol=1e-6)


def test_image_encoder_config_round_trip(
    family: TinyFamily, seed0_models: dict[tuple[Component, int], keras.Model]
) -> None:
    encoder = seed0_models[("image_encoder", 64)]
    clone = keras.models.model_from_json(encoder.to_json())
    clone.set_weights(encoder.get_weights())
    image = _inputs(family, "image_encoder", 64)
    np.testing.assert_allclose(_run(clone, image), _run(encoder, image), rtol=0, atol=1e-6)


def test_build_time_of_whole_family(family: TinyFamily, capsys: pytest.CaptureFixture[str]) -> None:
    keras.utils.set_random_seed(0)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    for component in COMPONENTS:
        t0 = time.perf_counter()
        model = family.build(component, 64, 64)
        timings[component] = time.perf_counter() - t0
        assert model.count_params() > 0
    total = time.perf_counter() - start
    with capsys.disabled():
        parts = ", ".join(f"{c} {t:.2f}s" for c, t in timings.items())
        print(f"\ntiny family build at 64x64: {total:.2f}s ({parts})")


def test_prompts_differ_in_every_position_of_the_context(
    seed0_models: dict[tuple[Component, int], keras.Model],
) -> None:
    # Padding positions carry the prompt too (HoldEndState, PromptMean): two prompts of the
    # same length differ at the last position, where a plain causal model's padding is
    # nearly alike.
    text = seed0_models[("text_encoder", 64)]
    positions = np.tile(np.arange(77, dtype=np.int32), (2, 1))
    tokens = np.full((2, 77), 49407, np.int32)
    tokens[:, 0] = 49406
    tokens[0, 1], tokens[1, 1] = 1000, 2000
    context = _run(text, {"tokens": tokens, "positions": positions})
    assert np.abs(context[0, -1] - context[1, -1]).mean() > 0.05


def test_a_random_text_encoder_tells_shape_words_apart_as_well_as_colours(
    seed0_models: dict[tuple[Component, int], keras.Model],
) -> None:
    # Shape words are learnt last when the untrained encoder maps them nearly alike (with
    # Keras' default embedding init, square -> circle moved the context 7.7 against 15.1
    # for red -> blue); the token embedding init keeps every word apart from the start.
    from shared.tokenizer import PromptTokenizer, find_clip_vocab

    tokenizer = PromptTokenizer(find_clip_vocab())
    text = seed0_models[("text_encoder", 64)]
    prompts = [
        "a red square on a white background",
        "a red circle on a white background",
        "a blue square on a white background",
    ]
    tokens = np.array([tokenizer.tokenize(p).tokens for p in prompts], np.int32)
    positions = np.tile(np.arange(77, dtype=np.int32), (len(prompts), 1))
    square, circle, blue = _run(text, {"tokens": tokens, "positions": positions})
    shape_change = float(np.linalg.norm(circle - square))
    colour_change = float(np.linalg.norm(blue - square))
    assert shape_change > 0.6 * colour_change, (shape_change, colour_change)
