"""The machine the benchmark runs on, without importing TensorFlow."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
from pathlib import Path

import numpy as np

from benchmarks.serving.common import Record, load_average, mem_available_gib


def package_version(*names: str) -> str | None:
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def machine_description() -> Record:
    """The machine, without importing TensorFlow (this process only sends requests)."""
    cpu_model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return {
        "cpu_model": cpu_model,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gib": memory_gib,
        "mem_available_gib_at_start": mem_available_gib(),
        "load_average_at_start": load_average(),
        "python": platform.python_version(),
        "tensorflow": package_version("tensorflow-cpu", "tensorflow"),
        "keras": package_version("keras"),
        "keras_cv": package_version("keras-cv"),
        "numpy": np.__version__,
        "httpx": package_version("httpx"),
        "uvicorn": package_version("uvicorn"),
        "os": platform.platform(),
    }
