"""What is measured (families, sizes, precisions, the request) and the timing helpers."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks.harness import Record

# Family -> (width, height) measured.
FAMILY_SIZES: dict[str, tuple[int, int]] = {"sd-v1": (128, 128), "tiny": (64, 64)}
DEFAULT_REPEATS: dict[str, int] = {"sd-v1": 7, "tiny": 30}
QUICK_REPEATS: dict[str, int] = {"sd-v1": 3, "tiny": 10}
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
PROMPT = "a photograph of an astronaut riding a horse"
NEGATIVE_PROMPT = ""
GUIDANCE_SCALE = 7.5
STEPS = 25  # the schedule the measured step belongs to (its timestep is the first one)


# --------------------------------------------------------------------------- timing


def summarize(samples_s: list[float]) -> Record:
    ms = np.asarray(samples_s, dtype=np.float64) * 1000.0
    return {
        "n": len(ms),
        "median_ms": round(float(np.median(ms)), 3),
        "p10_ms": round(float(np.percentile(ms, 10)), 3),
        "p90_ms": round(float(np.percentile(ms, 90)), 3),
        "min_ms": round(float(ms.min()), 3),
        "max_ms": round(float(ms.max()), 3),
        "mean_ms": round(float(ms.mean()), 3),
        "samples_ms": [round(float(x), 3) for x in ms],
    }


def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()  # every runner returns numpy, so the work is done when this returns
    return time.perf_counter() - started


def measure(fn: Callable[[], Any], *, warmup: int, repeats: int) -> tuple[float, Record]:
    """First call (trace/compile) in seconds, then stats over `repeats` after warm-up."""
    first = timed(fn)
    for _ in range(warmup):
        fn()
    return first, summarize([timed(fn) for _ in range(repeats)])
