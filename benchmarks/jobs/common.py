"""Constants and small measuring helpers shared by both sections of the jobs benchmark."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from benchmarks.harness import Record

SECTIONS = ("store", "http")
STORES = ("memory", "redis")
PROMPT = "a photograph of an astronaut riding a horse"


def stats_ms(samples_s: Sequence[float], digits: int = 3) -> Record:
    """n, median, p5/p95, min/max and mean of seconds, in milliseconds (`digits` decimals:
    an in-process event is delivered in tens of microseconds)."""
    if not samples_s:
        return {"n": 0}
    ms = np.asarray(samples_s, dtype=np.float64) * 1000.0

    def r(x: float) -> float:
        return round(float(x), digits)

    return {
        "n": len(ms),
        "median_ms": r(np.median(ms)),
        "p5_ms": r(np.percentile(ms, 5)),
        "p95_ms": r(np.percentile(ms, 95)),
        "min_ms": r(ms.min()),
        "max_ms": r(ms.max()),
        "mean_ms": r(ms.mean()),
    }


def median(values: Sequence[float]) -> float | None:
    return float(np.median(values)) if values else None
