"""Our DDIM loop against diffusers' DDIMScheduler, for noise- and v-predicting UNets.

The stand-in UNet is a fixed nonlinear function of the latent and timestep, the same on
both sides. diffusers' `trailing` spacing steps by exactly 1000 / n, so its "previous
timestep" is the one our schedule visits next; both then run DDIM (eta 0) on SD's
scaled-linear betas. keras-cv's alpha table and diffusers' computed one differ in the
last float32 bits, so latents agree to ~1e-6 of their scale, not bit for bit; we allow
1e-5. Treating a v-prediction as noise (the bug this guards against) is off by tens of
percent.
"""

from __future__ import annotations

import numpy as np
import pytest

from shared.sampler import Row, sample_step

STEPS = 5
TIMESTEPS = np.arange(1000 // STEPS - 1, 1000, 1000 // STEPS)  # 199, 399, ..., 999
SHAPE = (1, 8, 8, 4)


def stand_in_unet(latent: np.ndarray, timestep: int) -> np.ndarray:
    return np.tanh(latent * 0.7 + timestep / 1000.0).astype(np.float32)


def ours(prediction_type: str, start: np.ndarray) -> np.ndarray:
    row = Row(
        latent=start.copy(),
        context=np.zeros((1, 1, 1), np.float32),
        unconditional_context=np.zeros((1, 1, 1), np.float32),
        guidance_scale=1.0,
        timesteps=TIMESTEPS,
        prediction_type=prediction_type,
    )

    def predict(latent: np.ndarray, _emb: np.ndarray, _context: np.ndarray) -> np.ndarray:
        return stand_in_unet(latent, int(row.timesteps[row.position]))

    while not row.done:
        sample_step(predict, [row], batched_cfg=True)
    return row.latent


def diffusers(prediction_type: str, start: np.ndarray) -> np.ndarray:
    import torch
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=True,
        timestep_spacing="trailing",
        prediction_type=prediction_type,
    )
    scheduler.set_timesteps(STEPS)
    assert list(scheduler.timesteps.numpy()) == list(TIMESTEPS[::-1])
    sample = torch.from_numpy(start)
    for t in scheduler.timesteps:
        output = torch.from_numpy(stand_in_unet(sample.numpy(), int(t)))
        sample = scheduler.step(output, t, sample, eta=0.0).prev_sample
    return sample.numpy()


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddim_matches_diffusers(prediction_type):
    start = np.random.default_rng(0).standard_normal(SHAPE, dtype=np.float32)
    a, b = ours(prediction_type, start), diffusers(prediction_type, start)
    error = float(np.abs(a - b).max() / np.abs(b).max())
    print(f"{prediction_type}: relative difference {error:.1e}")
    assert error < 1e-5
    if prediction_type == "v_prediction":  # and reading v as noise would be far off
        wrong = ours("epsilon", start)
        assert float(np.abs(wrong - b).max() / np.abs(b).max()) > 0.1
