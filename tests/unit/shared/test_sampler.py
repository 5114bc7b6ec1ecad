import math

import numpy as np
import pytest

from shared.noise_schedule import (
    alphas_cumprod,
    ddim_alphas,
    ddim_timesteps,
    initial_noise,
    timestep_embedding,
)
from shared.sampler import NoisePredictor, Row, sample_step, sampler_schedule, to_epsilon
from shared.sampler_names import SAMPLER_NAMES, SamplerName


def test_timesteps_match_keras_cv_formula() -> None:
    # keras-cv: round(arange(n) * 999 / (n - 1)), visited in reverse.
    assert ddim_timesteps(3).tolist() == [0, 500, 999]
    assert ddim_timesteps(50)[[0, 1, -1]].tolist() == [0, 20, 999]
    assert ddim_timesteps(1).tolist() == [0]
    assert ddim_timesteps(1000).tolist() == list(range(1000))
    with pytest.raises(ValueError):
        ddim_timesteps(0)


def test_alphas_come_from_keras_cv_table() -> None:
    from keras_cv.src.models.stable_diffusion.constants import _ALPHAS_CUMPROD

    table = alphas_cumprod()
    assert len(table) == 1000
    assert table[0] == pytest.approx(0.99915)
    assert table[999] == _ALPHAS_CUMPROD[999]
    alphas, prev = ddim_alphas(np.array([0, 500, 999]))
    assert alphas.dtype == prev.dtype == np.float64
    assert alphas.tolist() == [table[0], table[500], table[999]]
    assert prev.tolist() == [1.0, table[0], table[500]]


def test_timestep_embedding_matches_keras_cv_bit_for_bit() -> None:
    from keras_cv.src.models.stable_diffusion.stable_diffusion import StableDiffusion

    reference = StableDiffusion(128, 128, jit_compile=False)
    for t in (0, 1, 500, 999):
        expected = np.asarray(reference._get_timestep_embedding(t, 1))
        np.testing.assert_array_equal(timestep_embedding([t]), expected)
    mixed = timestep_embedding([999, 0])
    assert mixed.shape == (2, 320)
    assert not np.array_equal(mixed[0], mixed[1])


def test_initial_noise_is_per_seed_and_deterministic() -> None:
    a = initial_noise(7, (8, 8, 4))
    assert a.shape == (1, 8, 8, 4) and a.dtype == np.float32
    np.testing.assert_array_equal(a, initial_noise(7, (8, 8, 4)))
    assert not np.array_equal(a, initial_noise(8, (8, 8, 4)))
    assert abs(float(a.std()) - 1.0) < 0.2


def _linear_predictor(calls: list[int]) -> NoisePredictor:
    """A deterministic stand-in UNet: eps = 0.1 * latent + mean(context) + t_emb[0]."""

    def predict(latent: np.ndarray, t_emb: np.ndarray, context: np.ndarray) -> np.ndarray:
        calls.append(len(latent))
        bias = context.mean(axis=(1, 2)).reshape(-1, 1, 1, 1) + t_emb[:, :1].reshape(-1, 1, 1, 1)
        return (0.1 * latent + bias).astype(np.float32)

    return predict


def _row(
    seed: int, steps: int, ctx_value: float = 1.0, guidance: float = 7.5, guidance_from: int = 0
) -> Row:
    return Row(
        latent=initial_noise(seed, (4, 4, 4)),
        context=np.full((1, 77, 8), ctx_value, np.float32),
        unconditional_context=np.zeros((1, 77, 8), np.float32),
        guidance_scale=guidance,
        timesteps=ddim_timesteps(steps),
        guidance_from_timestep=guidance_from,
    )


