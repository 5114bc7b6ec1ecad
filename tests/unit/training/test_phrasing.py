"""Captions worded as people word them, with held-out phrasings never used in training."""

from __future__ import annotations

import numpy as np

from shared.tokenizer import END_TOKEN, PromptTokenizer, find_clip_vocab
from training.phrasing import (
    TEMPLATES,
    held_out_phrasings,
    paraphrase,
    place_nouns,
    templates,
    training_paraphrase,
)
from training.recipe import TEXT_POSITIONS_READ
from training.scenes import PLACES, Scene, random_scene


def test_some_phrasings_are_held_out_and_the_rest_train() -> None:
    held_out, train = templates("held_out"), templates("train")
    assert held_out and len(train) > 2 * len(held_out)
    assert sorted(held_out + train) == sorted(TEMPLATES)


def test_held_out_prompts_are_in_held_out_phrasings_of_held_out_scenes() -> None:
    phrased = held_out_phrasings(20)
    assert {p.template for p in phrased} == set(templates("held_out"))
    assert all(p.scene.split == "held_out" for p in phrased)
    assert phrased == held_out_phrasings(20)  # fixed: the same prompts on every machine


def test_a_paraphrase_names_the_colour_shape_and_background() -> None:
    rng = np.random.default_rng(0)
    scene = Scene("triangle", "purple", "large", "bottom right", ("yellow", "black"))
    for name in TEMPLATES:
        text = paraphrase(scene, rng, name).lower()
        for word in ("purple", "triangle", "yellow", "black", "right"):
            assert word in text, (name, text)
        assert "bottom" in text or "lower" in text, (name, text)


def test_every_place_has_its_own_words() -> None:
    nouns = {place: set(place_nouns(place)) for place in PLACES}
    for place, words in nouns.items():
        for other, other_words in nouns.items():
            assert other == place or not words & other_words


def test_training_paraphrases_fit_the_positions_the_text_encoder_reads() -> None:
    tokenizer = PromptTokenizer(find_clip_vocab())
    rng = np.random.default_rng(1)
    longest = max(
        tokenizer.tokenize(training_paraphrase(random_scene(rng), rng)).tokens.index(END_TOKEN)
        for _ in range(2000)
    )
    assert longest < TEXT_POSITIONS_READ
