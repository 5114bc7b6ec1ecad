"""The samplers a request can ask for, and the one table of names they go by.

Each sampler has one canonical id (what responses, job records and /v1/info say) and
the names people know it by from other Stable Diffusion front ends: AUTOMATIC1111's
labels ("DPM++ 2M Karras", "Euler a"), k-diffusion / ComfyUI function ids
("dpmpp_2m", "euler_ancestral"), the older A1111, InvokeAI and Stability API ids
("k_euler_a", "k_dpmpp_2m", "dpmpp_2m_k", "K_EULER_ANCESTRAL") and diffusers' scheduler
classes ("DPMSolverMultistepScheduler", the `scheduler` that
`huggingface_hub.InferenceClient.text_to_image` sends). Names are matched without regard
to case or runs of spaces. The math is in `shared.noise_schedule` (DDIM) and
`shared.k_diffusion` (the others).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

SamplerName = Literal["ddim", "dpmpp_2m", "dpmpp_2m_karras", "euler_ancestral"]
SAMPLER_NAMES: tuple[SamplerName, ...] = get_args(SamplerName)
DEFAULT_SAMPLER: SamplerName = "ddim"


@dataclass(frozen=True)
class SamplerCard:
    """One sampler as /v1/info lists it."""

    name: SamplerName
    label: str  # AUTOMATIC1111's name for it, what a picker shows
    description: str
    aliases: tuple[str, ...]  # every other name accepted for it


SAMPLERS: dict[SamplerName, SamplerCard] = {
    card.name: card
    for card in (
        SamplerCard(
            "ddim",
            "DDIM",
            "DDIM (eta 0), deterministic, exactly as keras-cv's generate_image.",
            ("DDIMScheduler", "k_ddim"),
        ),
        SamplerCard(
            "dpmpp_2m",
            "DPM++ 2M",
            "DPM-Solver++ (2M), second-order multistep, deterministic; k-diffusion's "
            "sample_dpmpp_2m on its default schedule.",
            ("DPM++ 2M", "k_dpmpp_2m", "dpmpp2m", "DPMSolverMultistepScheduler"),
        ),
        SamplerCard(
            "dpmpp_2m_karras",
            "DPM++ 2M Karras",
            "DPM-Solver++ (2M) on Karras et al.'s noise levels (rho 7), deterministic.",
            ("DPM++ 2M Karras", "k_dpmpp_2m_karras", "dpmpp_2m_k", "dpmpp2m_karras"),
        ),
        SamplerCard(
            "euler_ancestral",
            "Euler a",
            "Euler ancestral (eta 1): fresh noise every step, drawn from the image's seed, "
            "so still reproducible.",
            (
                "Euler a",
                "euler_a",
                "k_euler_a",
                "k_euler_ancestral",
                "euler ancestral",
                "EulerAncestralDiscreteScheduler",
            ),
        ),
    )
}


def _key(name: str) -> str:
    return " ".join(name.split()).lower()


# Every accepted spelling (normalised) -> its sampler.
ALIASES: dict[str, SamplerName] = {
    _key(alias): card.name for card in SAMPLERS.values() for alias in (card.name, *card.aliases)
}


def accepted_names() -> list[str]:
    """Every name a request may use (one spelling of each, case aside), canonical ids
    first."""
    names: dict[str, str] = {}
    for name in [*SAMPLER_NAMES, *(a for card in SAMPLERS.values() for a in card.aliases)]:
        names.setdefault(_key(name), name)
    return list(names.values())


def canonical_sampler(name: object) -> SamplerName:
    """The canonical id of `name` (any accepted spelling, any case); ValueError naming
    the accepted ones otherwise."""
    if isinstance(name, str) and _key(name) in ALIASES:
        return ALIASES[_key(name)]
    shown = repr(name)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    accepted = ", ".join(repr(n) for n in accepted_names())
    raise ValueError(f"unknown sampler {shown}; accepted (any case): {accepted}")
