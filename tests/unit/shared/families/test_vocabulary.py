"""Prompt words outside a family's training vocabulary become warnings."""

from __future__ import annotations

import itertools

from shared.families import get_family
from shared.families.vocabulary import STOP_WORDS, prompt_warnings, unknown_words
from training.scenes import COLOURS, PLACES, SHAPES, SIZES, Scene

TINY = get_family("tiny").spec


def test_tiny_declares_exactly_the_words_of_its_training_captions() -> None:
    words: set[str] = set()
    colours = list(COLOURS)
    for shape, colour, size, place in itertools.product(SHAPES, colours, SIZES, PLACES):
        scene = Scene(shape, colour, size, place, background=(colours[0], colours[1]))
        for with_size, with_place in itertools.product((True, False), repeat=2):
            words.update(scene.caption(with_size=with_size, with_place=with_place).split())
    assert TINY.vocabulary is not None
    assert set(TINY.vocabulary) == words - STOP_WORDS
    assert unknown_words(TINY.example_prompt, TINY.vocabulary) == ()


def test_an_in_domain_prompt_warns_nothing() -> None:
    prompt = "A small Red circle, at the top left; on a blue and white background."
    assert prompt_warnings(TINY, prompt, "a green square") == []


def test_unknown_words_are_named_once_each_in_order() -> None:
    (warning,) = prompt_warnings(TINY, "a photo of a cat, a cat on a red background")
    assert warning.code == "prompt_out_of_domain" and warning.param == "prompt"
    assert warning.words == ("photo", "cat")
    assert "'photo', 'cat'" in warning.message and TINY.example_prompt in warning.message


def test_the_negative_prompt_is_checked_on_its_own() -> None:
    prompt, negative = prompt_warnings(TINY, "a dog", "blurry, a red square")
    assert (prompt.param, prompt.words) == ("prompt", ("dog",))
    assert negative.code == "negative_prompt_out_of_domain"
    assert (negative.param, negative.words) == ("negative_prompt", ("blurry",))


def test_a_family_without_a_vocabulary_warns_nothing() -> None:
    spec = get_family("sd-v1").spec
    assert spec.vocabulary is None
    assert prompt_warnings(spec, "a photo of a cat", "blurry") == []
