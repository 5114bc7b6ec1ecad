"""The samplers, one row at a time: DDIM exactly as keras-cv's `generate_image`, and the
k-diffusion samplers of `shared.k_diffusion` (DPM++ 2M, with Karras sigmas or not, and
Euler ancestral).

keras-cv runs every image of a batch at the same timestep. Here each row carries its own
sampler, schedule position, sampler state, context, unconditional context and guidance
scale, so rows at different steps (and from different requests, with different samplers)
can share one UNet call. For DDIM the arithmetic is the same float32 sequence keras-cv
performs, so a request served this way matches keras-cv's output for the same
components, context and initial noise.

Every row's `latent` is what the UNet sees, sqrt(a) x0 + sqrt(1 - a) noise, whatever the
sampler: the k-diffusion samplers convert to their x = x0 + sigma noise and back inside
their update, so img2img's start, inpainting's blending, RePaint's resampling, previews
and the guidance interval work the same for every sampler.

The DDIM math itself (timestep schedule, alphas, timestep embedding, the guidance
interval and combination, the update) is `shared.noise_schedule`, written once for these
rows and the SavedModel export's traced loop. (The export runs DDIM only.)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shared import k_diffusion
from shared.noise_schedule import (
    PREDICTION_TYPES,
    ddim_alphas,
    ddim_step,
    ddim_timesteps,
    guidance_applies,
    guided_eps,
    model_sigmas,
    timestep_embedding,
    v_to_epsilon,
)
from shared.sampler_names import DEFAULT_SAMPLER, SamplerName

# (latent, timestep_embedding, context) -> predicted noise, all batched on axis 0.
NoisePredictor = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Schedule:
    """Where a sampler evaluates the model, ascending as `ddim_timesteps` gives them
    (sampling walks them from the top down)."""

    timesteps: np.ndarray  # int64 for DDIM; float64, fractional, for the others
    sigmas: np.ndarray | None = None  # the k-diffusion samplers' noise levels; None: DDIM


def sampler_schedule(sampler: SamplerName, steps: int) -> Schedule:
    """The `steps` model evaluations `sampler` makes: DDIM's keras-cv timesteps, or the
    k-diffusion schedule's noise levels and their (fractional) timesteps."""
    if sampler == "ddim":
        return Schedule(ddim_timesteps(steps))
    if sampler == "dpmpp_2m_karras":
        sigmas = k_diffusion.karras_sigmas(steps, model_sigmas())
    else:
        sigmas = k_diffusion.default_sigmas(steps, model_sigmas())
    ascending = sigmas[::-1].copy()
    return Schedule(k_diffusion.sigma_to_t(ascending, model_sigmas()), ascending)


