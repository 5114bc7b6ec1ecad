import pytest

from shared.sampler_names import (
    ALIASES,
    SAMPLER_NAMES,
    SAMPLERS,
    accepted_names,
    canonical_sampler,
)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # AUTOMATIC1111's labels
        ("DDIM", "ddim"),
        ("DPM++ 2M", "dpmpp_2m"),
        ("DPM++ 2M Karras", "dpmpp_2m_karras"),
        ("Euler a", "euler_ancestral"),
        # k-diffusion / ComfyUI, older A1111 and InvokeAI, Stability's API
        ("dpmpp_2m", "dpmpp_2m"),
        ("euler_ancestral", "euler_ancestral"),
        ("k_euler_a", "euler_ancestral"),
        ("K_EULER_ANCESTRAL", "euler_ancestral"),
        ("k_dpmpp_2m", "dpmpp_2m"),
        ("dpmpp_2m_k", "dpmpp_2m_karras"),
        # diffusers' scheduler classes (InferenceClient's `scheduler`)
        ("DPMSolverMultistepScheduler", "dpmpp_2m"),
        ("EulerAncestralDiscreteScheduler", "euler_ancestral"),
        ("DDIMScheduler", "ddim"),
        # any case, runs of spaces
        ("dpm++  2m   KARRAS", "dpmpp_2m_karras"),
        (" euler A ", "euler_ancestral"),
    ],
)
def test_known_names_map_to_their_sampler(name: str, expected: str) -> None:
    assert canonical_sampler(name) == expected


@pytest.mark.parametrize("name", ["", "k_lms", "DPM++ 2S a", "euler", 7, None, "x" * 10_000])
def test_unknown_names_are_refused_with_every_accepted_one(name: object) -> None:
    with pytest.raises(ValueError, match="unknown sampler") as caught:
        canonical_sampler(name)
    message = str(caught.value)
    assert all(repr(n) in message for n in accepted_names())
    assert len(message) < 1000  # a hostile name is not echoed in full


def test_one_table_every_alias_names_one_sampler() -> None:
    spellings = [a for card in SAMPLERS.values() for a in (card.name, *card.aliases)]
    keys = [" ".join(a.split()).lower() for a in spellings]
    assert len(set(keys)) == len(keys), "an alias names two samplers (or twice one)"
    assert set(ALIASES) == set(keys)
    assert list(SAMPLERS) == list(SAMPLER_NAMES) and SAMPLER_NAMES[0] == "ddim"
    assert accepted_names()[: len(SAMPLER_NAMES)] == list(SAMPLER_NAMES)
