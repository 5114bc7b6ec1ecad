"""Export the three stages' models as versioned TensorFlow SavedModels for TF Serving.

``sdserve export-savedmodel --out DIR`` (or :func:`export_savedmodels`) writes one model
base path per stage, each served by TF Serving on its own (``--model_base_path``)::

    DIR/text_encoder/<version>/  serving_default(tokens, positions) -> context
                                 encode_tokens(tokens) -> context   (positions 0..T-1)
    DIR/diffusion/<version>/     serving_default(context, unconditional_context,
                                     initial_latent, num_steps, guidance_scale) -> latent
                                 generate_from_seed(context, unconditional_context,
                                     num_steps, guidance_scale, seed) -> latent
    DIR/decoder/<version>/       serving_default(latent) -> images (uint8)
    DIR/<stage>/export.json      what each version holds: family, weights, size, shapes,
                                 signatures (TF Serving ignores non-numeric entries)

Shapes: ``tokens``/``positions`` int32 (B, T); ``context``/``unconditional_context``
float32 (B, T, D); ``initial_latent``/``latent`` float32 (B, h, w, C); ``images`` uint8
(B, H, W, 3); ``num_steps`` int32, ``guidance_scale`` float32 and ``seed`` int64 scalars.
T, D, C and the downsampling factor are the family's; the image size (so h and w) is
fixed per SavedModel: the first configured size (``--size``), named in export.json.

The diffusion signatures run the whole DDIM loop in TensorFlow ops, traced from the very
functions :mod:`shared.noise_schedule` gives the services in numpy (``ddim_timesteps``,
``ddim_alphas``, ``embed_timestep``, ``guidance_applies``, ``guided_eps``,
``ddim_step``, given TensorFlow's ``ArrayOps``), so it is the same float32 sequence as the
services (and keras-cv's ``generate_image``): timesteps ``round(arange(n) * 999 / (n - 1))``
walked from the top, keras-cv's ``_ALPHAS_CUMPROD`` in float64, DDIM coefficients
computed in float64 and rounded to float32, eps-prediction (a v-predicting UNet's guided
output is converted to noise first, as ``to_epsilon``), classifier-free guidance as two
UNet calls (unconditional first) at the timesteps the family guides (all for sd-v1/sd-v2;
``tiny`` uses the prompted prediction alone below ``FamilySpec.guidance_from_timestep``),
and the timestep embedding computed with the very ops keras-cv uses.

What the SavedModels do not do:

* Sample with anything but DDIM. The services' other samplers (DPM++ 2M, with Karras
  sigmas or not, and Euler ancestral: ``shared.k_diffusion``) are not exported; a
  deployment whose default sampler (``SDSERVE_DEFAULT_SAMPLER``) is another one is refused,
  so an export never quietly samples differently from the services it came from.

* Tokenize. Clients send CLIP token ids, padded as :class:`shared.tokenizer.PromptTokenizer`
  pads them (start token, prompt, end token, then the family's pad token up to T).
* Draw the HTTP services' noise. ``serving_default`` takes the initial latent, so feeding
  ``shared.noise_schedule.initial_noise(seed + i, (h, w, C))`` for image i reproduces what the
  sdserve services produce for that seed. ``generate_from_seed`` draws
  ``tf.random.stateless_normal`` with seed ``(seed + i, 0)`` for image i instead: just as
  deterministic, but **not the same numbers** as the services' numpy noise, so the same
  seed gives a different image than ``POST /v1/images/generations`` does.
* Batch step by step. TF Serving batches whole requests; sdserve's diffusion service
  lets requests join and leave a running batch at step boundaries.

Versions are written to a hidden temporary directory beside the target and renamed into
place, so a TF Serving instance watching DIR never loads a half-written version.
"""

from __future__ import annotations

import gc
import json
import logging
import shutil
import tempfile
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.config import Settings, Size, format_size
from shared.families import get_family
from shared.families.base import TIMESTEP_EMBEDDING_DIM, Component, ModelFamily
from shared.noise_schedule import (
    NUM_TRAIN_TIMESTEPS,
    ddim_alphas,
    ddim_step,
    ddim_timesteps,
    embed_timestep,
    guidance_applies,
    guided_eps,
    tensorflow_ops,
    v_to_epsilon,
)

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