def _reference_ddim(
    row_seed: int,
    steps: int,
    ctx_value: float = 1.0,
    guidance: float = 7.5,
    guidance_from: int = 0,
) -> np.ndarray:
    """keras-cv's loop written out with scalars, one image (guidance only at t >= guidance_from)."""
    latent = initial_noise(row_seed, (4, 4, 4))
    timesteps = ddim_timesteps(steps)
    alphas, alphas_prev = ddim_alphas(timesteps)
    for index, t in list(enumerate(timesteps))[::-1]:
        t_emb = timestep_embedding([t])
        eps_u = 0.1 * latent + 0.0 + t_emb[:, :1].reshape(-1, 1, 1, 1)
        eps_c = 0.1 * latent + np.float32(ctx_value) + t_emb[:, :1].reshape(-1, 1, 1, 1)
        eps = (eps_u + guidance * (eps_c - eps_u)).astype(np.float32)
        if t < guidance_from:
            eps = eps_c.astype(np.float32)
        a_t, a_prev = alphas[index], alphas_prev[index]
        pred_x0 = (latent - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
        latent = eps * math.sqrt(1.0 - a_prev) + math.sqrt(a_prev) * pred_x0
    return latent


@pytest.mark.parametrize("batched_cfg", [False, True])
def test_rows_at_different_timesteps_share_one_call(batched_cfg: bool) -> None:
    calls: list[int] = []
    predict = _linear_predictor(calls)
    long_row, short_row = _row(1, 5), _row(2, 3, ctx_value=-0.5, guidance=3.0)
    # Run the long row alone for two steps, then both together: different timesteps.
    sample_step(predict, [long_row], batched_cfg=batched_cfg)
    sample_step(predict, [long_row], batched_cfg=batched_cfg)
    assert long_row.steps_done == 2
    while not short_row.done:
        sample_step(predict, [long_row, short_row], batched_cfg=batched_cfg)
    assert long_row.done and short_row.done
    # Rows per UNet call: two solo steps, then three shared ones; CFG doubles the rows
    # of one call when batched, and makes two calls of the same rows when not.
    expected = [2, 2, 4, 4, 4] if batched_cfg else [1, 1, 1, 1, 2, 2, 2, 2, 2, 2]
    assert calls == expected
    np.testing.assert_allclose(long_row.latent, _reference_ddim(1, 5), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        short_row.latent, _reference_ddim(2, 3, -0.5, 3.0), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("batched_cfg", [False, True])
def test_guidance_stops_below_the_rows_guidance_from_timestep(batched_cfg: bool) -> None:
    # Two rows in one call: one guided at every step, one only from t >= 500 on.
    everywhere, interval = _row(1, 10), _row(2, 10, guidance_from=500)
    while not everywhere.done:
        sample_step(_linear_predictor([]), [everywhere, interval], batched_cfg=batched_cfg)
    np.testing.assert_allclose(everywhere.latent, _reference_ddim(1, 10), rtol=1e-5, atol=1e-5)
    expected = _reference_ddim(2, 10, guidance_from=500)
    np.testing.assert_allclose(interval.latent, expected, rtol=1e-5, atol=1e-5)
    # And the interval matters: guided at every step, the same row ends elsewhere.
    assert np.abs(expected - _reference_ddim(2, 10)).max() > 0.1


@pytest.mark.parametrize("batched_cfg", [False, True])
def test_rows_below_their_guidance_interval_skip_the_unconditional_pass(
    batched_cfg: bool,
) -> None:
    calls: list[int] = []
    everywhere, interval = _row(1, 10), _row(2, 10, guidance_from=500)
    guided_steps = sum(int(t) >= 500 for t in interval.timesteps)
    assert 0 < guided_steps < 10
    while not everywhere.done:
        sample_step(_linear_predictor(calls), [everywhere, interval], batched_cfg=batched_cfg)
    # Each step: both rows conditioned, the first row unconditioned, the second row
    # unconditioned only while it is guided.
    unguided_steps = 10 - guided_steps
    if batched_cfg:
        assert calls == [4] * guided_steps + [3] * unguided_steps
    else:
        assert calls == [2, 2] * guided_steps + [1, 2] * unguided_steps


SAMPLERS = list(SAMPLER_NAMES)


def _edit_row(
    seed: int,
    steps: int,
    strength: float,
    mask: np.ndarray | None = None,
    resamples: int = 1,
    sampler: SamplerName = "ddim",
) -> Row:
    known = np.linspace(-1, 1, 64, dtype=np.float32).reshape(1, 4, 4, 4)
    schedule = sampler_schedule(sampler, steps)
    return Row(
        latent=known,
        context=np.ones((1, 77, 8), np.float32),
        unconditional_context=np.zeros((1, 77, 8), np.float32),
        guidance_scale=7.5,
        timesteps=schedule.timesteps,
        known_latent=known,
        mask=mask,
        num_resamples=resamples,
        start_steps=round(strength * steps),
        rng=np.random.default_rng(seed),
        sampler=sampler,
        sigmas=schedule.sigmas,
    )


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize(("strength", "expected_steps"), [(1.0, 10), (0.5, 5), (0.26, 3)])
def test_img2img_runs_round_strength_times_steps(
    strength: float, expected_steps: int, sampler: SamplerName
) -> None:
    calls: list[int] = []
    row = _edit_row(1, 10, strength, sampler=sampler)
    row.noise_known_to_start()
    while not row.done:
        sample_step(_linear_predictor(calls), [row], batched_cfg=True)
    assert len(calls) == expected_steps


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_img2img_with_tiny_strength_returns_the_init_latent(sampler: SamplerName) -> None:
    row = _edit_row(1, 10, 0.04, sampler=sampler)  # round(0.4) = 0 steps
    row.noise_known_to_start()
    assert row.done
    np.testing.assert_array_equal(row.latent, row.known_latent)
    row = _edit_row(1, 50, 0.02, sampler=sampler)  # one step at the least noisy timestep
    row.noise_known_to_start()

    def no_noise_predicted(
        latent: np.ndarray, t_emb: np.ndarray, context: np.ndarray
    ) -> np.ndarray:
        return np.zeros_like(latent)

    sample_step(no_noise_predicted, [row], batched_cfg=True)
    assert row.done
    assert np.abs(row.latent - row.known_latent).max() < 0.1


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("resamples", [1, 3])
def test_inpaint_keeps_the_known_region_exactly_and_changes_the_rest(
    resamples: int, sampler: SamplerName
) -> None:
    mask = np.zeros((1, 4, 4, 1), np.float32)
    mask[:, 1:3, 1:3] = 1
    calls: list[int] = []
    row = _edit_row(3, 6, 1.0, mask=mask, resamples=resamples, sampler=sampler)
    row.noise_known_to_start()
    while not row.done:
        sample_step(_linear_predictor(calls), [row], batched_cfg=True)
    keep = np.broadcast_to(mask == 0, row.latent.shape)
    known = row.known_latent
    assert known is not None
    np.testing.assert_array_equal(row.latent[keep], known[keep])
    assert np.abs(row.latent[~keep] - known[~keep]).min() > 0
    # RePaint: every step but the last runs `resamples` times.
    assert len(calls) == 5 * resamples + 1


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_resampled_latent_is_what_the_next_unet_call_sees(sampler: SamplerName) -> None:
    mask = np.ones((1, 4, 4, 1), np.float32)
    seen: list[np.ndarray] = []

    def predict(latent: np.ndarray, t_emb: np.ndarray, context: np.ndarray) -> np.ndarray:
        seen.append(latent[:1].copy())
        return np.zeros_like(latent)

    row = _edit_row(5, 4, 1.0, mask=mask, resamples=2, sampler=sampler)
    row.noise_known_to_start()
    sample_step(predict, [row], batched_cfg=True)  # step at position 3, first pass
    after_first = row.latent.copy()
    assert row.position == 3  # resampling: same step again
    sample_step(predict, [row], batched_cfg=True)
    np.testing.assert_array_equal(seen[-1], after_first)


def test_mask_goes_to_the_latent_grid_by_any_pixel() -> None:
    from shared.sampler import mask_to_latent_grid

    pixels = np.zeros((32, 32), np.float32)
    pixels[9, 17] = 1  # one pixel in latent cell (1, 2)
    grid = mask_to_latent_grid(pixels, 8)
    assert grid.shape == (1, 4, 4, 1)
    assert grid[0, 1, 2, 0] == 1 and grid.sum() == 1
    blurred = mask_to_latent_grid(pixels, 8, blur=1)
    assert blurred[0, 1, 2, 0] == 1
    assert 0 < blurred[0, 1, 1, 0] < 1 and blurred[0, 3, 0, 0] == 0


def test_noise_predictions_pass_through_to_epsilon_untouched() -> None:
    rows = [_row(1, 5), _row(2, 3)]
    output = np.random.default_rng(0).standard_normal((2, 4, 4, 4)).astype(np.float32)
    assert to_epsilon(rows, output) is output  # same array: DDIM stays keras-cv's


def test_v_predictions_become_noise_at_each_rows_own_timestep() -> None:
    """v = sqrt(a) eps - sqrt(1 - a) x0 and x_t = sqrt(a) x0 + sqrt(1 - a) eps give back
    eps, in a batch mixing a v row, at its own timestep, with a noise row."""
    rng = np.random.default_rng(1)
    eps, x0 = rng.standard_normal((2, 1, 4, 4, 4))
    v_row, eps_row = _row(1, 5), _row(2, 3)
    v_row.prediction_type = "v_prediction"
    v_row.position = 2  # a mid-schedule step; the noise row is at its first
    a = float(v_row.alphas[2])
    v_row.latent = (math.sqrt(a) * x0 + math.sqrt(1 - a) * eps).astype(np.float32)
    v = (math.sqrt(a) * eps - math.sqrt(1 - a) * x0).astype(np.float32)
    noise_out = rng.standard_normal((1, 4, 4, 4)).astype(np.float32)
    converted = to_epsilon([v_row, eps_row], np.concatenate([v, noise_out]))
    np.testing.assert_allclose(converted[0:1], eps, atol=1e-5)
    np.testing.assert_array_equal(converted[1:], noise_out)


def test_rows_take_only_known_prediction_types() -> None:
    with pytest.raises(ValueError, match="prediction_type"):
        Row(
            latent=initial_noise(0, (4, 4, 4)),
            context=np.zeros((1, 77, 8), np.float32),
            unconditional_context=np.zeros((1, 77, 8), np.float32),
            guidance_scale=1.0,
            timesteps=ddim_timesteps(2),
            prediction_type="sample",
        )
