"""The machine the benchmark runs on, without importing TensorFlow."""

from __future__ import annotations

import platform

import numpy as np

from benchmarks.harness import Record, load_average
from benchmarks.host import cpu_and_memory, package_version
from benchmarks.serving.common import mem_available_gib


def machine_description() -> Record:
    """The machine, without importing TensorFlow (this process only sends requests)."""
    return {
        **cpu_and_memory(),
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