METADATA_FILE = "export.json"
METADATA_FORMAT = "sdserve-savedmodel/1"
# The one sampler the exported diffusion loop runs.
EXPORTED_SAMPLER = "ddim"
# Stage directory -> the family component it exports.
STAGES: dict[str, Component] = {
    "text_encoder": "text_encoder",
    "diffusion": "diffusion_model",
    "decoder": "decoder",
}
NOISE_NOTE = (
    "serving_default takes initial_latent: feed numpy "
    "default_rng(seed + i).standard_normal((1, h, w, C), float32) for image i to match the "
    "sdserve HTTP services. generate_from_seed draws tf.random.stateless_normal with seed "
    "(seed + i, 0) for image i: deterministic, but different numbers from the services' "
    "noise, so the same seed gives a different image."
)

Exporter = Callable[["keras.Model", ModelFamily, Settings, Size], Any]


def _tf() -> Any:
    import tensorflow as tf

    return tf


# ------------------------------------------------------------------------ text encoder


def _text_encoder_module(
    model: keras.Model, family: ModelFamily, settings: Settings, size: Size
) -> Any:
    tf = _tf()
    tokens_len = family.spec.max_tokens
    ids = tf.TensorSpec((None, tokens_len), tf.int32, name="tokens")
    positions_spec = tf.TensorSpec((None, tokens_len), tf.int32, name="positions")

    def encode(tokens: Any, positions: Any) -> dict[str, Any]:
        context = model({"tokens": tokens, "positions": positions}, training=False)
        return {"context": tf.cast(context, tf.float32)}

    serve = tf.function(encode, input_signature=[ids, positions_spec], autograph=False)

    def encode_tokens(tokens: Any) -> dict[str, Any]:
        positions = tf.tile(tf.range(tokens_len, dtype=tf.int32)[None], [tf.shape(tokens)[0], 1])
        return serve(tokens, positions)

    module = tf.Module(name="sdserve_text_encoder")
    # The variables, not the Keras model: saving a model object makes TensorFlow trace
    # every layer's call for the SavedModel, which is slow and not needed for serving.
    module.model_variables = list(model.variables)
    module.serve = serve
    module.encode_tokens = tf.function(encode_tokens, input_signature=[ids], autograph=False)
    return module, {"serving_default": module.serve, "encode_tokens": module.encode_tokens}


# ------------------------------------------------------------------------------ decoder


def _decoder_module(model: keras.Model, family: ModelFamily, settings: Settings, size: Size) -> Any:
    tf = _tf()
    width, height = size
    latent_spec = tf.TensorSpec((None, *family.latent_shape(height, width)), tf.float32, "latent")

    def serve(latent: Any) -> dict[str, Any]:
        decoded = tf.cast(model(latent, training=False), tf.float32)
        # keras-cv's postprocessing (shared.pipeline.local.decoder.latent_to_images):
        # [-1, 1] -> uint8.
        pixels = tf.clip_by_value(((decoded + 1) / 2) * 255, 0, 255)
        return {"images": tf.cast(pixels, tf.uint8)}

    module = tf.Module(name="sdserve_decoder")
    module.model_variables = list(model.variables)
    module.serve = tf.function(serve, input_signature=[latent_spec], autograph=False)
    return module, {"serving_default": module.serve}


# ---------------------------------------------------------------------------- diffusion


