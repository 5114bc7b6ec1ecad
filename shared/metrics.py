"""Prometheus metrics for every part, served at /metrics (prometheus-client).

Each app gets its own registry (several apps can live in one test process). Route labels
are route templates, never raw paths, so label cardinality stays bounded.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.batching import BatchStats, Timing

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
ROWS_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128, 256)


@dataclass(frozen=True)
class BatchingSource:
    """One batched model of a part: its statistics and how deep its queue is now."""

    stage: str
    stats: BatchStats
    depth: Callable[[], int]
    # Graphs this model traced or XLA-compiled after the part said ready, by kind.
    builds: Callable[[], Mapping[str, int]] | None = None


class _QueueDepth(Collector):
    def __init__(self, sources: Callable[[], Iterable[BatchingSource]]) -> None:
        self.sources = sources

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "sdserve_queue_depth",
            "Requests waiting or running in front of a model (what the autoscaler watches).",
            labels=["stage"],
        )
        for source in self.sources():
            family.add_metric([source.stage], source.depth())
        yield family


class _GraphBuilds(Collector):
    def __init__(self, sources: Callable[[], Iterable[BatchingSource]]) -> None:
        self.sources = sources

    def collect(self) -> Iterable[CounterMetricFamily]:
        family = CounterMetricFamily(
            "sdserve_graph_builds_after_ready",
            "Graphs a model traced (kind=trace) or XLA-compiled (kind=xla_compile) after "
            "the part reported ready: zero when warm-up built every batch bucket.",
            labels=["stage", "kind"],
        )
        for source in self.sources():
            if source.builds is not None:
                for kind, count in source.builds().items():
                    family.add_metric([source.stage, kind], count)
        yield family


class StageReplicas(Collector):
    """The gateway's view of its remote stages: retries by reason, and per replica the
    calls in flight and the queue depth it last reported."""

    def __init__(
        self,
        retries: Callable[[], Mapping[str, Mapping[str, int]]],
        replicas: Callable[[], Mapping[str, Iterable[Mapping[str, Any]]]],
    ) -> None:
        self.retries = retries
        self.replicas = replicas

    def collect(self) -> Iterable[CounterMetricFamily | GaugeMetricFamily]:
        retried = CounterMetricFamily(
            "sdserve_stage_retries",
            "Stage calls tried again on another replica, by reason (connect: refused; "
            "full, draining, loading: a 503; died: the replica went away mid-call).",
            labels=["stage", "reason"],
        )
        for stage, reasons in self.retries().items():
            for reason, count in reasons.items():
                retried.add_metric([stage, reason], count)
        yield retried
        in_flight = GaugeMetricFamily(
            "sdserve_stage_replica_in_flight",
            "Calls this gateway has in flight on each stage replica.",
            labels=["stage", "replica"],
        )
        depth = GaugeMetricFamily(
            "sdserve_stage_replica_queue_depth",
            "The queue depth each stage replica last reported (X-Queue-Depth).",
            labels=["stage", "replica"],
        )
        for stage, replicas in self.replicas().items():
            for replica in replicas:
                in_flight.add_metric([stage, str(replica["url"])], replica["in_flight"])
                depth.add_metric([stage, str(replica["url"])], replica["queue_depth"])
        yield in_flight
        yield depth


class ServiceMetrics:
    def __init__(self, service: str, sources: Callable[[], Iterable[BatchingSource]]) -> None:
        self.service = service
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "sdserve_http_requests",
            "HTTP requests by route and status.",
            ["service", "method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "sdserve_http_request_duration_seconds",
            "HTTP request latency by route.",
            ["service", "method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "sdserve_http_requests_in_flight",
            "HTTP requests being served.",
            ["service"],
            registry=self.registry,
        )
        self.queue_time = Histogram(
            "sdserve_model_queue_seconds",
            "Time a request waited before its first model call.",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.compute_time = Histogram(
            "sdserve_model_compute_seconds",
            "Time from a request's first model call to its answer.",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_rows = Histogram(
            "sdserve_batch_rows",
            "Rows (images) per model call: the batch size each call achieved.",
            ["stage"],
            buckets=ROWS_BUCKETS,
            registry=self.registry,
        )
        self.model_info = Info(
            "sdserve_model", "Model family and weights this part serves.", registry=self.registry
        )
        self.registry.register(_QueueDepth(sources))
        self.registry.register(_GraphBuilds(sources))
        self._hooked: set[int] = set()
        self._sources = sources

    def hook_batching(self) -> None:
        """Attach to the batch statistics of every model (once models exist)."""
        for source in self._sources():
            if id(source.stats) in self._hooked:
                continue
            self._hooked.add(id(source.stats))
            source.stats.on_call.append(partial(self._observe_rows, source.stage))
            source.stats.on_request.append(partial(self._observe_timing, source.stage))

    def _observe_rows(self, stage: str, rows: int) -> None:
        self.batch_rows.labels(stage).observe(rows)

    def _observe_timing(self, stage: str, timing: Timing) -> None:
        self.queue_time.labels(stage).observe(timing.queue_ms / 1000)
        self.compute_time.labels(stage).observe(timing.compute_ms / 1000)

    def set_info(self, info: Mapping[str, Any]) -> None:
        self.model_info.info({k: info_label(v) for k, v in info.items()})


def info_label(value: Any) -> str:
    """A plain label value: a stage's weights by component (a mapping) read
    `text_encoder=embedded`, comma-separated; a list its items, comma-separated."""
    if isinstance(value, Mapping):
        return ",".join(f"{k}={info_label(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ",".join(info_label(v) for v in value)
    return str(value)


class MetricsMiddleware:
    """Counts requests and their latency by route template and status."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") == "/metrics":
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        gauge = self.metrics.in_flight.labels(self.metrics.service)
        gauge.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            gauge.dec()
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            labels = (self.metrics.service, scope.get("method", ""), template)
            self.metrics.requests.labels(*labels, str(status)).inc()
            self.metrics.latency.labels(*labels).observe(time.perf_counter() - started)
