"""Prompt words outside a family's training vocabulary become warnings."""

from __future__ import annotations

from shared.families import get_family
from shared.families.vocabulary import STOP_WORDS, prompt_warnings, unknown_words
from training.phrasing import held_out_phrasings, words_of

TINY = get_family("tiny").spec


def test_tiny_declares_exactly_the_words_of_its_training_captions() -> None:
    """Every word a training caption can have (the scenes' grammar and the training
    phrasings) is known, and no other: a word the model never saw is always flagged."""
    assert TINY.vocabulary is not None
    assert set(TINY.vocabulary) == words_of("train") - STOP_WORDS
    assert unknown_words(TINY.example_prompt, TINY.vocabulary) == ()


def test_held_out_phrasings_use_only_known_words() -> None:
    assert TINY.vocabulary is not None
    for phrased in held_out_phrasings(200):
        assert prompt_warnings(TINY, phrased.prompt) == [], phrased.prompt


def test_the_issues_wordings_warn_nothing() -> None:
    for prompt in (
        "a large red square in the middle of a white background",
        "a big blue circle in the center, white background",
        "Red square against white.",
        "little green triangle, background: black, upper left corner",
    ):
        assert prompt_warnings(TINY, prompt) == [], prompt


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