def _diffusion_module(
    model: keras.Model,
    family: ModelFamily,
    settings: Settings,
    size: Size,
    prediction_type: str = "epsilon",
) -> Any:
    tf = _tf()
    width, height = size
    latent_shape = family.latent_shape(height, width)
    spec = family.spec
    context_spec = tf.TensorSpec((None, spec.max_tokens, spec.context_dim), tf.float32, "context")
    uncond_spec = tf.TensorSpec(
        (None, spec.max_tokens, spec.context_dim), tf.float32, "unconditional_context"
    )
    latent_spec = tf.TensorSpec((None, *latent_shape), tf.float32, "initial_latent")
    steps_spec = tf.TensorSpec((), tf.int32, "num_steps")
    guidance_spec = tf.TensorSpec((), tf.float32, "guidance_scale")
    seed_spec = tf.TensorSpec((), tf.int64, "seed")
    ops = tensorflow_ops()
    batched_cfg = settings.batched_cfg == "on"

    def predict_noise(latent: Any, t_emb: Any, context: Any) -> Any:
        inputs = {"latent": latent, "timestep_embedding": t_emb, "context": context}
        return tf.cast(model(inputs, training=False), tf.float32)

    # One trace of the UNet, called twice per step (or once, batched): tracing a big UNet
    # is most of an export's time.
    unet = tf.function(
        predict_noise,
        input_signature=[
            tf.TensorSpec((None, *latent_shape), tf.float32),
            tf.TensorSpec((None, TIMESTEP_EMBEDDING_DIM), tf.float32),
            tf.TensorSpec((None, spec.max_tokens, spec.context_dim), tf.float32),
        ],
        autograph=False,
    )

    def denoise(
        context: Any, unconditional: Any, latent: Any, num_steps: Any, guidance_scale: Any
    ) -> dict[str, Any]:
        batch = tf.shape(latent)[0]
        checks = [
            tf.debugging.assert_greater_equal(num_steps, 1, message="num_steps must be at least 1"),
            tf.debugging.assert_less_equal(
                num_steps, NUM_TRAIN_TIMESTEPS, message="num_steps must be at most 1000"
            ),
            tf.debugging.assert_equal(
                tf.shape(context)[0], batch, message="context batch must match the latent's"
            ),
            tf.debugging.assert_equal(
                tf.shape(unconditional)[0],
                batch,
                message="unconditional_context batch must match the latent's",
            ),
        ]
        with tf.control_dependencies(checks):
            timesteps = ddim_timesteps(num_steps, ops)
        alphas, alphas_prev = ddim_alphas(timesteps, ops)

        def step(i: Any, x: Any) -> tuple[Any, Any]:
            timestep = timesteps[i]
            t_emb = tf.tile(embed_timestep(timestep)[None], [batch, 1])
            if batched_cfg:
                both = unet(
                    tf.concat([x, x], 0),
                    tf.concat([t_emb, t_emb], 0),
                    tf.concat([unconditional, context], 0),
                )
                eps_uncond, eps_cond = both[:batch], both[batch:]
            else:
                # keras-cv's order: the unconditional pass, then the conditional one.
                eps_uncond = unet(x, t_emb, unconditional)
                eps_cond = unet(x, t_emb, context)
            eps = tf.where(
                guidance_applies(timestep, spec.guidance_from_timestep),
                guided_eps(eps_cond, eps_uncond, guidance_scale),
                eps_cond,
            )
            if prediction_type == "v_prediction":  # as shared.sampler.to_epsilon
                eps = v_to_epsilon(eps, x, alphas[i], ops)
            return i - 1, ddim_step(x, eps, alphas[i], alphas_prev[i], ops)

        # From the noisiest timestep down, as keras-cv walks them.
        _, x = tf.while_loop(
            lambda i, _x: i >= 0,
            step,
            (num_steps - 1, latent),
            shape_invariants=(tf.TensorShape([]), tf.TensorShape([None, *latent_shape])),
        )
        return {"latent": x}

    serve = tf.function(
        denoise,
        input_signature=[context_spec, uncond_spec, latent_spec, steps_spec, guidance_spec],
        autograph=False,
    )

    def generate_from_seed(
        context: Any, unconditional: Any, num_steps: Any, guidance_scale: Any, seed: Any
    ) -> dict[str, Any]:
        check = tf.debugging.assert_non_negative(seed, message="seed must not be negative")
        with tf.control_dependencies([check]):
            offsets = tf.range(tf.shape(context)[0], dtype=tf.int64)

        def noise(offset: Any) -> Any:
            row_seed = tf.stack([seed + offset, tf.constant(0, tf.int64)])
            return tf.random.stateless_normal(latent_shape, seed=row_seed, dtype=tf.float32)

        initial = tf.map_fn(noise, offsets, fn_output_signature=tf.float32)
        return serve(context, unconditional, initial, num_steps, guidance_scale)

    module = tf.Module(name="sdserve_diffusion")
    module.model_variables = list(model.variables)
    module.denoise = serve
    module.generate_from_seed = tf.function(
        generate_from_seed,
        input_signature=[context_spec, uncond_spec, steps_spec, guidance_spec, seed_spec],
        autograph=False,
    )
    return module, {
        "serving_default": module.denoise,
        "generate_from_seed": module.generate_from_seed,
    }


_EXPORTERS: dict[str, Exporter] = {
    "text_encoder": _text_encoder_module,
    "diffusion": _diffusion_module,
    "decoder": _decoder_module,
}


# ------------------------------------------------------------------------------ writing


def _describe_specs(specs: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: {
            "dtype": spec.dtype.name,
            "shape": [None if d is None else int(d) for d in spec.shape.as_list()],
        }
        for name, spec in specs.items()
    }


