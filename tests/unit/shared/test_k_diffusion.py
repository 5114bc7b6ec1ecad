"""DPM++ 2M, Karras sigmas and Euler ancestral against k-diffusion's own formulas.

The reference below is written independently of shared.k_diffusion and shared.sampler:
a transcription into float64 numpy of k-diffusion's `DiscreteSchedule` (`get_sigmas`,
`sigma_to_t` unquantized, `t_to_sigma`), `DiscreteEpsDDPMDenoiser.forward`,
`get_sigmas_karras`, `get_ancestral_step`, `sample_dpmpp_2m` and
`sample_euler_ancestral` (crowsonkb/k-diffusion, k_diffusion/external.py and sampling.py),
with classifier-free guidance as AUTOMATIC1111's CFG denoiser applies it. Our rows step in
the UNet's scaled space and in float32, so results agree to float32 rounding, not bits.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest

from shared.noise_schedule import alphas_cumprod, initial_noise, model_sigmas, timestep_embedding
from shared.sampler import Row, sample_step, sampler_schedule
from shared.sampler_names import SamplerName

SHAPE = (4, 4, 4)

# ------------------------------------------------------------------ the reference


class ReferenceSchedule:
    """k-diffusion's DiscreteSchedule over SD's alphas_cumprod, in float64."""

    def __init__(self) -> None:
        alphas = np.array(alphas_cumprod(), dtype=np.float64)
        self.sigmas = ((1 - alphas) / alphas) ** 0.5
        self.log_sigmas = np.log(self.sigmas)

    def t_to_sigma(self, t: np.ndarray) -> np.ndarray:
        low, high = np.floor(t).astype(int), np.ceil(t).astype(int)
        w = t - np.floor(t)
        return np.exp((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high])

    def sigma_to_t(self, sigma: np.ndarray) -> np.ndarray:
        log_sigma = np.log(sigma)
        dists = log_sigma - self.log_sigmas[:, None]
        low_idx = np.minimum(np.cumsum(dists >= 0, axis=0).argmax(axis=0), len(self.log_sigmas) - 2)
        high_idx = low_idx + 1
        low, high = self.log_sigmas[low_idx], self.log_sigmas[high_idx]
        w = np.clip((low - log_sigma) / (low - high), 0, 1)
        return (1 - w) * low_idx + w * high_idx

    def get_sigmas(self, n: int) -> np.ndarray:
        t = np.linspace(len(self.sigmas) - 1, 0, n)
        return np.append(self.t_to_sigma(t), 0.0)

    def get_sigmas_karras(self, n: int, rho: float = 7.0) -> np.ndarray:
        # AUTOMATIC1111 passes the model's own smallest and largest sigma.
        sigma_min, sigma_max = self.sigmas[0], self.sigmas[-1]
        ramp = np.linspace(0, 1, n)
        min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
        return np.append((max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho, 0.0)


def get_ancestral_step(sigma_from: float, sigma_to: float, eta: float = 1.0) -> tuple[float, float]:
    sigma_up = min(
        sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5
    )
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


Eps = Callable[[np.ndarray, float, np.ndarray], np.ndarray]  # (x_in, t, context) -> eps


def cfg_denoiser(
    schedule: ReferenceSchedule,
    eps: Eps,
    cond: np.ndarray,
    uncond: np.ndarray,
    scale: float,
    guidance_from: float = 0.0,
) -> Callable[[np.ndarray, float], np.ndarray]:
    """DiscreteEpsDDPMDenoiser.forward with CFG; unguided below `guidance_from`."""

    def model(x: np.ndarray, sigma: float) -> np.ndarray:
        c_out, c_in = -sigma, 1 / (sigma**2 + 1) ** 0.5
        t = float(schedule.sigma_to_t(np.array([sigma]))[0])
        e_c = eps(x * c_in, t, cond)
        e = (
            e_c
            if t < guidance_from
            else (lambda e_u: e_u + scale * (e_c - e_u))(eps(x * c_in, t, uncond))
        )
        return x + e * c_out

    return model


def sample_dpmpp_2m(
    model: Callable[[np.ndarray, float], np.ndarray], x: np.ndarray, sigmas: np.ndarray
) -> np.ndarray:
    sigma_fn = lambda t: math.exp(-t)  # noqa: E731
    t_fn = lambda sigma: -math.log(sigma)  # noqa: E731
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = denoised  # (0 / sigma) x - expm1(-inf) denoised
        else:
            t, t_next = t_fn(sigmas[i]), t_fn(sigmas[i + 1])
            h = t_next - t
            if old_denoised is None:
                x = (sigma_fn(t_next) / sigma_fn(t)) * x - math.expm1(-h) * denoised
            else:
                h_last = t - t_fn(sigmas[i - 1])
                r = h_last / h
                denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
                x = (sigma_fn(t_next) / sigma_fn(t)) * x - math.expm1(-h) * denoised_d
        old_denoised = denoised
    return x


def sample_euler_ancestral(
    model: Callable[[np.ndarray, float], np.ndarray],
    x: np.ndarray,
    sigmas: np.ndarray,
    noise: Callable[[], np.ndarray],
) -> np.ndarray:
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1])
        d = (x - denoised) / sigmas[i]
        x = x + d * (sigma_down - sigmas[i])
        if sigmas[i + 1] > 0:
            x = x + noise() * sigma_up
    return x


# ------------------------------------------------------------------ a stand-in UNet


def _eps(x_in: np.ndarray, t: float, context: np.ndarray) -> np.ndarray:
    """A smooth, timestep- and context-dependent noise prediction: 0.3 x + c + emb(t)[0..1]."""
    emb = timestep_embedding([t])[0].astype(np.float64)
    return 0.3 * x_in + float(context.mean()) + 0.2 * emb[0] - 0.1 * emb[1]


def _predict(latent: np.ndarray, t_emb: np.ndarray, context: np.ndarray) -> np.ndarray:
    """The same prediction, batched, as the sampler calls it."""
    bias = context.mean(axis=(1, 2)).reshape(-1, 1, 1, 1)
    t_part = 0.2 * t_emb[:, 0] - 0.1 * t_emb[:, 1]
    return (0.3 * latent + bias + t_part.reshape(-1, 1, 1, 1)).astype(np.float32)


def _row(
    sampler: SamplerName, steps: int, seed: int, ctx: float = 1.0, guidance_from: int = 0
) -> Row:
    schedule = sampler_schedule(sampler, steps)
    rng = np.random.default_rng(seed)
    row = Row(
        latent=initial_noise(rng, SHAPE),
        context=np.full((1, 77, 8), ctx, np.float32),
        unconditional_context=np.zeros((1, 77, 8), np.float32),
        guidance_scale=5.0,
        timesteps=schedule.timesteps,
        guidance_from_timestep=guidance_from,
        rng=rng,
        sampler=sampler,
        sigmas=schedule.sigmas,
    )
    row.start_from_noise()
    return row


def _reference(
    sampler: SamplerName, steps: int, seed: int, ctx: float = 1.0, guidance_from: int = 0
) -> np.ndarray:
    """k-diffusion's run of the same image; returns x at sigma 0 (the clean latent)."""
    schedule = ReferenceSchedule()
    sigmas = (
        schedule.get_sigmas_karras(steps)
        if sampler == "dpmpp_2m_karras"
        else schedule.get_sigmas(steps)
    )
    model = cfg_denoiser(
        schedule,
        _eps,
        np.full((1, 77, 8), ctx),
        np.zeros((1, 77, 8)),
        5.0,
        guidance_from,
    )
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, *SHAPE), dtype=np.float32).astype(np.float64) * sigmas[0]
    if sampler == "euler_ancestral":
        noise = lambda: rng.standard_normal((1, *SHAPE), dtype=np.float32).astype(np.float64)  # noqa: E731
        return sample_euler_ancestral(model, x, sigmas, noise)
    return sample_dpmpp_2m(model, x, sigmas)


