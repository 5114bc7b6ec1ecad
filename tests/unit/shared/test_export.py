"""shared.export: TF Serving SavedModels, reloaded and checked against the Keras models.

tiny is exported at 64x64 once for the module (about 15 s), then each SavedModel is
loaded with `tf.saved_model.load` (no Keras, as TF Serving loads it) and its serving
signatures are called.

Tolerances, and why:

* text encoder and decoder: the SavedModel runs the very Keras graph `shared.pipeline.local`
  runs, so contexts must agree to 1e-5. Decoded images are uint8 after truncating
  ((x + 1) / 2 * 255): a 1e-5 float difference can cross a level boundary, so images may
  differ by 1 level on at most 0.1 % of pixels (today they are identical).
* diffusion: the exported loop is `shared.sampler`'s DDIM functions traced with
  TensorFlow's ops, so it performs the same float32 operations in the same order (same
  timesteps, alphas, update and timestep embeddings bit for bit, which tests below
  check; CFG as two UNet calls), and on this CPU its latent equals LocalDiffusion's bit
  for bit. But the UNet runs in two different TF graphs (Keras' predict function vs. the
  SavedModel's while loop), where Grappler and oneDNN may fuse or pick kernels
  differently, moving each UNet output by float32 rounding (~1e-6 relative) which the
  loop carries through the steps. So latents must agree to 1e-4 relative to their scale
  (random-weight latents reach ~100): several orders of magnitude tighter than any real
  error (a wrong timestep, alpha or guidance moves them by whole units).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from central.cli import main
from shared.config import Settings
from shared.export import METADATA_FILE, _write_metadata, export_savedmodels
from shared.noise_schedule import (
    ddim_alphas,
    ddim_step,
    ddim_timesteps,
    embed_timestep,
    initial_noise,
    tensorflow_ops,
    timestep_embedding,
)
from shared.pipeline.local.decoder import LocalDecoder, latent_to_images, make_decoder
from shared.pipeline.local.diffusion import LocalDiffusion, make_diffusion
from shared.pipeline.local.text_encoder import LocalTextEncoder, make_text_encoder
from shared.pipeline.types import DenoiseParams, DenoiseRequest, EncodeRequest

tf = pytest.importorskip("tensorflow")

SIZE = 64
LATENT_SHAPE = (16, 16, 4)
STEPS = 3
SEED = 7
GUIDANCE = 7.5


@pytest.fixture(scope="module")
def settings() -> Settings:
    # Two UNet calls per step on both sides, float32, no XLA: the reference LocalDiffusion
    # runs the same computation the export does.
    return Settings(
        model="tiny",
        weights="random",
        sizes=[(SIZE, SIZE)],
        xla="off",
        batched_cfg="off",
        precision="float32",
        warm_up=False,
    )


@pytest.fixture(scope="module")
def exported(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return export_savedmodels(settings, tmp_path_factory.mktemp("savedmodels"))


@pytest.fixture(scope="module")
def stages(
    settings: Settings,
) -> Iterator[tuple[LocalTextEncoder, LocalDiffusion, LocalDecoder]]:
    built = (make_text_encoder(settings), make_diffusion(settings), make_decoder(settings))
    for stage in built:
        stage.load()
    for stage in built:
        stage.warm()
    yield built
    for stage in built:
        stage.shutdown()


@pytest.fixture(scope="module")
def loaded(exported: dict[str, Path]) -> dict[str, Any]:
    """Each SavedModel loaded once, as TF Serving loads it: no Keras objects."""
    return {stage: tf.saved_model.load(str(path)) for stage, path in exported.items()}


def signature(loaded: dict[str, Any], stage: str, name: str = "serving_default") -> Any:
    return loaded[stage].signatures[name]


@pytest.fixture(scope="module")
def contexts(
    stages: tuple[LocalTextEncoder, LocalDiffusion, LocalDecoder],
) -> tuple[np.ndarray, np.ndarray]:
    prompts = EncodeRequest(prompts=["a cat", "a dog"], negative_prompts=["", "blurry"])
    encoded = asyncio.run(stages[0].encode(prompts))
    return encoded.context, encoded.unconditional_context


# ---------------------------------------------------------------------------- layout


def test_layout_and_metadata(exported: dict[str, Path]) -> None:
    assert set(exported) == {"text_encoder", "diffusion", "decoder"}
    for stage, path in exported.items():
        assert path.name == "1" and path.parent.name == stage
        assert (path / "saved_model.pb").is_file() and (path / "variables").is_dir()
        assert path.stat().st_mode & 0o055 == 0o055  # readable by TF Serving's user
        # Nothing half-written is left where TF Serving looks for versions.
        assert sorted(p.name for p in path.parent.iterdir()) == ["1", METADATA_FILE]
        meta = json.loads((path.parent / METADATA_FILE).read_text())
        assert meta["stage"] == stage and meta["latest"] == 1
        info = meta["versions"]["1"]
        assert info["model"] == "tiny" and info["size"] == "64x64"
        assert info["latent_shape"] == list(LATENT_SHAPE)
        assert info["random_weights"] is True and "random" in info["weights"]
    diffusion = json.loads((exported["diffusion"].parent / METADATA_FILE).read_text())
    signatures = diffusion["versions"]["1"]["signatures"]
    assert set(signatures) == {"serving_default", "generate_from_seed"}
    assert signatures["serving_default"]["inputs"]["initial_latent"] == {
        "dtype": "float32",
        "shape": [None, *LATENT_SHAPE],
    }
    assert signatures["generate_from_seed"]["inputs"]["seed"] == {"dtype": "int64", "shape": []}
    assert "different" in diffusion["versions"]["1"]["noise"]
    assert diffusion["versions"]["1"]["guidance_from_timestep"] == 200  # tiny's
    assert diffusion["versions"]["1"]["sampler"] == "ddim"


def test_signatures_have_named_typed_inputs(loaded: dict[str, Any]) -> None:
    def inputs(stage: str, name: str = "serving_default") -> dict[str, Any]:
        specs = signature(loaded, stage, name).structured_input_signature[1]
        return {key: (spec.dtype.name, spec.shape.as_list()) for key, spec in specs.items()}

    assert inputs("text_encoder") == {
        "tokens": ("int32", [None, 77]),
        "positions": ("int32", [None, 77]),
    }
    assert inputs("text_encoder", "encode_tokens") == {"tokens": ("int32", [None, 77])}
    assert inputs("decoder") == {"latent": ("float32", [None, *LATENT_SHAPE])}
    assert inputs("diffusion") == {
        "context": ("float32", [None, 77, 128]),
        "unconditional_context": ("float32", [None, 77, 128]),
        "initial_latent": ("float32", [None, *LATENT_SHAPE]),
        "num_steps": ("int32", []),
        "guidance_scale": ("float32", []),
    }
    assert signature(loaded, "decoder").structured_outputs["images"].dtype == tf.uint8


# ------------------------------------------------------------------------ the stages


def test_text_encoder_matches_keras(
    loaded: dict[str, Any], stages: tuple[LocalTextEncoder, LocalDiffusion, LocalDecoder]
) -> None:
    text_encoder = stages[0]
    tokens = np.asarray(
        [text_encoder.tokenizer.tokenize(p).tokens for p in ("a cat", "", "a red lighthouse")],
        dtype=np.int32,
    )
    positions = np.tile(np.arange(77, dtype=np.int32), (len(tokens), 1))
    assert text_encoder.models is not None and text_encoder.models.text_encoder is not None
    expected = text_encoder.models.text_encoder({"tokens": tokens, "positions": positions})

    served = signature(loaded, "text_encoder")(
        tokens=tf.constant(tokens), positions=tf.constant(positions)
    )["context"].numpy()
    np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-5)
    tokens_only = signature(loaded, "text_encoder", "encode_tokens")(tokens=tf.constant(tokens))
    np.testing.assert_array_equal(tokens_only["context"].numpy(), served)


def test_decoder_matches_keras_postprocessing(
    loaded: dict[str, Any], stages: tuple[LocalTextEncoder, LocalDiffusion, LocalDecoder]
) -> None:
    decoder = stages[2]
    assert decoder.models is not None
    latent = np.random.default_rng(0).standard_normal((3, *LATENT_SHAPE)).astype(np.float32)
    expected = latent_to_images(decoder.models.decoder[(SIZE, SIZE)](latent))

    served = signature(loaded, "decoder")(latent=tf.constant(latent))["images"].numpy()
    assert served.dtype == np.uint8 and served.shape == (3, SIZE, SIZE, 3)
    diff = np.abs(served.astype(int) - expected.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() <= 1e-3


@pytest.mark.parametrize("steps", [STEPS, 10])
def test_diffusion_loop_matches_local_diffusion(
    loaded: dict[str, Any],
    stages: tuple[LocalTextEncoder, LocalDiffusion, LocalDecoder],
    contexts: tuple[np.ndarray, np.ndarray],
    steps: int,
) -> None:
    # 10 steps: two of them (t = 0, 111) fall below tiny's guidance_from_timestep, where
    # both sides must use the prompted prediction alone.
    context, unconditional = contexts
    params = DenoiseParams(
        width=SIZE, height=SIZE, steps=steps, guidance_scale=GUIDANCE, seed=SEED, n=2
    )
    request = DenoiseRequest(context, unconditional, params)
    expected = asyncio.run(stages[1].denoise(request)).latent
    # The very noise LocalDiffusion started from: image i uses seed + i.
    noise = np.concatenate([initial_noise(SEED + i, LATENT_SHAPE) for i in range(2)])

    served = signature(loaded, "diffusion")(
        context=tf.constant(context),
        unconditional_context=tf.constant(unconditional),
        initial_latent=tf.constant(noise),
        num_steps=tf.constant(steps),
        guidance_scale=tf.constant(GUIDANCE),
    )["latent"].numpy()
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(served, expected, rtol=1e-4, atol=1e-4 * scale)
    assert np.abs(served - noise).max() > 1.0  # the loop did run


def test_diffusion_steps_and_guidance_take_effect(
    loaded: dict[str, Any], contexts: tuple[np.ndarray, np.ndarray]
) -> None:
    context, unconditional = contexts
    denoise = signature(loaded, "diffusion")
    noise = np.concatenate([initial_noise(SEED + i, LATENT_SHAPE) for i in range(2)])

    def run(steps: int, guidance: float) -> np.ndarray:
        return denoise(
            context=tf.constant(context),
            unconditional_context=tf.constant(unconditional),
            initial_latent=tf.constant(noise),
            num_steps=tf.constant(steps),
            guidance_scale=tf.constant(guidance),
        )["latent"].numpy()

    base = run(STEPS, GUIDANCE)
    assert not np.allclose(run(STEPS + 1, GUIDANCE), base)
    assert not np.allclose(run(STEPS, 1.0), base)
    assert run(1, GUIDANCE).shape == (2, *LATENT_SHAPE)


def test_generate_from_seed_is_deterministic_per_image(
    loaded: dict[str, Any], contexts: tuple[np.ndarray, np.ndarray]
) -> None:
    context, unconditional = contexts
    generate = signature(loaded, "diffusion", "generate_from_seed")
    denoise = signature(loaded, "diffusion")

    def run(ctx: np.ndarray, unc: np.ndarray, seed: int) -> np.ndarray:
        return generate(
            context=tf.constant(ctx),
            unconditional_context=tf.constant(unc),
            num_steps=tf.constant(2),
            guidance_scale=tf.constant(GUIDANCE),
            seed=tf.constant(seed, tf.int64),
        )["latent"].numpy()

    pair = run(context, unconditional, 100)
    np.testing.assert_array_equal(run(context, unconditional, 100), pair)
    # Image i uses seed + i, whatever else is in the batch (up to the float32 rounding of
    # batch-size-dependent kernels, the module docstring's diffusion tolerance).
    scale = float(np.abs(pair).max())
    second_alone = run(context[1:], unconditional[1:], 101)
    np.testing.assert_allclose(second_alone[0], pair[1], rtol=1e-4, atol=1e-4 * scale)
    # It is serving_default fed stateless noise from (seed + i, 0) ...
    noise = np.stack(
        [
            tf.random.stateless_normal(LATENT_SHAPE, seed=[100 + i, 0], dtype=tf.float32).numpy()
            for i in range(2)
        ]
    )
    from_noise = denoise(
        context=tf.constant(context),
        unconditional_context=tf.constant(unconditional),
        initial_latent=tf.constant(noise),
        num_steps=tf.constant(2),
        guidance_scale=tf.constant(GUIDANCE),
    )["latent"].numpy()
    np.testing.assert_allclose(pair, from_noise, rtol=1e-4, atol=1e-4 * scale)
    # ... which is not the numpy noise the HTTP services draw for that seed (documented).
    assert not np.allclose(noise[0], initial_noise(100, LATENT_SHAPE)[0])


@pytest.mark.parametrize(
    ("steps", "batch", "message"),
    [(0, 2, "num_steps must be at least 1"), (3, 1, "context batch must match")],
)
def test_diffusion_refuses_bad_inputs(
    loaded: dict[str, Any],
    contexts: tuple[np.ndarray, np.ndarray],
    steps: int,
    batch: int,
    message: str,
) -> None:
    context, unconditional = contexts
    noise = np.zeros((batch, *LATENT_SHAPE), np.float32)
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        signature(loaded, "diffusion")(
            context=tf.constant(context),
            unconditional_context=tf.constant(unconditional),
            initial_latent=tf.constant(noise),
            num_steps=tf.constant(steps),
            guidance_scale=tf.constant(GUIDANCE),
        )


# ------------------------------------- the sampler's DDIM traced with TensorFlow's ops


def test_tf_timesteps_equal_the_sampler_for_every_step_count() -> None:
    timesteps = tf.function(
        lambda n: ddim_timesteps(n, tensorflow_ops()),
        input_signature=[tf.TensorSpec((), tf.int32)],
        autograph=False,
    )
    for steps in range(1, 1001):
        np.testing.assert_array_equal(timesteps(steps).numpy(), ddim_timesteps(steps))


def test_tf_alphas_and_update_are_bit_identical_to_numpy() -> None:
    ops = tensorflow_ops()
    rng = np.random.default_rng(0)
    latent = (rng.standard_normal((2, *LATENT_SHAPE)) * 10).astype(np.float32)
    eps = rng.standard_normal((2, *LATENT_SHAPE)).astype(np.float32)

    def alphas_and_last_update(num_steps: Any) -> tuple[Any, Any, Any]:
        alphas, alphas_prev = ddim_alphas(ddim_timesteps(num_steps, ops), ops)
        return alphas, alphas_prev, ddim_step(latent, eps, alphas[-1], alphas_prev[-1], ops)

    traced = tf.function(
        alphas_and_last_update, input_signature=[tf.TensorSpec((), tf.int32)], autograph=False
    )

    for steps in (1, 3, 50, 1000):
        alphas, alphas_prev = ddim_alphas(ddim_timesteps(steps))
        tf_alphas, tf_alphas_prev, tf_latent = traced(tf.constant(steps))
        np.testing.assert_array_equal(tf_alphas.numpy(), alphas)
        np.testing.assert_array_equal(tf_alphas_prev.numpy(), alphas_prev)
        expected = ddim_step(latent, eps, alphas[-1], alphas_prev[-1])
        assert tf_latent.numpy().tobytes() == expected.tobytes()


def test_tf_timestep_embedding_is_bit_identical_to_keras_cv() -> None:
    embed = tf.function(
        lambda t: tf.map_fn(embed_timestep, t, fn_output_signature=tf.float32),
        input_signature=[tf.TensorSpec((None,), tf.int32)],
    )
    np.testing.assert_array_equal(embed(tf.range(1000)).numpy(), timestep_embedding(range(1000)))


# ----------------------------------------------------------------- writing and CLI


def test_existing_versions_are_not_replaced(settings: Settings, exported: dict[str, Path]) -> None:
    out = exported["diffusion"].parents[1]
    with pytest.raises(FileExistsError, match="version 1 already exists"):
        export_savedmodels(settings, out, 1)
    with pytest.raises(ValueError, match="version"):
        export_savedmodels(settings, out, 0)


def test_only_ddim_is_exported(settings: Settings, tmp_path: Path) -> None:
    other = settings.model_copy(update={"default_sampler": "dpmpp_2m_karras"})
    with pytest.raises(ValueError, match=r"DDIM only.*dpmpp_2m_karras"):
        export_savedmodels(other, tmp_path, 1)
    assert not any(tmp_path.iterdir())  # refused before anything is built or written


def test_metadata_keeps_other_versions(tmp_path: Path) -> None:
    _write_metadata(tmp_path, 1, {"size": "64x64"})
    _write_metadata(tmp_path, 3, {"size": "128x128"})
    _write_metadata(tmp_path, 2, {"size": "96x96"})
    meta = json.loads((tmp_path / METADATA_FILE).read_text())
    assert meta["latest"] == 3
    assert list(meta["versions"]) == ["1", "2", "3"]
    assert meta["versions"]["1"] == {"size": "64x64"}


def test_cli_export_savedmodel_refuses_an_existing_version(
    exported: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    out = exported["decoder"].parents[1]
    argv = ["export-savedmodel", "--out", str(out), "--model", "tiny", "--size", "64x64"]
    assert main(argv) == 1
    assert "already exists" in capsys.readouterr().err


def test_cli_export_savedmodel_rejects_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["export-savedmodel", "--out", "x", "--size", "big"])
    assert "512x512" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export-savedmodel"])  # --out is required
    assert main(["export-savedmodel", "--out", "x", "--model", "tiny", "--size", "65x64"]) == 2
    assert "multiple of 32" in capsys.readouterr().err
