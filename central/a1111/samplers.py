"""AUTOMATIC1111 sampler names -> the samplers we run: the one table to extend.

A1111 clients name a sampler by its web UI name (`sampler_name`, or the older
`sampler_index`). Each entry here says which of our samplers runs for that name. Until
the gateway has more samplers than DDIM (the faster-sampling issue adds DPM++ 2M, its
Karras variant and Euler a, with a per-request `sampler` field), the table knows only
DDIM: any other name runs DDIM, and the response's info says so (the requested name is
listed as substituted). When samplers land, add their A1111 names here and pass `ran.id`
on in the job body (central/a1111/schemas.py, `job_fields`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sampler:
    name: str  # as A1111 names it (GET /sdapi/v1/samplers, the info's sampler_name)
    id: str  # ours
    aliases: tuple[str, ...] = ()


SAMPLERS: tuple[Sampler, ...] = (Sampler("DDIM", "ddim", aliases=("ddim",)),)
DEFAULT = SAMPLERS[0]

_BY_NAME = {
    spelling.lower(): sampler
    for sampler in SAMPLERS
    for spelling in (sampler.name, *sampler.aliases)
}


@dataclass(frozen=True)
class SamplerChoice:
    requested: str | None  # what the request named (None: nothing)
    ran: Sampler

    @property
    def substituted(self) -> bool:
        """Whether the request named a sampler we do not have (and `ran` ran instead)."""
        return self.requested is not None and self.requested.lower() not in _BY_NAME


def choose_sampler(requested: str | None) -> SamplerChoice:
    """The sampler that runs for an A1111 name (case-insensitive; aliases too): ours of
    that name, else the default."""
    name = requested.strip() if requested else None
    return SamplerChoice(name or None, _BY_NAME.get((name or "").lower(), DEFAULT))