def _close(ours: np.ndarray, reference: np.ndarray) -> None:
    np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())


# ------------------------------------------------------------------ the tests


@pytest.mark.parametrize("steps", [1, 2, 5, 25, 1000])
def test_schedules_are_k_diffusions(steps: int) -> None:
    reference = ReferenceSchedule()
    np.testing.assert_allclose(model_sigmas(), reference.sigmas, rtol=1e-15)
    for sampler, expected in (
        ("dpmpp_2m", reference.get_sigmas(steps)),
        ("euler_ancestral", reference.get_sigmas(steps)),
        ("dpmpp_2m_karras", reference.get_sigmas_karras(steps)),
    ):
        schedule = sampler_schedule(sampler, steps)
        assert schedule.sigmas is not None
        # Ascending as DDIM's timesteps are; k-diffusion's descend to an appended 0.
        np.testing.assert_allclose(schedule.sigmas[::-1], expected[:-1], rtol=1e-12)
        np.testing.assert_allclose(
            schedule.timesteps, reference.sigma_to_t(schedule.sigmas), rtol=1e-9, atol=1e-9
        )
        assert len(schedule.timesteps) == steps


def test_karras_sigmas_and_fractional_timesteps() -> None:
    schedule = sampler_schedule("dpmpp_2m_karras", 5)
    assert schedule.sigmas is not None
    sigmas = schedule.sigmas[::-1]
    assert sigmas[0] == pytest.approx(14.6146, rel=1e-4)  # SD's largest sigma
    assert sigmas[-1] == pytest.approx(0.0292, rel=1e-2)  # and its smallest
    assert np.all(np.diff(sigmas) < 0)
    timesteps = schedule.timesteps[::-1]
    assert timesteps[0] == pytest.approx(999) and timesteps[-1] == pytest.approx(0)
    assert any(t != round(t) for t in timesteps)  # between the trained timesteps


