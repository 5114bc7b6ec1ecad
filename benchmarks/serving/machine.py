"""The machine the benchmark runs on, without importing TensorFlow."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform

import numpy as np

from benchmarks.harness import Record, load_average
from benchmarks.host import cpu_model_and_flags, memory_gib
from benchmarks.serving.common import mem_available_gib


def package_version(*names: str) -> str | None:
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def machine_description() -> Record:
    """The machine, without importing TensorFlow (this process only sends requests)."""
    cpu_model, _ = cpu_model_and_flags()
    return {
        "cpu_model": cpu_model,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gib": memory_gib(),
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
