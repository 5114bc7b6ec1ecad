"""OpenTelemetry tracing, off unless the standard OTEL_* variables turn it on.

`OTEL_TRACES_EXPORTER=otlp` (with `OTEL_EXPORTER_OTLP_ENDPOINT`, etc.) or `console`
enables it; `OTEL_SERVICE_NAME` overrides the part's name. Server spans come from the
FastAPI instrumentation, which also reads the W3C `traceparent` header; the httpx
instrumentation writes it on central's calls to the stages. Each stage call and each
batched model call gets its own span; a batched call links to every request in it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace

log = logging.getLogger(__name__)
tracer = trace.get_tracer("sdserve")
_configured = False


def tracing_enabled() -> bool:
    exporter = os.environ.get("OTEL_TRACES_EXPORTER", "none").strip().lower()
    return exporter not in ("", "none") and os.environ.get("OTEL_SDK_DISABLED") != "true"


def setup_tracing(service: str, app: Any) -> None:
    """Install a tracer provider and instrument the app (once per process)."""
    global _configured
    if not tracing_enabled():
        return
    if not _configured:
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            ConsoleSpanExporter,
            SimpleSpanProcessor,
            SpanExporter,
        )

        name = os.environ.get("OTEL_SERVICE_NAME", f"sdserve-{service}")
        provider = TracerProvider(resource=Resource.create({"service.name": name}))
        for exporter_name in os.environ["OTEL_TRACES_EXPORTER"].split(","):
            exporter: SpanExporter
            if exporter_name.strip() == "console":
                # Synchronous, so spans are in the log before the process stops.
                provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
                continue
            if exporter_name.strip() == "otlp":
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                    OTLPSpanExporter,
                )

                exporter = OTLPSpanExporter()
                provider.add_span_processor(BatchSpanProcessor(exporter))
                continue
            log.warning("unknown OTEL_TRACES_EXPORTER %r ignored", exporter_name)
        trace.set_tracer_provider(provider)
        HTTPXClientInstrumentor().instrument()
        _configured = True
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(
        app, excluded_urls="healthz,readyz,metrics", tracer_provider=trace.get_tracer_provider()
    )


class FreshTraceContext:
    """ASGI wrapper that starts every request with an empty OpenTelemetry context.

    uvicorn resumes reading a keep-alive connection from inside a handler's `receive()`
    (the diffusion routes keep one waiting to notice disconnects), and the event loop
    runs the connection's later callbacks, so its next request, in the context of that
    call. The ASGI instrumentation would then see the previous request's span as current
    and nest the new request under it instead of reading its `traceparent`.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        token = otel_context.attach(otel_context.Context())
        try:
            await self.app(scope, receive, send)
        finally:
            otel_context.detach(token)


@contextmanager
def span(name: str, **attributes: Any) -> Iterator[None]:
    """A span in the current trace (a no-op when tracing is off)."""
    with tracer.start_as_current_span(name, attributes=attributes):
        yield


def current_span_context() -> trace.SpanContext:
    return trace.get_current_span().get_span_context()


@contextmanager
def batched_call_span(name: str, rows: int, requests: list[trace.SpanContext]) -> Iterator[None]:
    """A model call serving several requests: its own trace, linked to each of them."""
    links = [trace.Link(ctx) for ctx in requests if ctx.is_valid]
    with tracer.start_as_current_span(
        name,
        context=trace.set_span_in_context(trace.INVALID_SPAN),
        links=links,
        attributes={"sdserve.rows": rows, "sdserve.requests": len(requests)},
    ):
        yield