def test_sigma_to_t_inverts_t_to_sigma_and_clamps() -> None:
    from shared import k_diffusion

    reference = ReferenceSchedule()
    t = np.array([0.0, 0.25, 3.5, 500.0, 998.75, 999.0])
    sigma = k_diffusion.t_to_sigma(t, model_sigmas())
    np.testing.assert_allclose(sigma, reference.t_to_sigma(t), rtol=1e-12)
    np.testing.assert_allclose(k_diffusion.sigma_to_t(sigma, model_sigmas()), t, atol=1e-9)
    outside = np.array([1e-4, 100.0])  # below the smallest, above the largest
    np.testing.assert_allclose(
        k_diffusion.sigma_to_t(outside, model_sigmas()), reference.sigma_to_t(outside)
    )


def test_ancestral_step_matches_k_diffusion() -> None:
    from shared import k_diffusion

    for sigma, sigma_next in ((14.6, 7.8), (1.0, 0.5), (0.7, 0.0)):
        down, up = k_diffusion.ancestral_step(sigma, sigma_next)
        assert (down, up) == pytest.approx(get_ancestral_step(sigma, sigma_next), rel=1e-12)
        assert down**2 + up**2 == pytest.approx(sigma_next**2)


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "dpmpp_2m_karras", "euler_ancestral"])
@pytest.mark.parametrize("steps", [1, 2, 6])
def test_a_row_samples_as_k_diffusion_does(sampler: SamplerName, steps: int) -> None:
    row = _row(sampler, steps, seed=3)
    while not row.done:
        sample_step(_predict, [row], batched_cfg=True)
    _close(row.latent, _reference(sampler, steps, seed=3))


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "dpmpp_2m_karras", "euler_ancestral"])
def test_the_guidance_interval_applies_at_fractional_timesteps(sampler: SamplerName) -> None:
    row = _row(sampler, 8, seed=5, guidance_from=400)
    guided = [t >= 400 for t in row.timesteps]
    assert any(guided) and not all(guided)
    while not row.done:
        sample_step(_predict, [row], batched_cfg=False)
    expected = _reference(sampler, 8, seed=5, guidance_from=400)
    _close(row.latent, expected)
    # ... and the interval matters.
    assert np.abs(expected - _reference(sampler, 8, seed=5)).max() > 1e-2


