"""How models run on this device: XLA, batched classifier-free guidance, precision.

These are per-device choices, not constants: on the 2-core CPU we develop on, XLA made a
keras-cv UNet step slower and batching the two CFG passes slower than two batch-1 calls,
while on GPUs both usually pay. `auto` takes the choice measured fastest for the device
kind and family (`python -m benchmarks.stages` writes the measurements to
benchmarks/results/stages.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cache
from typing import Any, Literal

from shared.config import Settings

DeviceKind = Literal["cpu", "gpu"]


@dataclass(frozen=True)
class ExecutionStrategy:
    xla: bool
    batched_cfg: bool
    precision: str  # a Keras dtype policy name
    device: DeviceKind

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# Measured defaults per device kind and family. CPU: benchmarks/results/stages.md (this
# 2-core Xeon): sd-v1's UNet step is fastest without XLA and with the two CFG passes as
# separate calls (XLA: 5-7x slower); tiny's is fastest with XLA and batched CFG (4.5 ms vs
# 12.9 ms batched without XLA), but XLA compiles once per batch shape and the step
# scheduler's batch sizes vary, so tiny takes the best strategy without XLA. Reduced
# precision changes images, so `auto` keeps float32 on CPUs. GPU: the usual result on CUDA
# devices; re-measure with `python -m benchmarks.stages` on yours.
AUTO_STRATEGY: dict[DeviceKind, dict[str, dict[str, Any]]] = {
    "cpu": {
        "tiny": {"xla": False, "batched_cfg": True, "precision": "float32"},
        "sd-v1": {"xla": False, "batched_cfg": False, "precision": "float32"},
        "sd-v2": {"xla": False, "batched_cfg": False, "precision": "float32"},
    },
    "gpu": {
        family: {"xla": True, "batched_cfg": True, "precision": "mixed_float16"}
        for family in ("tiny", "sd-v1", "sd-v2")
    },
}


@cache
def detect_device() -> DeviceKind:
    import tensorflow as tf

    return "gpu" if tf.config.list_physical_devices("GPU") else "cpu"


def resolve_strategy(settings: Settings, device: DeviceKind | None = None) -> ExecutionStrategy:
    device = device or detect_device()
    auto = AUTO_STRATEGY[device][settings.model]

    def toggle(value: str, key: str) -> bool:
        return bool(auto[key]) if value == "auto" else value == "on"

    precision = auto["precision"] if settings.precision == "auto" else settings.precision
    return ExecutionStrategy(
        xla=toggle(settings.xla, "xla"),
        batched_cfg=toggle(settings.batched_cfg, "batched_cfg"),
        precision=str(precision),
        device=device,
    )
