"""Constants and small measuring helpers shared by both sections of the jobs benchmark."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]

Record = dict[str, Any]

SECTIONS = ("store", "http")
STORES = ("memory", "redis")
PROMPT = "a photograph of an astronaut riding a horse"


def log(message: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", file=sys.stderr, flush=True)


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


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


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)