def _describe_signature(function: Any) -> dict[str, Any]:
    concrete = function.get_concrete_function()
    inputs = {spec.name: spec for spec in concrete.structured_input_signature[0]}
    return {
        "inputs": _describe_specs(inputs),
        "outputs": _describe_specs(concrete.structured_outputs),
    }


def _write_metadata(stage_dir: Path, version: int, info: dict[str, Any]) -> None:
    """Record `info` for `version` in stage_dir/export.json, keeping other versions."""
    path = stage_dir / METADATA_FILE
    versions: dict[str, Any] = {}
    if path.is_file():
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(previous, dict) and isinstance(previous.get("versions"), dict):
                versions = previous["versions"]
        except ValueError:
            log.warning("replacing unreadable %s", path)
    versions[str(version)] = info
    document = {
        "format": METADATA_FORMAT,
        "stage": stage_dir.name,
        "latest": max(int(v) for v in versions),
        "versions": dict(sorted(versions.items(), key=lambda kv: int(kv[0]))),
    }
    tmp = path.with_name(f".{METADATA_FILE}.tmp")
    tmp.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def _precision(settings: Settings) -> str:
    # "auto" means float32 here: an export is not tied to the device that runs it.
    return "float32" if settings.precision == "auto" else settings.precision


def export_savedmodels(
    settings: Settings, out_dir: Path | str, version: int = 1, *, overwrite: bool = False
) -> dict[str, Path]:
    """Write the text encoder, diffusion and decoder SavedModels; return their version dirs.

    Built for the first configured size (``settings.sizes[0]``) from the configured
    weights. Refuses to replace an existing version unless ``overwrite`` is set.
    """
    from shared.models import build_component

    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"version must be a whole number of at least 1, not {version!r}")
    if settings.sampler != EXPORTED_SAMPLER:
        raise ValueError(
            f"the SavedModel export samples with DDIM only; this deployment's default "
            f"sampler is {settings.sampler} (SDSERVE_DEFAULT_SAMPLER): unset it, or set "
            "it to ddim, to export"
        )
    out = Path(out_dir).expanduser()
    targets = {stage: out / stage / str(version) for stage in STAGES}
    existing = [str(path) for path in targets.values() if path.exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"version {version} already exists: {', '.join(existing)}; pick another version "
            "or overwrite"
        )

    tf = _tf()
    family = get_family(settings.model)
    size = settings.sizes[0]
    width, height = size
    precision = _precision(settings)
    common = {
        "model": settings.model,
        "size": format_size(size),
        "width": width,
        "height": height,
        "precision": precision,
        "context_shape": [family.spec.max_tokens, family.spec.context_dim],
        "latent_shape": list(family.latent_shape(height, width)),
        "downsampling_factor": family.spec.downsampling_factor,
    }
    for stage, component in STAGES.items():
        model, origin = build_component(family, component, size, settings, precision)
        exporter = _EXPORTERS[stage]
        if stage == "diffusion":
            exporter = partial(_diffusion_module, prediction_type=origin.prediction_type)
        module, signatures = exporter(model, family, settings, size)
        stage_dir = out / stage
        stage_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{version}.", suffix=".tmp", dir=stage_dir))
        try:
            # mkdtemp makes it owner-only; a TF Serving container may run as another user.
            staging.chmod(0o755)
            tf.saved_model.save(module, str(staging), signatures=signatures)
            if targets[stage].exists():
                shutil.rmtree(targets[stage])
            staging.rename(targets[stage])
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        info: dict[str, Any] = {
            **common,
            "component": component,
            "weights": origin.label,
            "random_weights": origin.source == "random",
            "signatures": {name: _describe_signature(fn) for name, fn in signatures.items()},
        }
        if stage == "diffusion":
            info["cfg"] = "one batched UNet call" if settings.batched_cfg == "on" else "two calls"
            info["sampler"] = EXPORTED_SAMPLER
            info["guidance_from_timestep"] = family.spec.guidance_from_timestep
            info["prediction_type"] = origin.prediction_type
            info["noise"] = NOISE_NOTE
        if stage == "text_encoder":
            info["pad_token"] = family.spec.pad_token
        _write_metadata(stage_dir, version, info)
        log.info("exported %s %s (%s) to %s", settings.model, stage, origin.label, targets[stage])
        del module, signatures, model
        gc.collect()
    return targets
