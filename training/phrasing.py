"""Scene captions worded the many ways people word them, with held-out phrasings.

`training.scenes` writes every caption in one grammar ("a small red circle at the top
left on a blue background"). A person asks for the same scene as "big blue circle in the
middle, white background" or "Red square against white." A phrasing here is a template:
an order of the caption's parts plus the form each part takes (where the place goes,
how the background is said). Every template fills its parts with synonyms (big/large,
little/small, centre/center/middle, upper/top, lower/bottom, corner phrasings), with or
without articles, in lower case, capitals or title case, with or without punctuation.

**Held-out phrasings**: one template in `HELD_OUT_ONE_IN` is never used for training,
decided by a hash of its name like the scenes' held-out combinations; every part form
and every word of a held-out template also occurs in some training template, so a
held-out phrasing is a new arrangement of known words, never a new word. `VOCABULARY`
is exactly the words the training templates can produce.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np

from training.scenes import COLOURS, PLACES, SHAPES, SIZES, Scene, held_out_scenes

Split = Literal["train", "held_out"]
HELD_OUT_ONE_IN = 5

SIZE_WORDS: dict[str, tuple[str, ...]] = {"small": ("small", "little"), "large": ("large", "big")}
# Each place as "where" words, without a preposition ("top left", "upper left corner").
_CORNER_ROWS = {"top": ("top", "upper"), "bottom": ("bottom", "lower")}
_CENTRE_WORDS = ("center", "centre", "middle")


def place_nouns(place: str) -> tuple[str, ...]:
    """Ways to name a place as a noun phrase, after "the" ("top left corner")."""
    if place == "center":
        return _CENTRE_WORDS
    words = place.split()
    if len(words) == 2:  # a corner
        row, col = words
        return tuple(
            f"{r}{joint}{col}{corner}"
            for r in _CORNER_ROWS[row]
            for joint in (" ", "-")
            for corner in ("", " corner")
        )
    (side,) = words
    if side in _CORNER_ROWS:  # "upper" alone names no place: "upper edge" does
        return (side, f"{side} edge", f"{_CORNER_ROWS[side][1]} edge")
    return (side, f"{side} side")


def place_phrase(place: str, rng: np.random.Generator) -> str:
    """The place with a preposition: "at the top left", "in the middle", "on the left side"."""
    noun = _pick(place_nouns(place), rng)
    if place == "center":
        preposition = _pick(("in the", "at the"), rng)
    elif place in ("left", "right"):
        preposition = _pick(("on the", "at the", "to the"), rng)
    else:
        preposition = _pick(("at the", "in the", "near the"), rng)
    return f"{preposition} {noun}"


def _article(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def _pick(options: tuple[str, ...], rng: np.random.Generator) -> str:
    return options[int(rng.integers(len(options)))]


@dataclass(frozen=True)
class Parts:
    """A scene's caption parts, each already worded."""

    subject: str  # "a big red square", "red square"
    place: str | None  # "at the top left" (None: not said; the scene is centred)
    place_noun: str | None  # "top left corner"
    colours: str  # the background's colours: "white", "red and blue"


# A template: (parts, rng) -> caption. Named so that the split is a hash of the name.
Template = Callable[[Parts, np.random.Generator], str]


def _background(parts: Parts, rng: np.random.Generator) -> str:
    """The background with a preposition: "on a white background", "against white"."""
    forms = (
        f"on {_article(parts.colours)} background",
        f"with {_article(parts.colours)} background",
        f"against {_article(parts.colours)} background",
        f"against {parts.colours}",
        f"on {parts.colours}",
    )
    return _pick(forms, rng)


def _bare_background(parts: Parts, rng: np.random.Generator) -> str:
    """The background without a preposition: "white background", "background: white"."""
    forms = (f"{parts.colours} background", f"background: {parts.colours}")
    return _pick(forms, rng)


def _with_place(text: str, parts: Parts) -> str:
    return f"{text} {parts.place}" if parts.place else text


TEMPLATES: dict[str, Template] = {
    # The training grammar's own order, with any of the background's forms.
    "subject place background": lambda p, r: f"{_with_place(p.subject, p)} {_background(p, r)}",
    "subject background place": lambda p, r: _with_place(f"{p.subject} {_background(p, r)}", p),
    "subject place, bare background": (
        lambda p, r: f"{_with_place(p.subject, p)}, {_bare_background(p, r)}"
    ),
    "subject, bare background, place noun": (
        lambda p, r: (
            f"{p.subject}, {_bare_background(p, r)}" + (f", {p.place_noun}" if p.place_noun else "")
        )
    ),
    "bare background, subject place": (
        lambda p, r: f"{_bare_background(p, r)}, {_with_place(p.subject, p)}"
    ),
    "background with subject place": (
        lambda p, r: f"{_article(p.colours)} background with {_with_place(p.subject, p)}"
    ),
    "subject place of background": (
        lambda p, r: (
            f"{_with_place(p.subject, p)} of {_article(p.colours)} background"
            if p.place
            else f"{p.subject} on {_article(p.colours)} background"
        )
    ),
    "picture of subject place background": (
        lambda p, r: (
            f"{_pick(('a picture of', 'an image of', 'a drawing of'), r)} "
            f"{_with_place(p.subject, p)} {_background(p, r)}"
        )
    ),
    "subject background, place noun": (
        lambda p, r: (
            f"{p.subject} {_background(p, r)}" + (f", {p.place_noun}" if p.place_noun else "")
        )
    ),
    "place noun: subject, bare background": (
        lambda p, r: (
            (f"{p.place_noun}: " if p.place_noun else "") + f"{p.subject}, {_bare_background(p, r)}"
        )
    ),
}


