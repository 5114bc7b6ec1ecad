"""AUTOMATIC1111 sampler names -> the samplers we run.

A1111 clients name a sampler by its web UI name (`sampler_name`, or the older
`sampler_index`). The names come from the one table of sampler names
(`shared.sampler_names`: "DDIM", "DPM++ 2M", "DPM++ 2M Karras", "Euler a" and every
alias). A name we do not have (A1111 has dozens: "LMS", "DPM++ SDE"...) runs the
gateway's default sampler instead, and the response's info says so (the requested name is
listed as substituted): a client written for A1111 keeps working.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.sampler_names import ALIASES, SamplerName, canonical_sampler
from shared.sampler_names import SAMPLERS as CARDS


@dataclass(frozen=True)
class Sampler:
    name: str  # as A1111 names it (GET /sdapi/v1/samplers, the info's sampler_name)
    id: SamplerName  # ours
    aliases: tuple[str, ...] = ()


SAMPLERS: tuple[Sampler, ...] = tuple(
    Sampler(card.label, card.name, aliases=(card.name, *card.aliases)) for card in CARDS.values()
)
_BY_ID = {sampler.id: sampler for sampler in SAMPLERS}


@dataclass(frozen=True)
class SamplerChoice:
    requested: str | None  # what the request named (None: nothing)
    ran: Sampler
    substituted: bool  # the request named a sampler we do not have (`ran` ran instead)


def choose_sampler(requested: str | None, default: SamplerName) -> SamplerChoice:
    """The sampler that runs for an A1111 name (any accepted spelling, any case): ours of
    that name, else `default` (the gateway's)."""
    name = requested.strip() if requested else None
    if not name:
        return SamplerChoice(None, _BY_ID[default], substituted=False)
    if " ".join(name.split()).lower() in ALIASES:
        return SamplerChoice(name, _BY_ID[canonical_sampler(name)], substituted=False)
    return SamplerChoice(name, _BY_ID[default], substituted=True)
