"""Held-out evaluation results: rates over all prompts or one shape and size."""

from __future__ import annotations

import numpy as np
import pytest

from training.evaluate import TextToImageResult, box_downscale, last_preview_scores
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


def test_box_downscale_averages_each_block_and_rounds() -> None:
    image = np.zeros((8, 8, 3), np.uint8)
    image[:4, :4] = 255
    image[4:, 4:, 0] = np.array([[0, 1, 0, 1]] * 4)  # mean 0.5: rounds to even, 0
    image[:4, 4:, 1] = np.array([[2, 1, 2, 1]] * 4)  # mean 1.5 -> 2
    small = box_downscale(image, 4)
    assert small.shape == (2, 2, 3) and small.dtype == np.uint8
    assert small[0, 0].tolist() == [255, 255, 255]
    assert small[1, 1, 0] == 0 and small[0, 1, 1] == 2 and small[1, 0].tolist() == [0, 0, 0]


def test_last_preview_scores_compare_the_last_preview_with_the_downscaled_image() -> None:
    scene = Scene("square", "red", "small", "top", ("white",))
    image = np.full((64, 64, 3), 100, np.uint8)
    previews = {3: np.zeros((16, 16, 3), np.uint8), 6: np.full((16, 16, 3), 110, np.uint8)}
    result = TextToImageResult([scene], [image], [_verdict(True)], [""], [previews])
    scores = last_preview_scores(result)
    assert scores.step == 6  # the last one, not the first
    assert scores.mean_abs_error == [10.0]
    assert scores.psnr == [pytest.approx(10 * np.log10(255**2 / 100))]
