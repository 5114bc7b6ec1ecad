"""The semantic judge: right about rendered scenes, wrong-footed by the wrong picture."""

from __future__ import annotations

import numpy as np
import pytest

from training.judge import judge, largest_blob
from training.scenes import COLOURS, PLACES, SHAPES, SIZES, Scene, random_scene, render


def test_every_rendered_training_scene_passes_every_check():
    rng = np.random.default_rng(5)
    for _ in range(150):
        scene = random_scene(rng)
        verdict = judge(render(scene), scene)
        assert (verdict.colour, verdict.shape, verdict.place, verdict.size) == (
            True,
            True,
            True,
            True,
        ), scene


@pytest.mark.parametrize("drawn", SHAPES)
def test_the_shape_drawn_is_the_shape_seen(drawn):
    for asked in SHAPES:
        scene = Scene(asked, "green", "large", "center", ("white",))
        image = render(Scene(drawn, "green", "large", "center", ("white",)))
        assert judge(image, scene).shape == (asked == drawn)


def test_wrong_colour_wrong_place_wrong_size_are_caught():
    asked = Scene("circle", "red", "small", "top left", ("white",))
    assert not judge(render(Scene("circle", "blue", "small", "top left", ("white",))), asked).colour
    assert not judge(render(Scene("circle", "red", "small", "bottom", ("white",))), asked).place
    assert not judge(render(Scene("circle", "red", "large", "top left", ("white",))), asked).size


def test_noise_and_blank_images_fail():
    scene = Scene("square", "yellow", "large", "center", ("black",))
    blank = np.full((64, 64, 3), COLOURS["black"], np.uint8)
    assert not judge(blank, scene).colour
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert not judge(noise, scene).colour_and_shape


def test_largest_blob_keeps_one_connected_component():
    mask = np.zeros((10, 10), bool)
    mask[0:2, 0:2] = True  # 4 pixels
    mask[5:9, 5:9] = True  # 16 pixels
    blob = largest_blob(mask)
    assert blob.sum() == 16 and blob[6, 6] and not blob[0, 0]


def test_sizes_and_places_are_distinct():
    assert len(set(SIZES.values())) == len(SIZES) and len(set(PLACES)) == 9