@dataclass
class Row:
    """One image's sampling state.

    txt2img: `latent` is the initial noise (`start_from_noise` scales it to the first
    step's level where the sampler needs that). img2img and inpaint: `known_latent` is the
    encoded init image x0 and `start_steps` < len(timesteps) skips the noisiest steps
    (`noise_known_to_start` noises x0 to the first step's level). Inpaint adds `mask`
    (1 = repaint, 0 = keep, on the latent grid) and RePaint resampling.

    `sampler` picks the update; `sigmas` (aligned with `timesteps`) are the k-diffusion
    samplers' noise levels, None for DDIM. The row keeps its own sampler state (DPM++ 2M's
    previous denoised estimate) and draws its own noise (Euler ancestral's, inpainting's)
    from `rng`, seeded from its image's seed, so neither depends on what it is batched
    with.
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
    # Noise for inpainting's known region and resampling, and Euler ancestral's steps,
    # from the row's own seed.
    rng: np.random.Generator | None = None
    sampler: SamplerName = DEFAULT_SAMPLER
    sigmas: np.ndarray | None = None  # float64, per timestep; None: DDIM
    # DPM++ 2M: the denoised estimate of the last step taken (not of a RePaint rerun), and
    # that of the step being taken, which becomes it when the row moves on.
    old_denoised: np.ndarray | None = field(init=False, default=None)
    step_denoised: np.ndarray | None = field(init=False, default=None, repr=False)
    # What the UNet outputs for this row: "epsilon" (noise) or "v_prediction" (to_epsilon).
    prediction_type: str = "epsilon"
    # Index into `timesteps` of the next step to run; sampling runs from the top down.
    position: int = field(init=False)
    resamples_done: int = field(init=False, default=0)
    alphas: np.ndarray = field(init=False)  # float64, per timestep
    alphas_prev: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        if (self.sampler == "ddim") != (self.sigmas is None):
            raise ValueError("DDIM rows have no sigmas; every other sampler's rows need them")
        if self.sigmas is None:
            self.alphas, self.alphas_prev = ddim_alphas(self.timesteps)
        else:
            # alpha_cumprod = 1 / (1 + sigma^2) at each step and at the next lower one.
            self.alphas = 1 / (1 + self.sigmas**2)
            self.alphas_prev = np.concatenate([[1.0], self.alphas[:-1]])
        steps = len(self.timesteps) if self.start_steps is None else self.start_steps
        self.position = steps - 1
        if self.mask is not None and self.known_latent is None:
            raise ValueError("inpainting needs the known (init) latent")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}")

    @property
    def done(self) -> bool:
        return self.position < 0

    @property
    def steps_done(self) -> int:
        total = len(self.timesteps) if self.start_steps is None else self.start_steps
        return total - 1 - self.position

    def noise(self) -> np.ndarray:
        """Standard normal noise of the latent's shape, the next draw of the row's rng."""
        assert self.rng is not None, "img2img, inpaint and Euler ancestral rows need an rng"
        return self.rng.standard_normal(self.latent.shape, dtype=np.float32)

    @property
    def timestep(self) -> float:
        """The timestep of the next step (fractional for the k-diffusion samplers)."""
        return float(self.timesteps[self.position])

    def start_from_noise(self) -> None:
        """txt2img: `latent` holds standard normal noise. DDIM starts from it as it is,
        as keras-cv does; the k-diffusion samplers start at x = sigma_max noise, which
        the UNet sees as sqrt(1 - a) noise."""
        if self.sigmas is not None and not self.done:
            self.latent = np.float32(math.sqrt(1 - self.alphas[self.position])) * self.latent

    def noise_known_to_start(self) -> None:
        """img2img/inpaint: x_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise at the first step."""
        assert self.known_latent is not None
        if self.done:
            self.latent = self.known_latent.copy()
            return
        a_t = self.alphas[self.position]
        self.latent = (
            np.float32(math.sqrt(a_t)) * self.known_latent
            + np.float32(math.sqrt(1 - a_t)) * self.noise()
        )

    def after_update(self, a_t: float, a_prev: float) -> None:
        """Inpaint blending and RePaint resampling once the DDIM update has run."""
        if self.mask is not None:
            assert self.known_latent is not None
            last = self.position == 0
            noise = np.zeros_like(self.latent) if last else self.noise()
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
                    + np.float32(math.sqrt(beta)) * self.noise()
                )
                self.resamples_done += 1
                return
        self.resamples_done = 0
        self.position -= 1
        self.old_denoised = self.step_denoised

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
    timesteps = [r.timestep for r in rows]
    t_emb = timestep_embedding(timesteps)
    context = np.concatenate([r.context for r in rows])
    guided = guidance_applies(
        np.asarray(timesteps), np.asarray([r.guidance_from_timestep for r in rows])
    )
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
    eps[guided] = guided_eps(eps_cond[guided], eps_uncond, scale)
    return eps


def ddim_update(rows: Sequence[Row], eps: np.ndarray) -> None:
    """Advance each row one DDIM step (eta = 0) given its guided noise prediction."""
    a_t = [float(r.alphas[r.position]) for r in rows]
    a_prev = [float(r.alphas_prev[r.position]) for r in rows]
    latent_prev = np.concatenate([r.latent for r in rows])
    eps = eps.astype(latent_prev.dtype, copy=False)
    latent = ddim_step(latent_prev, eps, _per_row(a_t, np.float64), _per_row(a_prev, np.float64))
    for i, row in enumerate(rows):
        row.latent = latent[i : i + 1]
        row.after_update(a_t[i], a_prev[i])


def k_diffusion_update(row: Row, eps: np.ndarray) -> None:
    """Advance a DPM++ 2M or Euler ancestral row one step given its guided noise
    prediction: to k-diffusion's x = x0 + sigma noise, its step, and back."""
    assert row.sigmas is not None
    position = row.position
    sigma = float(row.sigmas[position])
    sigma_next = float(row.sigmas[position - 1]) if position > 0 else 0.0
    x = np.float32(math.sqrt(1 + sigma**2)) * row.latent
    denoised = k_diffusion.denoised_estimate(x, eps.astype(np.float32, copy=False), sigma)
    if row.sampler == "euler_ancestral":
        noise = row.noise() if sigma_next > 0 else None
        x = k_diffusion.euler_ancestral_step(x, denoised, sigma, sigma_next, noise)
    else:
        sigma_prev = None if row.old_denoised is None else float(row.sigmas[position + 1])
        x = k_diffusion.dpmpp_2m_step(x, denoised, sigma, sigma_next, row.old_denoised, sigma_prev)
        row.step_denoised = denoised
    row.latent = (np.float32(1 / math.sqrt(1 + sigma_next**2)) * x).astype(np.float32)
    row.after_update(float(row.alphas[position]), float(row.alphas_prev[position]))


def to_epsilon(rows: Sequence[Row], output: np.ndarray) -> np.ndarray:
    """Each row's (guided) model output as the noise it stands for.

    Rows whose UNet predicts noise pass through untouched (the same array, so sampling
    them stays byte-equal to keras-cv); v-prediction rows are converted at their own
    timestep. Guidance combines v as it combines noise (the conversion is affine in the
    output, with the same x_t for both passes), so converting after guidance is exact and
    is the order diffusers' schedulers use.
    """
    converted = [i for i, row in enumerate(rows) if row.prediction_type == "v_prediction"]
    if not converted:
        return output
    eps = output.copy()
    for i in converted:
        row = rows[i]
        eps[i] = v_to_epsilon(output[i], row.latent[0], float(row.alphas[row.position]))
    return eps


def sample_step(predict: NoisePredictor, rows: Sequence[Row], *, batched_cfg: bool) -> None:
    """One UNet evaluation (two without batched CFG) advancing every row by one step,
    each with its own sampler (a v-predicting UNet's output read as noise first)."""
    eps = to_epsilon(rows, guided_noise(predict, rows, batched_cfg=batched_cfg))
    ddim = [i for i, row in enumerate(rows) if row.sigmas is None]
    if len(ddim) == len(rows):
        ddim_update(rows, eps)
        return
    if ddim:
        ddim_update([rows[i] for i in ddim], eps[ddim])
    for i, row in enumerate(rows):
        if row.sigmas is not None:
            k_diffusion_update(row, eps[i : i + 1])


def _per_row(values: Sequence[float], dtype: type[np.floating[Any]] = np.float32) -> np.ndarray:
    return np.asarray(values, dtype=dtype).reshape(-1, 1, 1, 1)


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
