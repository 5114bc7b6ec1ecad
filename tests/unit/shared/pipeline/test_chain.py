"""The gateway's chain in one process (all-in-one): admission before any stage works."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from shared.config import Settings
from shared.errors import QueueFull
from shared.pipeline.chain import Chain, overlay_unmasked
from shared.pipeline.types import DenoiseParams, GenerationParams


def test_a_full_local_diffusion_queue_refuses_before_the_text_encoder():
    settings = Settings(
        model="tiny",
        weights="random",
        sizes=[(64, 64)],
        queue_size=1,
        max_steps=1000,
        warm_up=False,
    )
    chain = Chain(settings)
    chain.load()
    encoder_stats = chain.stages["text_encoder"].batcher.stats

    def params(steps: int) -> GenerationParams:
        return GenerationParams(
            "a red square",
            None,
            DenoiseParams(width=64, height=64, steps=steps, guidance_scale=7.5, seed=1),
        )

    async def main() -> None:
        long = asyncio.create_task(chain.generate(params(1000)))
        while chain.stages["diffusion"].scheduler.queue_depth == 0:
            assert not long.done(), long
            await asyncio.sleep(0.02)
        calls = encoder_stats.model_calls
        with pytest.raises(QueueFull) as refused:
            await chain.generate(params(2))
        assert encoder_stats.model_calls == calls
        assert refused.value.headers()["Retry-After"] == "1"
        long.cancel()
        with pytest.raises(asyncio.CancelledError):
            await long
        # Room again once the cancelled rows leave at the next step.
        while chain.stages["diffusion"].is_full():
            await asyncio.sleep(0.02)
        assert len((await chain.generate(params(2))).images) == 1

    try:
        asyncio.run(main())
    finally:
        for stage in chain.located("local").values():
            stage.shutdown()


def test_overlay_keeps_the_input_outside_the_mask():
    rng = np.random.default_rng(0)
    original = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    generated = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    mask = np.zeros((8, 8), np.float32)
    mask[:4, 4:] = 1.0  # repainted
    mask[4:, :4] = 0.5  # feathered
    out = overlay_unmasked(generated, original, mask)
    assert out.shape == generated.shape and out.dtype == np.uint8
    assert np.array_equal(out[:, :4, :4], np.broadcast_to(original[:4, :4], (2, 4, 4, 3)))
    assert np.array_equal(out[:, :4, 4:], generated[:, :4, 4:])
    halfway = (generated[:, 4:, :4].astype(float) + original[4:, :4]) / 2
    assert np.abs(out[:, 4:, :4] - halfway).max() <= 0.5
