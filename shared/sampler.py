"""DDIM exactly as keras-cv's `StableDiffusionBase.generate_image`, one row at a time.

keras-cv runs every image of a batch at the same timestep. Here each row carries its own
schedule position, context, unconditional context and guidance scale, so rows at
different steps (and from different requests) can share one UNet call; the arithmetic is
the same float32 sequence keras-cv performs, so a request served this way matches
keras-cv's output for the same components, context and initial noise.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache

import numpy as np

NUM_TRAIN_TIMESTEPS = 1000
MAX_SEED = 2**32 - 1

# (latent, timestep_embedding, context) -> predicted noise, all batched on axis 0.
NoisePredictor = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@cache
def alphas_cumprod() -> tuple[float, ...]:
    # keras-cv's table (SD's linear-beta schedule) is the reference, so take it verbatim.
    from keras_cv.src.models.stable_diffusion.constants import _ALPHAS_CUMPROD

    return tuple(float(a) for a in _ALPHAS_CUMPROD)


def ddim_timesteps(num_steps: int) -> np.ndarray:
    """Ascending timesteps `round(arange(n) * 999 / (n - 1))`, as keras-cv computes them."""
    if num_steps < 1:
        raise ValueError("num_steps must be at least 1")
    ratio = (NUM_TRAIN_TIMESTEPS - 1) / (num_steps - 1) if num_steps > 1 else NUM_TRAIN_TIMESTEPS
    return (np.arange(0, num_steps) * ratio).round().astype(np.int64)


def ddim_alphas(timesteps: np.ndarray) -> tuple[list[float], list[float]]:
    """alpha_cumprod at each timestep and at the previous one (1.0 before the first)."""
    table = alphas_cumprod()
    alphas = [table[int(t)] for t in timesteps]
    return alphas, [1.0, *alphas[:-1]]


@cache
def _timestep_embedding_row(timestep: int, dim: int = 320, max_period: int = 10000) -> np.ndarray:
    # Same keras ops keras-cv uses, so the embedding is bit-identical to its own.
    from keras import ops

    half = dim // 2
    freqs = ops.exp(-math.log(max_period) * ops.cast(ops.arange(0, half), "float32") / half)
    args = ops.convert_to_tensor([timestep], dtype="float32") * freqs
    embedding = ops.concatenate([ops.cos(args), ops.sin(args)], 0)
    row = np.asarray(ops.convert_to_numpy(embedding), dtype=np.float32)
    row.setflags(write=False)
    return row


def timestep_embedding(timesteps: Sequence[int]) -> np.ndarray:
    """(B, 320) sinusoidal embeddings, one row per (possibly different) timestep."""
    return np.stack([_timestep_embedding_row(int(t)) for t in timesteps])


def draw_seed() -> int:
    return secrets.randbelow(MAX_SEED + 1)


def initial_noise(seed: int, latent_shape: tuple[int, int, int]) -> np.ndarray:
    """The starting latent of one image: standard normal from its own seed.

    Image i of a request with seed s uses seed s + i, so an image does not depend on how
    many images were asked for or what it was batched with.
    """
    rng = np.random.default_rng(seed)
    return rng.standard_normal((1, *latent_shape), dtype=np.float32)


def img2img_steps(steps: int, strength: float) -> int:
    """Denoising steps image-to-image runs: round(strength x steps)."""
    return round(strength * steps)


@dataclass
class Row:
    """One image's sampling state.

    txt2img: `latent` is the initial noise. img2img and inpaint: `known_latent` is the
    encoded init image x0 and `start_steps` < len(timesteps) skips the noisiest steps
    (`start` noises x0 to the first step's level). Inpaint adds `mask` (1 = repaint,
    0 = keep, on the latent grid) and RePaint resampling.
    """

    latent: np.ndarray  # (1, h, w, c) float32, the current x_t
    context: np.ndarray  # (1, T, D)
    unconditional_context: np.ndarray  # (1, T, D)
    guidance_scale: float
    timesteps: np.ndarray  # ascending, as ddim_timesteps gives
    # Guidance applies at timesteps >= this; below it the conditional prediction alone
    # (0: every step, as keras-cv samples). See FamilySpec.guidance_from_timestep.
    guidance_from_timestep: int = 0
    known_latent: np.ndarray | None = None  # (1, h, w, c): x0 of img2img / inpaint
    mask: np.ndarray | None = None  # (1, h, w, 1) in [0, 1]; 1 = repaint
    num_resamples: int = 1
    # Denoising steps to run; fewer than len(timesteps) starts part-way down (img2img).
    start_steps: int | None = None
    # Noise for inpainting's known region and resampling, from the row's own seed.
    rng: np.random.Generator | None = None
    # Index into `timesteps` of the next step to run; sampling runs from the top down.
    position: int = field(init=False)
    resamples_done: int = field(init=False, default=0)
    alphas: list[float] = field(init=False)
    alphas_prev: list[float] = field(init=False)

    def __post_init__(self) -> None:
        self.alphas, self.alphas_prev = ddim_alphas(self.timesteps)
        steps = len(self.timesteps) if self.start_steps is None else self.start_steps
        self.position = steps - 1
        if self.mask is not None and self.known_latent is None:
            raise ValueError("inpainting needs the known (init) latent")

    @property
    def done(self) -> bool:
        return self.position < 0

    @property
    def steps_done(self) -> int:
        total = len(self.timesteps) if self.start_steps is None else self.start_steps
        return total - 1 - self.position

    def _noise(self) -> np.ndarray:
        assert self.rng is not None, "img2img and inpaint rows need an rng"
        return self.rng.standard_normal(self.latent.shape, dtype=np.float32)

    def noise_known_to_start(self) -> None:
        """img2img/inpaint: x_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise at the first step."""
        assert self.known_latent is not None
        if self.done:
            self.latent = self.known_latent.copy()
            return
        a_t = self.alphas[self.position]
        self.latent = (
            np.float32(math.sqrt(a_t)) * self.known_latent
            + np.float32(math.sqrt(1 - a_t)) * self._noise()
        )

    def after_update(self, a_t: float, a_prev: float) -> None:
        """Inpaint blending and RePaint resampling once the DDIM update has run."""
        if self.mask is not None:
            assert self.known_latent is not None
            last = self.position == 0
            noise = np.zeros_like(self.latent) if last else self._noise()
            known = (
                np.float32(math.sqrt(a_prev)) * self.known_latent
                + np.float32(math.sqrt(1 - a_prev)) * noise
            )
            blended = self.mask * self.latent + (1 - self.mask) * known
            # Where nothing is repainted keep the known latent exactly, whatever the UNet did.
            self.latent = np.where(self.mask == 0, known, blended).astype(np.float32)
            if not last and self.resamples_done < self.num_resamples - 1:
                # RePaint: noise x_{t-1} back to x_t and run this step again; the
                # re-noised latent is what the next UNet call sees.
                beta = 1 - a_t / a_prev
                self.latent = (
                    np.float32(math.sqrt(1 - beta)) * self.latent
                    + np.float32(math.sqrt(beta)) * self._noise()
                )
                self.resamples_done += 1
                return
        self.resamples_done = 0
        self.position -= 1

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self.latent.shape[1:])


def guided_noise(predict: NoisePredictor, rows: Sequence[Row], *, batched_cfg: bool) -> np.ndarray:
    """Classifier-free-guided noise for each row at its own current timestep.

    Rows below their guidance interval take the conditional prediction alone, so the
    unconditional pass runs only for the rows that are guided at this step (all of them
    when every row guides at every step, as keras-cv samples: then the calls are keras-cv's).
    """
    latent = np.concatenate([r.latent for r in rows])
    timesteps = [int(r.timesteps[r.position]) for r in rows]
    t_emb = timestep_embedding(timesteps)
    context = np.concatenate([r.context for r in rows])
    guided = np.array([t >= r.guidance_from_timestep for t, r in zip(timesteps, rows, strict=True)])
    unconditional = np.concatenate([r.unconditional_context for r in rows])[guided]
    if batched_cfg:
        both = predict(
            np.concatenate([latent[guided], latent]),
            np.concatenate([t_emb[guided], t_emb]),
            np.concatenate([unconditional, context]),
        )
        eps_uncond, eps_cond = both[: len(unconditional)], both[len(unconditional) :]
    else:
        # keras-cv's order: the unconditional pass first, then the conditional one.
        eps_uncond = (
            predict(latent[guided], t_emb[guided], unconditional) if guided.any() else latent[:0]
        )
        eps_cond = predict(latent, t_emb, context)
    eps = eps_cond.copy()  # the conditional prediction alone where a row is not guided
    scale = _per_row([r.guidance_scale for r in rows])[guided]
    eps[guided] = eps_uncond + scale * (eps_cond[guided] - eps_uncond)
    return eps


def ddim_update(rows: Sequence[Row], eps: np.ndarray) -> None:
    """Advance each row one DDIM step (eta = 0) given its guided noise prediction."""
    a_t = [r.alphas[r.position] for r in rows]
    a_prev = [r.alphas_prev[r.position] for r in rows]
    latent_prev = np.concatenate([r.latent for r in rows])
    eps = eps.astype(latent_prev.dtype, copy=False)
    # Coefficients are computed in double then rounded to float32, exactly as TF converts
    # keras-cv's Python-float scalars, so the update is bit-identical to keras-cv's.
    pred_x0 = (latent_prev - _per_row([math.sqrt(1 - a) for a in a_t]) * eps) / _per_row(
        [math.sqrt(a) for a in a_t]
    )
    latent = (
        eps * _per_row([math.sqrt(1.0 - a) for a in a_prev])
        + _per_row([math.sqrt(a) for a in a_prev]) * pred_x0
    )
    for i, row in enumerate(rows):
        row.latent = latent[i : i + 1]
        row.after_update(a_t[i], a_prev[i])


def sample_step(predict: NoisePredictor, rows: Sequence[Row], *, batched_cfg: bool) -> None:
    """One UNet evaluation (two without batched CFG) advancing every row by one step."""
    ddim_update(rows, guided_noise(predict, rows, batched_cfg=batched_cfg))


def _per_row(values: Sequence[float]) -> np.ndarray:
    return np.asarray(values, dtype=np.float32).reshape(-1, 1, 1, 1)


def mask_to_latent_grid(pixel_mask: np.ndarray, factor: int, blur: int = 0) -> np.ndarray:
    """(H, W) pixel mask in [0, 1] (1 = repaint) -> (1, H/f, W/f, 1) latent-grid mask.

    A latent cell is repainted if any of its pixels is (max-pooling), so no repaint pixel
    is left to the known latent. `blur` > 0 feathers the edge by that many cells with a
    box filter; cells that were 0 and stay 0 after blurring are kept exactly.
    """
    height, width = pixel_mask.shape
    blocks = pixel_mask.reshape(height // factor, factor, width // factor, factor)
    grid = (blocks.max(axis=(1, 3)) > 0).astype(np.float32)
    for _ in range(blur):
        padded = np.pad(grid, 1, mode="edge")
        grid = np.maximum(
            grid,
            sum(
                padded[1 + dy : 1 + dy + grid.shape[0], 1 + dx : 1 + dx + grid.shape[1]]
                for dy in (-1, 0, 1)
                for dx in (-1, 0, 1)
            )
            / 9.0,
        ).astype(np.float32)
    return grid[None, :, :, None]
