"""Held-out evaluation results: rates over all prompts or one shape and size."""

from __future__ import annotations

import numpy as np
import pytest

from training.evaluate import TextToImageResult
from training.judge import Verdict
from training.scenes import Scene


def _verdict(shape_right: bool) -> Verdict:
    return Verdict(True, shape_right, True, True, True, None, 0.0, 1)


def test_rate_over_every_prompt_or_one_shape_and_size():
    scenes = [
        Scene("square", "red", "small", "top", ("white",)),
        Scene("square", "red", "large", "top", ("white",)),
        Scene("circle", "red", "small", "top", ("white",)),
        Scene("square", "blue", "small", "left", ("white",)),
    ]
    verdicts = [_verdict(False), _verdict(True), _verdict(True), _verdict(True)]
    result = TextToImageResult(scenes, [np.zeros((1, 1, 3))] * 4, verdicts, [""] * 4)
    assert result.rate("shape") == 0.75
    assert result.rate("shape", "square") == pytest.approx(2 / 3)
    assert result.rate("shape", "square", "small") == 0.5
    assert result.rate("shape", size="large") == 1.0
    assert result.rate("colour", "square", "small") == 1.0
