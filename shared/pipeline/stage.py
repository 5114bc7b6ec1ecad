"""The one stage lifecycle that local (in-process) and remote (HTTP) stages implement.

The chain holds three `Stage`s and knows nothing of transports: it loads and warms them,
asks them whether they are ready and what they are, lets each refuse a request before
any work (`admit`), runs operations of their contract, and closes them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from shared.batching import ProgressCallback
from shared.pipeline.contract import Operation, StageContract
from shared.progress import PreviewCallback

Req = TypeVar("Req")
Res = TypeVar("Res")


@dataclass(frozen=True)
class Progress:
    """Where a streaming operation reports: `on_step(done, total)` after each step, and
    `on_preview(done, total, rgb)` every `preview_every` steps (0: no previews)."""

    on_step: ProgressCallback | None = None
    on_preview: PreviewCallback | None = None
    preview_every: int = 0


class Stage(Protocol):
    contract: StageContract
    location: str  # "local" or "remote"

    def load(self) -> None:
        """Build and load the models (blocking; nothing for a remote stage)."""

    def warm(self) -> None:
        """Trace every graph a request can hit (blocking; after every stage is loaded)."""

    async def ready(self) -> tuple[bool, str]:
        """Whether it can serve now, and a word on why not."""
        ...

    async def describe(self) -> dict[str, Any]:
        """What /v1/stages shows of it."""
        ...

    def admit(self) -> None:
        """Raise QueueFull when a call made now would be refused (before any other work)."""

    async def run(
        self, op: Operation[Req, Res], request: Req, progress: Progress | None = None
    ) -> Res:
        """Run one operation of the stage's contract."""
        ...

    async def close(self) -> None: ...


def load_all(stages: Iterable[Stage]) -> None:
    """Load every stage, then warm them all (blocking). Warm-ups come last because
    building a stage re-seeds TensorFlow, which would throw away the traced functions of
    stages warmed before it (a slow first request)."""
    stages = list(stages)
    for stage in stages:
        stage.load()
    for stage in stages:
        stage.warm()


async def readiness_of(stages: Mapping[str, Stage]) -> tuple[bool, dict[str, str]]:
    """Ready when every stage is; each stage's word on it."""
    results = await asyncio.gather(*(s.ready() for s in stages.values()))
    status = {
        name: f"{text} ({stage.location})"
        for (name, stage), (_ok, text) in zip(stages.items(), results, strict=True)
    }
    return all(ok for ok, _ in results), status


async def describe_all(stages: Mapping[str, Stage]) -> dict[str, Any]:
    """What /v1/stages shows: each stage's location and description."""
    described = await asyncio.gather(*(s.describe() for s in stages.values()))
    return {
        name: {"location": stage.location, **info}
        for (name, stage), info in zip(stages.items(), described, strict=True)
    }
