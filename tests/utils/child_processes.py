"""Helpers for tests that run child processes under central.supervisor."""

from __future__ import annotations

import asyncio
import io
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable

from central.supervisor.specs import RestartPolicy

# Restarts fast enough for a test; "healthy" never reached, so back-off keeps doubling.
FAST = RestartPolicy(initial_backoff_s=0.1, max_backoff_s=0.4, healthy_after_s=100.0)


def py(code: str, *args: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code), *args]


async def until(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())  # type: ignore[arg-type]


def lines(out: io.StringIO) -> list[str]:
    return out.getvalue().splitlines()
