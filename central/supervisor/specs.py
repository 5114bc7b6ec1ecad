"""What the supervisor runs, and the rules it judges the children's exits by.

A :class:`ChildSpec` names one process; a :class:`RestartPolicy` says how fast a child
is restarted and when its exits are fatal (see :mod:`central.supervisor`).
"""

from __future__ import annotations

import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

EX_CONFIG = 78  # sysexits.h: "configuration error"; fatal at once


@dataclass(frozen=True)
class ChildSpec:
    """One process to run.

    ``env`` is the child's whole environment (``None``: inherit the supervisor's).
    ``ready_url`` is polled until it answers 200 (``None``: ready once started).
    ``stop_after`` names children that must have exited before this one is sent SIGTERM
    on a stop: a store the others still write to on their way out.
    """

    name: str
    argv: Sequence[str]
    env: Mapping[str, str] | None = None
    ready_url: str | None = None
    cwd: str | None = None
    stop_after: Sequence[str] = ()


@dataclass(frozen=True)
class RestartPolicy:
    """When and how fast children are restarted; see :mod:`central.supervisor`."""

    initial_backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    healthy_after_s: float = 60.0
    early_exit_s: float = 2.0
    fatal_early_exits: int = 3


def describe_exit(returncode: int) -> str:
    """Say how a process ended: "exited with code 1" or "was killed by SIGKILL (9)"."""
    if returncode < 0:
        signum = -returncode
        try:
            signame = signal.Signals(signum).name
        except ValueError:
            signame = f"signal {signum}"
        return f"was killed by {signame} ({signum})"
    return f"exited with code {returncode}"