def test_rows_of_every_sampler_share_calls_and_keep_their_own_state() -> None:
    """Continuous batching: rows join at different steps with different samplers; each
    ends exactly where it ends alone (same bytes), and as k-diffusion's loop does."""
    calls: list[int] = []

    def predict(latent: np.ndarray, t_emb: np.ndarray, context: np.ndarray) -> np.ndarray:
        calls.append(len(latent))
        return _predict(latent, t_emb, context)

    specs: list[tuple[SamplerName, int, int, float]] = [
        ("dpmpp_2m", 7, 1, 1.0),
        ("euler_ancestral", 5, 2, -0.5),
        ("dpmpp_2m_karras", 4, 3, 0.5),
        ("ddim", 6, 4, 1.0),
    ]
    rows = [_row(s, n, seed, ctx) for s, n, seed, ctx in specs]
    # Staggered: the first row runs alone for two steps, the second joins for one, ...
    sample_step(predict, rows[:1], batched_cfg=True)
    sample_step(predict, rows[:1], batched_cfg=True)
    sample_step(predict, rows[:2], batched_cfg=True)
    while not all(r.done for r in rows):
        sample_step(predict, [r for r in rows if not r.done], batched_cfg=True)
    assert max(calls) == 8  # all four rows (with their unconditional passes) in one call
    for (sampler, steps, seed, ctx), row in zip(specs, rows, strict=True):
        alone = _row(sampler, steps, seed, ctx)
        while not alone.done:
            sample_step(_predict, [alone], batched_cfg=True)
        np.testing.assert_array_equal(row.latent, alone.latent, err_msg=sampler)
        if sampler != "ddim":
            _close(row.latent, _reference(sampler, steps, seed, ctx))


def test_euler_ancestral_noise_comes_from_the_rows_seed() -> None:
    def run(seed: int) -> np.ndarray:
        row = _row("euler_ancestral", 4, seed)
        while not row.done:
            sample_step(_predict, [row], batched_cfg=True)
        return row.latent

    np.testing.assert_array_equal(run(11), run(11))
    assert not np.array_equal(run(11), run(12))
    # The fresh noise matters: with the same start, the deterministic DPM++ 2M differs.
    assert not np.allclose(run(11), _reference("dpmpp_2m", 4, 11), atol=1e-3)


def test_dpmpp_2m_keeps_the_previous_estimate_through_repaint_resampling() -> None:
    """A RePaint rerun of a step must not replace the estimate of the step before it."""
    schedule = sampler_schedule("dpmpp_2m", 4)
    known = np.linspace(-1, 1, 64, dtype=np.float32).reshape(1, *SHAPE)
    row = Row(
        latent=known,
        context=np.ones((1, 77, 8), np.float32),
        unconditional_context=np.zeros((1, 77, 8), np.float32),
        guidance_scale=5.0,
        timesteps=schedule.timesteps,
        known_latent=known,
        mask=np.ones((1, 4, 4, 1), np.float32),
        num_resamples=2,
        rng=np.random.default_rng(0),
        sampler="dpmpp_2m",
        sigmas=schedule.sigmas,
    )
    row.noise_known_to_start()
    sample_step(_predict, [row], batched_cfg=True)  # first pass of the first step
    assert row.position == 3 and row.old_denoised is None
    sample_step(_predict, [row], batched_cfg=True)  # its rerun: now the step is taken
    assert row.position == 2 and row.old_denoised is not None
    first_estimate = row.old_denoised.copy()
    sample_step(_predict, [row], batched_cfg=True)  # first pass of the second step
    assert row.position == 2
    np.testing.assert_array_equal(row.old_denoised, first_estimate)
