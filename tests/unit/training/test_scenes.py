"""The synthetic scene generator: deterministic, captioned, with a real held-out split."""

from __future__ import annotations

import numpy as np
import pytest

from training.scenes import (
    COLOURS,
    HELD_OUT_ONE_IN,
    IMAGE_SIZE,
    PLACES,
    SHAPES,
    SIZES,
    Scene,
    held_out_count,
    held_out_scenes,
    random_scene,
    render,
    shape_coverage,
    training_caption,
)


def test_same_seed_same_scenes_and_pixels():
    a = random_scene(np.random.default_rng(3))
    b = random_scene(np.random.default_rng(3))
    assert a == b
    assert np.array_equal(render(a), render(b))


def test_training_scenes_never_have_a_held_out_combination():
    rng = np.random.default_rng(0)
    train = {random_scene(rng).combination for _ in range(3000)}
    held_out = {s.combination for s in held_out_scenes(60, plain_background=False)}
    assert held_out and not train & held_out
    # About one combination in ten is held out, so training still sees every attribute.
    assert {c[0] for c in train} == set(SHAPES) and {c[1] for c in train} == set(COLOURS)


def test_held_out_prompts_are_captions_training_never_uses():
    rng = np.random.default_rng(1)
    captions = set()
    for _ in range(5000):
        captions.add(training_caption(random_scene(rng), rng))
    for scene in held_out_scenes(40):
        assert scene.caption() not in captions


def test_captions_name_every_attribute_and_may_leave_size_and_place_out():
    scene = Scene("circle", "red", "small", "top left", ("blue",))
    assert scene.caption() == "a small red circle at the top left on a blue background"
    assert scene.caption(with_size=False, with_place=False) == "a red circle on a blue background"
    two_tone = Scene("square", "red", "large", "center", ("white", "black"))
    assert two_tone.caption().endswith("in the center on a white and black background")


@pytest.mark.parametrize("place", PLACES)
def test_the_shape_is_drawn_in_its_place_and_colour(place):
    image = render(Scene("square", "red", "small", place, ("white",)))
    assert image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and image.dtype == np.uint8
    red = np.all(image == COLOURS["red"], axis=-1)
    ys, xs = np.nonzero(red)
    row, col = divmod(PLACES.index(place), 3)
    assert int(ys.mean() // (IMAGE_SIZE / 3)) == row
    assert int(xs.mean() // (IMAGE_SIZE / 3)) == col
    assert red.sum() == pytest.approx(16 * 16, rel=0.15)


def test_large_shapes_stay_inside_the_image():
    image = render(Scene("circle", "blue", "large", "bottom right", ("white",)))
    blue = np.all(image == COLOURS["blue"], axis=-1)
    assert blue.sum() > 400
    assert not blue[-1].any() and not blue[:, -1].any()


def test_two_tone_backgrounds_split_in_halves():
    scene = Scene("circle", "red", "small", "center", ("white", "black"), vertical_split=True)
    image = render(scene)
    assert tuple(image[0, 0]) == COLOURS["white"] and tuple(image[0, -1]) == COLOURS["black"]


@pytest.mark.parametrize("shape", SHAPES)
def test_shape_coverage_is_where_the_shape_is_drawn(shape):
    scene = Scene(shape, "red", "large", "top left", ("white",))
    coverage = shape_coverage(scene)
    assert coverage.shape == (IMAGE_SIZE, IMAGE_SIZE) and coverage.dtype == np.float32
    red = np.all(render(scene) == COLOURS["red"], axis=-1)
    # Fully covered pixels are drawn in the shape's colour, and only those.
    np.testing.assert_array_equal(coverage == 1.0, red)
    area = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}[shape] * 28**2
    assert coverage.sum() == pytest.approx(area, rel=0.1)


def test_training_captions_leave_the_place_out_only_for_centred_shapes():
    rng = np.random.default_rng(2)
    without_place = dict.fromkeys(PLACES, 0)
    without_size = 0
    for _ in range(4000):
        scene = random_scene(rng)
        caption = training_caption(scene, rng)
        # Places read "at the ...", "on the ..." or "in the ..."; backgrounds "on a ...".
        without_place[scene.place] += not any(p in caption for p in ("at the", "on the", "in the"))
        without_size += f" {scene.size} " not in caption
    assert all(count == 0 for place, count in without_place.items() if place != "center")
    centred = without_place["center"] / (4000 / len(PLACES))
    assert 0.35 < centred < 0.65, centred  # about half of the centred scenes
    assert 0.25 < without_size / 4000 < 0.35


def test_held_out_count_is_every_held_out_prompt():
    count = held_out_count()
    scenes = held_out_scenes(count, seed=5)
    assert len({s.combination for s in scenes}) == count
    assert all(s.split == "held_out" and len(s.background) == 1 for s in scenes)
    # Two-tone backgrounds add combinations; about one in HELD_OUT_ONE_IN of all is held out.
    every = held_out_count(plain_background=False)
    combinations = len(SHAPES) * len(SIZES) * len(PLACES) * len(COLOURS) * 7 * (1 + 6)
    assert count < every and every == pytest.approx(combinations / HELD_OUT_ONE_IN, rel=0.1)
