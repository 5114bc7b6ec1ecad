"""Stable Diffusion's noise schedule and DDIM arithmetic, written once, backend-neutral.

keras-cv's schedule (1000 training timesteps, scaled-linear betas), DDIM's timesteps,
alphas and update, the timestep embedding, the guidance interval and combination, the
v-prediction conversion, and each image's seeded initial noise. The functions take an
`ArrayOps` (numpy's by default, TensorFlow's for the traced SavedModel loop in
`shared.export`) and otherwise use arithmetic operators both kinds of array support, so
the services (`shared.sampler`) and the export cannot drift apart.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any

import numpy as np

from shared import k_diffusion
from shared.families.base import TIMESTEP_EMBEDDING_DIM

NUM_TRAIN_TIMESTEPS = 1000
MAX_SEED = 2**32 - 1
# What a UNet's output can be (diffusers' names): noise, or v (SD 2.x 768x768 models).
PREDICTION_TYPES = ("epsilon", "v_prediction")


@dataclass(frozen=True)
class ArrayOps:
    """The few array functions the DDIM math needs from one backend.

    Everything else is written with arithmetic operators, which numpy arrays and
    TensorFlow tensors (eager or traced) both support with the same float semantics.
    """

    arange: Callable[[Any, str], Any]  # (stop, dtype) -> [0, 1, ..., stop - 1]
    astype: Callable[[Any, str], Any]  # cast (float64 -> float32 rounds to nearest)
    constant: Callable[[Sequence[float], str], Any]
    take: Callable[[Any, Any], Any]  # (table, indices) -> table[indices]
    concatenate: Callable[[Sequence[Any]], Any]  # along axis 0
    maximum: Callable[[Any, Any], Any]
    round: Callable[[Any], Any]  # half to even
    sqrt: Callable[[Any], Any]


NUMPY_OPS = ArrayOps(
    arange=lambda stop, dtype: np.arange(stop, dtype=dtype),
    astype=lambda x, dtype: np.asarray(x, dtype=dtype),
    constant=lambda values, dtype: np.asarray(values, dtype=dtype),
    take=np.take,
    concatenate=np.concatenate,
    maximum=np.maximum,
    round=np.round,
    sqrt=np.sqrt,
)


def tensorflow_ops() -> ArrayOps:
    """`ArrayOps` in TensorFlow ops, for graphs traced by `tf.function` (the export)."""
    import tensorflow as tf

    return ArrayOps(
        arange=lambda stop, dtype: tf.range(stop, dtype=dtype),
        astype=tf.cast,
        constant=tf.constant,
        take=tf.gather,
        concatenate=lambda values: tf.concat(values, 0),
        maximum=tf.maximum,
        round=tf.round,
        sqrt=tf.sqrt,
    )


@cache
def alphas_cumprod() -> tuple[float, ...]:
    # keras-cv's table (SD's linear-beta schedule) is the reference, so take it verbatim.
    from keras_cv.src.models.stable_diffusion.constants import _ALPHAS_CUMPROD

    return tuple(float(a) for a in _ALPHAS_CUMPROD)


@cache
def model_sigmas() -> np.ndarray:
    """(1000,) float64: the noise level of each timestep in the k-diffusion samplers'
    terms, from the same table."""
    sigmas = k_diffusion.sigmas_from_alphas(alphas_cumprod())
    sigmas.setflags(write=False)
    return sigmas


def ddim_timesteps(num_steps: Any, ops: ArrayOps = NUMPY_OPS) -> Any:
    """Ascending int64 timesteps `round(arange(n) * 999 / (n - 1))`, as keras-cv computes them.

    `num_steps` is an int, or a scalar tensor with TensorFlow's ops (the caller checks it
    is at least 1 there). The ratio is computed in float64 (an int divided by an int);
    for n = 1 it is irrelevant, arange(1) being [0].
    """
    if isinstance(num_steps, int | np.integer) and num_steps < 1:
        raise ValueError("num_steps must be at least 1")
    ratio = (NUM_TRAIN_TIMESTEPS - 1) / ops.maximum(num_steps - 1, 1)
    return ops.astype(ops.round(ops.arange(num_steps, "float64") * ratio), "int64")


def ddim_alphas(timesteps: Any, ops: ArrayOps = NUMPY_OPS) -> tuple[Any, Any]:
    """float64 alpha_cumprod at each timestep and at the previous one (1.0 before the first)."""
    alphas = ops.take(ops.constant(alphas_cumprod(), "float64"), timesteps)
    return alphas, ops.concatenate([ops.constant([1.0], "float64"), alphas[:-1]])


def embed_timestep(
    timestep: Any, dim: int = TIMESTEP_EMBEDDING_DIM, max_period: int = 10000
) -> Any:
    """One (dim,) sinusoidal embedding of a scalar timestep (an int or a tensor).

    Always the keras ops keras-cv uses, so it is bit-identical to keras-cv's own, whether
    called eagerly (the services, via `timestep_embedding`) or traced (the export).
    """
    from keras import ops

    half = dim // 2
    freqs = ops.exp(-math.log(max_period) * ops.cast(ops.arange(0, half), "float32") / half)
    args = ops.reshape(ops.cast(timestep, "float32"), (1,)) * freqs
    return ops.concatenate([ops.cos(args), ops.sin(args)], 0)


def guidance_applies(timestep: Any, guidance_from_timestep: Any) -> Any:
    """Whether classifier-free guidance runs at `timestep` (the family's guidance interval).

    Below `guidance_from_timestep` the conditional prediction is used alone (0: every
    step, as keras-cv samples). See FamilySpec.guidance_from_timestep.
    """
    return timestep >= guidance_from_timestep


def guided_eps(eps_cond: Any, eps_uncond: Any, guidance_scale: Any) -> Any:
    """Classifier-free guidance, in keras-cv's order of float32 operations."""
    return eps_uncond + guidance_scale * (eps_cond - eps_uncond)


def ddim_step(latent: Any, eps: Any, alpha: Any, alpha_prev: Any, ops: ArrayOps = NUMPY_OPS) -> Any:
    """x_{t-1} from x_t and its guided noise prediction: DDIM with eta = 0.

    `alpha`/`alpha_prev` are float64 (per row, broadcastable against the latent, or a
    scalar). Coefficients are computed in double then rounded to float32, exactly as TF
    converts keras-cv's Python-float scalars, so the update is bit-identical to keras-cv's.
    """

    def coefficient(value: Any) -> Any:
        return ops.astype(ops.sqrt(value), "float32")

    pred_x0 = (latent - coefficient(1 - alpha) * eps) / coefficient(alpha)
    return eps * coefficient(1.0 - alpha_prev) + coefficient(alpha_prev) * pred_x0


def v_to_epsilon(v: Any, latent: Any, alpha: Any, ops: ArrayOps = NUMPY_OPS) -> Any:
    """The noise a v-prediction stands for: eps = sqrt(a) v + sqrt(1 - a) x_t.

    A v-predicting UNet (SD 2.x's 768x768 models) outputs v = sqrt(a) eps - sqrt(1 - a) x0
    (Salimans & Ho 2022); with x_t = sqrt(a) x0 + sqrt(1 - a) eps this is its noise.
    `alpha` is float64 like `ddim_step`'s, its square roots rounded to float32 the same way.
    """
    return (
        ops.astype(ops.sqrt(alpha), "float32") * v
        + ops.astype(ops.sqrt(1 - alpha), "float32") * latent
    )


# DDIM's timesteps are whole; the k-diffusion samplers' are fractional and depend on the
# step count, so the cache is bounded.
@lru_cache(maxsize=8192)
def _timestep_embedding_row(timestep: float) -> np.ndarray:
    from keras import ops

    row = np.asarray(ops.convert_to_numpy(embed_timestep(timestep)), dtype=np.float32)
    row.setflags(write=False)
    return row


def timestep_embedding(timesteps: Sequence[float]) -> np.ndarray:
    """(B, 320) sinusoidal embeddings, one row per (possibly different, possibly
    fractional) timestep. A whole timestep embeds exactly as keras-cv embeds it."""
    return np.stack([_timestep_embedding_row(float(t)) for t in timesteps])


def draw_seed() -> int:
    return secrets.randbelow(MAX_SEED + 1)


def initial_noise(
    seed: int | np.random.Generator, latent_shape: tuple[int, int, int]
) -> np.ndarray:
    """The starting latent of one image: standard normal from its own seed (the first
    draw of `np.random.default_rng(seed)`; given that generator, its next draw).

    Image i of a request with seed s uses seed s + i, so an image does not depend on how
    many images were asked for or what it was batched with.
    """
    rng = np.random.default_rng(seed)
    return rng.standard_normal((1, *latent_shape), dtype=np.float32)


def img2img_steps(steps: int, strength: float) -> int:
    """Denoising steps image-to-image runs: round(strength x steps)."""
    return round(strength * steps)
