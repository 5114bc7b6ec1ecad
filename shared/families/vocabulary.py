"""Prompt words outside the vocabulary a family was trained on, as response warnings.

A family may declare the words its training captions used (`FamilySpec.vocabulary`); a
prompt with other words is drawn anyway (the model makes what it can of the words it
knows, often a plain canvas), and the response says which words it did not know. A
family that declares no vocabulary (sd-v1, sd-v2: trained on the open web) warns nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.families.base import FamilySpec

# Allowed in any prompt to a family with a vocabulary, whether its captions use them or not.
STOP_WORDS = frozenset({"a", "an", "the", "on", "in", "at", "of", "with", "and"})

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


@dataclass(frozen=True)
class PromptWarning:
    """Something the caller should know about an answered request (it is not an error)."""

    code: str  # prompt_out_of_domain, negative_prompt_out_of_domain
    message: str
    param: str  # the request field it is about
    words: tuple[str, ...]  # the words the family was not trained on, in prompt order


def unknown_words(text: str, vocabulary: frozenset[str]) -> tuple[str, ...]:
    """The text's words (lower-cased, each once, in order) outside vocabulary and STOP_WORDS."""
    seen: dict[str, None] = {}
    for word in _WORD.findall(text.lower()):
        if word not in vocabulary and word not in STOP_WORDS:
            seen.setdefault(word, None)
    return tuple(seen)


def prompt_warnings(
    spec: FamilySpec, prompt: str, negative_prompt: str | None = None
) -> list[PromptWarning]:
    """Warnings for a request's prompts: one per prompt with words the family never saw."""
    if spec.vocabulary is None:
        return []
    warnings = []
    for param, text in (("prompt", prompt), ("negative_prompt", negative_prompt)):
        words = unknown_words(text or "", spec.vocabulary)
        if not words:
            continue
        listed = ", ".join(repr(word) for word in words)
        if param == "prompt":
            message = (
                f"the {spec.name} model does not know {listed} (not in its training "
                f"captions): the image may not show them; try a prompt like "
                f"{spec.example_prompt!r}"
            )
        else:
            message = (
                f"the {spec.name} model does not know {listed} in the negative prompt "
                "(not in its training captions): those words steer nothing"
            )
        warnings.append(PromptWarning(f"{param}_out_of_domain", message, param, words))
    return warnings
