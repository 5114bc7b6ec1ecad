"""The k-diffusion samplers sdserve offers beside DDIM, as k-diffusion writes them.

Karras et al. 2022 ("Elucidating the Design Space of Diffusion-Based Generative Models")
view an eps-prediction model with SD's discrete schedule as a denoiser of
x = x0 + sigma * noise, with sigma_t = sqrt((1 - alpha_cumprod_t) / alpha_cumprod_t)
(k-diffusion's `DiscreteEpsDDPMDenoiser`): the UNet sees x / sqrt(1 + sigma^2) at the
(possibly fractional) timestep whose sigma that is, and the denoised estimate is
x - sigma * eps. Samplers then step from sigma to the next, lower sigma:

- DPM-Solver++ (2M) (Lu et al. 2022), k-diffusion's `sample_dpmpp_2m`: second order,
  reusing the previous step's denoised estimate (first order on the first step and the
  last, which lands on sigma 0);
- Euler ancestral, `sample_euler_ancestral` with eta 1: an Euler step down to
  sigma_down, then fresh noise up to sigma_next.

Schedules (`get_sigmas` of k-diffusion's `DiscreteSchedule`, and `get_sigmas_karras`
with AUTOMATIC1111's sigma_min / sigma_max: the model's smallest and largest) take the
model's per-timestep noise levels (`sigmas_from_alphas`) and are returned from the
noisiest down, without k-diffusion's appended 0: the step after the last goes to sigma 0.
Everything is float64 numpy for the schedule and float32 arrays for latents,
coefficients rounded to float32 once, as `shared.noise_schedule.ddim_step` does.
`tests/unit/shared/test_k_diffusion.py` checks these against an independent transcription
of k-diffusion's code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

KARRAS_RHO = 7.0


def sigmas_from_alphas(alphas_cumprod: Sequence[float]) -> np.ndarray:
    """A discrete eps-prediction schedule's noise levels, one per training timestep
    (ascending with it): sqrt((1 - alpha_cumprod) / alpha_cumprod)."""
    alphas = np.asarray(alphas_cumprod, dtype=np.float64)
    return np.sqrt((1 - alphas) / alphas)


def t_to_sigma(t: np.ndarray, model_sigmas: np.ndarray) -> np.ndarray:
    """Noise level at (fractional) timesteps: log-sigma interpolated between timesteps."""
    log_sigmas = np.log(model_sigmas)
    return np.exp(np.interp(np.asarray(t, np.float64), np.arange(len(log_sigmas)), log_sigmas))


def sigma_to_t(sigma: np.ndarray, model_sigmas: np.ndarray) -> np.ndarray:
    """The (fractional) timestep of noise levels: the inverse of `t_to_sigma`, clamped to
    the model's range (k-diffusion's unquantized `sigma_to_t`)."""
    log_sigmas = np.log(model_sigmas)
    return np.interp(np.log(np.asarray(sigma, np.float64)), log_sigmas, np.arange(len(log_sigmas)))


def default_sigmas(steps: int, model_sigmas: np.ndarray) -> np.ndarray:
    """k-diffusion's default schedule: timesteps evenly spaced from the last down to 0."""
    _check_steps(steps)
    return t_to_sigma(np.linspace(len(model_sigmas) - 1, 0, steps), model_sigmas)


def karras_sigmas(steps: int, model_sigmas: np.ndarray, rho: float = KARRAS_RHO) -> np.ndarray:
    """Karras et al.'s schedule: sigma^(1/rho) evenly spaced from the model's largest
    sigma down to its smallest."""
    _check_steps(steps)
    sigma_min, sigma_max = float(model_sigmas[0]), float(model_sigmas[-1])
    ramp = np.linspace(0, 1, steps)
    max_inv, min_inv = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return np.asarray((max_inv + ramp * (min_inv - max_inv)) ** rho, dtype=np.float64)


def _check_steps(steps: int) -> None:
    if steps < 1:
        raise ValueError("steps must be at least 1")


def denoised_estimate(x: np.ndarray, eps: np.ndarray, sigma: float) -> np.ndarray:
    """x0 estimated from x = x0 + sigma * noise and the model's noise prediction."""
    return x - np.float32(sigma) * eps


def dpmpp_2m_step(
    x: np.ndarray,
    denoised: np.ndarray,
    sigma: float,
    sigma_next: float,
    old_denoised: np.ndarray | None = None,
    sigma_prev: float | None = None,
) -> np.ndarray:
    """One DPM-Solver++ (2M) step from `sigma` to `sigma_next`.

    `old_denoised` is the previous step's denoised estimate, made at `sigma_prev`; without
    it (the first step), and on the last step (to sigma 0), the step is first order.
    """
    if sigma_next == 0:
        return denoised.copy()  # (0 / sigma) x + (1 - 0) denoised
    t, t_next = -math.log(sigma), -math.log(sigma_next)
    h = t_next - t
    if old_denoised is not None:
        assert sigma_prev is not None, "the second-order step needs the previous sigma"
        r = (t + math.log(sigma_prev)) / h  # h_last / h
        denoised = np.float32(1 + 1 / (2 * r)) * denoised - np.float32(1 / (2 * r)) * old_denoised
    return np.float32(sigma_next / sigma) * x - np.float32(math.expm1(-h)) * denoised


def ancestral_step(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """(sigma_down, sigma_up): how far a deterministic step goes down, and how much noise
    is added back, so the result is at `sigma_next`."""
    if not eta:
        return sigma_next, 0.0
    sigma_up = min(
        sigma_next,
        eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2),
    )
    return math.sqrt(sigma_next**2 - sigma_up**2), sigma_up


def euler_ancestral_step(
    x: np.ndarray,
    denoised: np.ndarray,
    sigma: float,
    sigma_next: float,
    noise: np.ndarray | None,
) -> np.ndarray:
    """One Euler ancestral step (eta 1) from `sigma` to `sigma_next`; `noise` (standard
    normal, the latent's shape) is needed unless `sigma_next` is 0."""
    sigma_down, sigma_up = ancestral_step(sigma, sigma_next)
    derivative = (x - denoised) / np.float32(sigma)
    x = x + derivative * np.float32(sigma_down - sigma)
    if sigma_next > 0:
        assert noise is not None, "an ancestral step to sigma > 0 needs noise"
        x = x + noise * np.float32(sigma_up)
    return x
