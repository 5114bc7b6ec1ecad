"""What each API key holds at once, in places ("slots") of two pools: `run` (requests
that run a model, and unfinished jobs) and `stream` (open job event streams).

The gateway's ApiKeyGuard takes a slot for the duration of a request. `LocalKeySlots`
counts in this process; central's job store (central/jobs/) implements the same protocol
where every gateway replica counts (Redis), so a key's limit holds across replicas.
"""

from __future__ import annotations

import math
import secrets
from typing import Literal, Protocol

from shared.errors import TooManyRequests

Pool = Literal["run", "stream"]


def key_full(pool: Pool, limit: int) -> TooManyRequests:
    if pool == "stream":
        return TooManyRequests(f"this API key already has {limit} event streams open")
    return TooManyRequests(f"this API key already has {limit} requests or jobs in flight")


class KeySlots(Protocol):
    async def acquire_slot(self, pool: Pool, slot: str, limit: int) -> str:
        """A token for one of the key's `limit` places in `pool`, or TooManyRequests."""
        ...

    async def release_slot(self, pool: Pool, slot: str, token: str) -> None: ...


class LocalKeySlots:
    """Slots counted in this process."""

    def __init__(self) -> None:
        self.held: dict[tuple[Pool, str], dict[str, float]] = {}

    def tokens(self, pool: Pool, slot: str) -> dict[str, float]:
        """The key's tokens in `pool` (token -> when it lapses; inf: when released)."""
        return self.held.setdefault((pool, slot), {})

    def take(self, pool: Pool, slot: str, limit: int, token: str) -> None:
        tokens = self.tokens(pool, slot)
        if len(tokens) >= limit:
            raise key_full(pool, limit)
        tokens[token] = math.inf  # one process: nothing else can die holding it

    async def acquire_slot(self, pool: Pool, slot: str, limit: int) -> str:
        token = secrets.token_hex(8)
        self.take(pool, slot, limit, token)
        return token

    async def release_slot(self, pool: Pool, slot: str, token: str) -> None:
        tokens = self.held.get((pool, slot))
        if tokens is not None:
            tokens.pop(token, None)
            if not tokens:
                del self.held[(pool, slot)]
