"""What every local stage shares: loading, warming, readiness, description, close."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from dataclasses import asdict
from typing import Any, TypeVar

from shared.batching import DynamicBatcher, ModelWorker
from shared.config import Settings, format_size
from shared.errors import ModelNotReady
from shared.execution import resolve_strategy
from shared.families.base import Component, ModelFamily
from shared.metrics import BatchingSource
from shared.models import LoadedModels, load_components
from shared.pipeline.contract import Operation, StageContract
from shared.pipeline.stage import Progress
from shared.pipeline.types import StageInfo

Req = TypeVar("Req")
Res = TypeVar("Res")
Item = TypeVar("Item")
Output = TypeVar("Output")


class LocalStage:
    """A stage whose models run in this process, on one model thread (`worker`)."""

    contract: StageContract
    components: tuple[Component, ...] = ()
    location = "local"

    def __init__(self, settings: Settings, family: ModelFamily, worker: ModelWorker) -> None:
        self.settings = settings
        self.family = family
        self.worker = worker
        self.name = worker.name
        self.models: LoadedModels | None = None
        self._built: LoadedModels | None = None

    def request_batcher(
        self, fn: Callable[[Hashable, list[Item]], list[Output]]
    ) -> DynamicBatcher[Item, Output]:
        """Request-level batching of `fn` on this stage's model thread, sized by settings."""
        return DynamicBatcher(
            self.worker,
            fn,
            max_batch=self.settings.max_batch,
            max_wait_s=self.settings.batch_wait_ms / 1000,
            queue_size=self.settings.queue_size,
        )

    def load(self) -> None:
        """Build and load the models (blocking). Warm only after every model of the
        process is built: building seeds TensorFlow (`set_random_seed`), which drops
        traced functions."""
        self._built = load_components(
            self.settings, self.family, resolve_strategy(self.settings), self.components
        )

    def warm(self) -> None:
        """Warm up (unless `settings.warm_up` is off), then serve."""
        models = self._built
        if models is None:
            raise RuntimeError(f"{self.name}: warm() before load()")
        if self.settings.warm_up:
            self.worker.run_blocking(lambda: self.warm_up(models))
            # Every batch bucket too, so no request traces or compiles a graph.
            self.worker.run_blocking(models.warm_buckets)
        # Graphs built from here on are counted (sdserve_graph_builds_after_ready).
        self.worker.run_blocking(models.mark_ready)
        self.models = models

    def warm_up(self, models: LoadedModels) -> None:
        """Trace every graph a request can hit, so the first request is not slow."""

    async def ready(self) -> tuple[bool, str]:
        return (True, "ready") if self.models is not None else (False, "loading")

    def admit(self) -> None:
        """Local batchers refuse a full queue themselves, before any model work."""

    async def run(
        self, op: Operation[Req, Res], request: Req, progress: Progress | None = None
    ) -> Res:
        method = getattr(self, op.method)
        if op.streams:
            return await method(request, progress)
        return await method(request)

    async def close(self) -> None:
        await asyncio.to_thread(self.shutdown)

    def shutdown(self) -> None:
        self.worker.shutdown()

    def batching_sources(self) -> list[BatchingSource]:
        return []

    def graph_builds(self, component: Component) -> Callable[[], dict[str, int]]:
        """Graphs `component`'s models traced or compiled since ready (for /metrics)."""

        def builds() -> dict[str, int]:
            models = self.models
            return models.builds_after_ready(component) if models is not None else {}

        return builds

    def queue_depth(self) -> int:
        """Requests waiting or running in front of this stage's models."""
        return sum(source.depth() for source in self.batching_sources())

    async def describe(self) -> dict[str, Any]:
        return self.summary()

    def summary(self) -> dict[str, Any]:
        """What /v1/info (and /v1/stages) report: family, weights, sizes, execution."""
        if self.models is None:
            return {"family": self.family.spec.name, "sizes": self._sizes(), "loading": True}
        return asdict(self.info())

    def _sizes(self) -> list[str]:
        return [format_size(s) for s in self.settings.sizes]

    def _ready_models(self) -> LoadedModels:
        if self.models is None:
            raise ModelNotReady(f"{self.worker.name} models are still loading")
        return self.models

    def info(self) -> StageInfo:
        models = self._ready_models()
        return StageInfo(
            family=self.family.spec.name,
            weights=dict(models.weights_summary()),
            random_weights=models.random_weights,
            sizes=self._sizes(),
            execution=models.strategy.as_dict(),
            load_seconds=dict(models.load_seconds),
        )
