"""How models run on this device: XLA, batched classifier-free guidance, precision.

These are per-device choices, not constants: on the 2-core CPU we develop on, XLA made a
keras-cv UNet step slower and batching the two CFG passes slower than two batch-1 calls,
while on GPUs both usually pay. `auto` takes the choice measured fastest for the device
kind and family (`python -m benchmarks.stages` writes the measurements to
benchmarks/results/stages.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import cache
from typing import Any, Literal

from shared.config import Settings
from shared.families.base import Component

DeviceKind = Literal["cpu", "gpu"]


COMPONENTS: tuple[Component, ...] = ("text_encoder", "diffusion_model", "decoder", "image_encoder")


@dataclass(frozen=True)
class ComponentStrategy:
    """How one model runs: XLA or not, and its Keras dtype policy."""

    xla: bool
    precision: str


@dataclass(frozen=True)
class ExecutionStrategy:
    """The strategy of one process's models. `xla` and `precision` are the family's
    defaults (and the diffusion model's unless `components` says otherwise);
    `components` holds the choice per component; `buckets` whether calls are padded to
    batch buckets (shared.models.ModelRunner)."""

    xla: bool
    batched_cfg: bool
    precision: str  # a Keras dtype policy name
    device: DeviceKind
    components: dict[str, ComponentStrategy] = field(default_factory=dict)
    buckets: bool = True

    def for_component(self, component: Component) -> ComponentStrategy:
        return self.components.get(component, ComponentStrategy(self.xla, self.precision))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# Measured defaults per device kind and family (the family's defaults), with per-component
# exceptions under "components". CPU: benchmarks/results/stages.md (this 2-core Xeon):
# sd-v1's UNet step is fastest without XLA and with the two CFG passes as separate calls
# (XLA: 5-7x slower), while its text encoder (159 ms vs 227 ms) and decoder (1.34 s vs
# 2.13 s) are faster with XLA, in float32. Batch buckets (shared.models.ModelRunner) give
# every model fixed shapes, so XLA compiles each at warm-up only. tiny's UNet is fastest
# with XLA in the per-step benchmark (4.5 ms vs 12.9 ms), and with buckets XLA makes one
# client's request faster end to end, but not 8 clients' throughput
# (benchmarks/results/buckets.md), and it costs a compilation per bucket at start-up, so
# `auto` keeps it off for tiny (SDSERVE_XLA=on for latency-bound tiny deployments).
# Reduced precision: on these CPUs no component is faster in it than in float32 with the
# choices above (stages.md), so float32 throughout. GPU: XLA and batched CFG, the usual
# result on CUDA devices (re-measure with `python -m benchmarks.stages` on yours), and
# float16 only where the image stays close to float32's (benchmarks/results/precision.md):
# tiny's trained weights, 61 dB median PSNR and the same held-out accuracy; SD 1.x, which
# keras-cv's own Stable Diffusion guide runs in mixed_float16; SD 2.x's text encoder and
# decoder likewise, but not its UNet: SD 2.1's attention overflows float16 into black images
# unless computed in float32 (diffusers' `upcast_attention`, A1111's --upcast-attn);
# keras-cv's forms q·kᵀ in the compute dtype and scales it after.
AUTO_STRATEGY: dict[DeviceKind, dict[str, dict[str, Any]]] = {
    "cpu": {
        "tiny": {"xla": False, "batched_cfg": True, "precision": "float32"},
        "sd-v1": {
            "xla": False,
            "batched_cfg": False,
            "precision": "float32",
            "components": {"text_encoder": {"xla": True}, "decoder": {"xla": True}},
        },
        "sd-v2": {"xla": False, "batched_cfg": False, "precision": "float32"},
    },
    "gpu": {
        "tiny": {"xla": True, "batched_cfg": True, "precision": "mixed_float16"},
        "sd-v1": {"xla": True, "batched_cfg": True, "precision": "mixed_float16"},
        "sd-v2": {
            "xla": True,
            "batched_cfg": True,
            "precision": "mixed_float16",
            "components": {"diffusion_model": {"precision": "float32"}},
        },
    },
}


@cache
def detect_device() -> DeviceKind:
    import tensorflow as tf

    return "gpu" if tf.config.list_physical_devices("GPU") else "cpu"


def resolve_strategy(settings: Settings, device: DeviceKind | None = None) -> ExecutionStrategy:
    """The settings' strategy: SDSERVE_XLA / SDSERVE_PRECISION other than `auto` apply
    to every component; `auto` takes the table's choice for each."""
    device = device or detect_device()
    auto = AUTO_STRATEGY[device][settings.model]

    def toggle(value: str, entry: dict[str, Any]) -> bool:
        return bool(entry["xla"]) if value == "auto" else value == "on"

    def precision(entry: dict[str, Any]) -> str:
        return str(entry["precision"] if settings.precision == "auto" else settings.precision)

    components: dict[str, ComponentStrategy] = {}
    for component in COMPONENTS:
        entry = {**auto, **auto.get("components", {}).get(component, {})}
        components[component] = ComponentStrategy(
            xla=toggle(settings.xla, entry), precision=precision(entry)
        )
    return ExecutionStrategy(
        xla=toggle(settings.xla, auto),
        batched_cfg=bool(auto["batched_cfg"])
        if settings.batched_cfg == "auto"
        else settings.batched_cfg == "on",
        precision=precision(auto),
        device=device,
        components=components,
        buckets=settings.batch_buckets,
    )