def template_split(name: str) -> Split:
    digest = hashlib.sha256(f"phrasing|{name}".encode()).digest()
    return "held_out" if int.from_bytes(digest[:4], "big") % HELD_OUT_ONE_IN == 0 else "train"


def templates(split: Split) -> list[str]:
    return sorted(name for name in TEMPLATES if template_split(name) == split)


def _subject(scene: Scene, rng: np.random.Generator, *, with_size: bool, article: bool) -> str:
    words = [_pick(SIZE_WORDS[scene.size], rng)] if with_size else []
    colour = scene.colour
    if rng.random() < 0.1:
        colour += _pick(("-coloured", "-colored", " coloured", " colored"), rng)
    words += [colour, scene.shape]
    if article:
        return _article(" ".join(words))
    return " ".join(words)


def _surface(text: str, rng: np.random.Generator) -> str:
    """Capitals and closing punctuation as people type them; tokens are lower-cased."""
    case = rng.random()
    if case < 0.2:
        text = text[:1].upper() + text[1:]
    elif case < 0.3:
        text = text.title()
    elif case < 0.35:
        text = text.upper()
    ending = rng.random()
    if ending < 0.2:
        text += "."
    elif ending < 0.25:
        text += "!"
    return text


def paraphrase(
    scene: Scene,
    rng: np.random.Generator,
    template: str,
    *,
    with_size: bool = True,
    with_place: bool = True,
) -> str:
    """`scene`'s caption in `template`'s phrasing, its words and surface drawn from rng."""
    article = rng.random() >= 0.25
    with_place = with_place or scene.place != "center"
    place_noun = _pick(place_nouns(scene.place), rng) if with_place else None
    if place_noun and rng.random() < 0.5 and not place_noun.startswith(_CENTRE_WORDS):
        place_noun = f"the {place_noun}"
    parts = Parts(
        subject=_subject(scene, rng, with_size=with_size, article=article),
        place=place_phrase(scene.place, rng) if with_place else None,
        place_noun=place_noun,
        colours=" and ".join(scene.background),
    )
    return _surface(TEMPLATES[template](parts, rng), rng)


# Share of paraphrased training captions that leave the size out, and of centred
# scenes' that leave the place out (as training.scenes does for its one grammar).
_OMIT_SIZE = 0.3
_OMIT_CENTRE = 0.5


def training_paraphrase(scene: Scene, rng: np.random.Generator) -> str:
    """A training caption for `scene` in a training template's phrasing."""
    names = templates("train")
    return paraphrase(
        scene,
        rng,
        names[int(rng.integers(len(names)))],
        with_size=rng.random() >= _OMIT_SIZE,
        with_place=scene.place != "center" or rng.random() >= _OMIT_CENTRE,
    )


@dataclass(frozen=True)
class PhrasedPrompt:
    scene: Scene
    template: str
    prompt: str


def held_out_phrasings(count: int, seed: int = 0) -> list[PhrasedPrompt]:
    """Held-out scenes (plain backgrounds) captioned in held-out templates, in turn."""
    rng = np.random.default_rng([seed, 27])
    names = templates("held_out")
    return [
        PhrasedPrompt(scene, name, paraphrase(scene, rng, name))
        for scene, name in zip(held_out_scenes(count, seed), itertools.cycle(names), strict=False)
    ]


_WORD = re.compile(r"[a-z0-9]+")


def _every_wording(split: Split) -> Iterator[str]:
    """Captions covering every word `split`'s templates can produce (each choice seen)."""
    rng = np.random.default_rng(0)
    for name, shape, colour, size, place in itertools.product(
        templates(split), SHAPES, COLOURS, SIZES, PLACES
    ):
        backgrounds = [c for c in COLOURS if c != colour][:2]
        scene = Scene(shape, colour, size, place, tuple(backgrounds[:1]))
        two_tone = Scene(shape, colour, size, place, tuple(backgrounds))
        for _ in range(12):
            yield paraphrase(scene, rng, name).lower()
            yield paraphrase(two_tone, rng, name, with_place=False).lower()


def words_of(split: Split) -> frozenset[str]:
    """Every word `split`'s templates produce, lower-cased (with the training grammar's)."""
    words: set[str] = set()
    for caption in _every_wording(split):
        words.update(_WORD.findall(caption))
    for scene in (
        Scene("circle", "red", size, place, ("white",)) for size in SIZES for place in PLACES
    ):
        words.update(_WORD.findall(scene.caption()))
    return frozenset(words)
