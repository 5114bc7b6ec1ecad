"""The measurements each serving section takes, as typed records.

The sections build these while measuring and store `as_json(record)` in serving.json, so
the JSON keeps the same keys in the same order; the report (and `--render-only`) reads
that JSON back. Latency statistics stay `stats_ms` dicts (`{"n": 0}` when empty).
"""

from __future__ import annotations

import dataclasses
from typing import Any

# A response's per-stage `timings` (stage -> queue_ms / compute_ms / transfer_ms ...).
Timings = dict[str, dict[str, float]]


def as_json(record: Any) -> dict[str, Any]:
    """A record as the dict serving.json stores (field order kept)."""
    return dataclasses.asdict(record)


# --------------------------------------------------------------------------- topologies


@dataclasses.dataclass
class TopologyRequest:
    """One request of the sequential rounds through one topology's gateway."""

    topology: str
    round: int
    warmup: bool
    e2e_ms: float
    timings: Timings
    digest: str  # of the response's PNGs: every topology must return the same bytes
    load_1m: float


# --------------------------------------------------------------------------- concurrency


@dataclasses.dataclass
class LoopRequest:
    """One request of a closed-loop client (seconds since the level started)."""

    client: int
    start: float
    end: float
    status: int | str  # HTTP status, "timeout" or the httpx error's name
    images: int
    timings: Timings


@dataclasses.dataclass
class ConcurrencyLevel:
    """One level of closed-loop clients against one mode (batching on or off)."""

    clients: int
    warmup_s: float
    window_s: float
    completed_in_window: int
    images_per_s: float
    latency: dict[str, Any]
    diffusion_queue_ms_median: float | None
    diffusion_compute_ms_median: float | None
    errors: dict[str, int]
    requests_started: int
    # Filled in after the loop: CPU cores per process, rows per model call per stage,
    # the load before the level and how long the diffusion service took to drain.
    cores_used: dict[str, float | None] = dataclasses.field(default_factory=dict)
    batching: dict[str, Any] = dataclasses.field(default_factory=dict)
    load_1m_before: float | None = None
    idle_wait_s: float | None = None


# --------------------------------------------------------------------------- overload


@dataclasses.dataclass
class OverloadRequest:
    """One request of the overload closed loop (run to its answer, never cancelled)."""

    status: int | str  # 200, "503 <error type>", "timeout", an httpx error's name, ...
    start_s: float
    seconds: float
    detail: str


@dataclasses.dataclass
class OverloadPhase:
    """One phase (moderate load, overload) of the overload section."""

    clients: int
    duration_s: float
    requests: int
    status_counts: dict[str, int]
    refused_by: dict[str, int]  # which service's queue refused, from the 503's message
    ok_latency: dict[str, Any]
    refused_latency: dict[str, Any]
    ok_images_per_s: float
    # Anything that was neither 200 nor 503 (the first 20).
    other_outcomes: list[dict[str, Any]]
    all_200_or_503: bool
    load_1m: float | None = None
    cores_used: dict[str, float | None] = dataclasses.field(default_factory=dict)


# --------------------------------------------------------------------------- wire


@dataclasses.dataclass
class WireHop:
    """Bytes of one body between central and a stage, in each encoding."""

    hop: str
    tensors: dict[str, list[int]]
    npz_fp32: int
    npz_fp16: int
    b64_json_fp32: int
    json_lists: int
    raw_fp32: int


@dataclasses.dataclass
class CodecTimes:
    """Encode and decode milliseconds (best of 5) of one body."""

    npz_encode_ms: float
    npz_decode_checked_ms: float
    b64_json_encode_ms: float
    b64_json_decode_ms: float
