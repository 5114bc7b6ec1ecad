"""The tiny family's custom layers (the builders are covered through `TinyFamily`)."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np

from shared.families.tiny_model import HoldEndState, PromptMean


def test_hold_end_state_copies_the_first_end_tokens_state_forward() -> None:
    hidden = np.random.default_rng(0).standard_normal((3, 5, 2)).astype(np.float32)
    end = 49407
    tokens = np.array(
        [[49406, 7, end, end, end], [49406, end, 8, end, end], [49406, 7, 8, 9, 10]], np.int32
    )
    held = np.asarray(HoldEndState(end)([hidden, tokens]))
    np.testing.assert_array_equal(held[0], hidden[0, [0, 1, 2, 2, 2]])
    np.testing.assert_array_equal(held[1], hidden[1, [0, 1, 1, 1, 1]])  # the first end counts
    np.testing.assert_array_equal(held[2], hidden[2])  # cut off, no end token: as it was


def test_prompt_mean_averages_up_to_the_first_end_token() -> None:
    hidden = np.random.default_rng(0).standard_normal((2, 6, 3)).astype(np.float32)
    end = 49407
    tokens = np.array([[49406, 5, 6, end, end, end], [49406, end, end, end, end, end]], np.int32)
    summary = np.asarray(PromptMean(end)([hidden, tokens]))
    assert summary.shape == (2, 1, 3)
    np.testing.assert_allclose(summary[0, 0], hidden[0, :4].mean(0), rtol=1e-6)
    np.testing.assert_allclose(summary[1, 0], hidden[1, :2].mean(0), rtol=1e-6)
