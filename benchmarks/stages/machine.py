"""The machine and the TensorFlow / Keras versions the numbers belong to."""

from __future__ import annotations

import datetime as dt
import os
import platform

import numpy as np

from benchmarks.harness import Record
from benchmarks.host import cpu_model_and_flags, memory_gib, usable_cpus


def machine_description() -> Record:
    import keras
    import keras_cv
    import tensorflow as tf

    from shared.execution import detect_device

    cpu_model, flags = cpu_model_and_flags()
    gpus = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        gpus.append(details.get("device_name", gpu.name))
    interesting = ["avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile"]
    return {
        "date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "hostname_kind": platform.machine(),
        "cpu_model": cpu_model,
        "cpu_flags_of_note": [f for f in interesting if f in flags],
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "memory_gib": memory_gib(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "device": detect_device(),
        "gpus": gpus,
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "keras_cv": keras_cv.__version__,
        "numpy": np.__version__,
        "os": platform.platform(),
    }
