"""The serving report: serving.md from the measured sections."""

from __future__ import annotations

from collections.abc import Callable

from benchmarks.harness import Record, fmt, notes_block, section_block
from benchmarks.serving.common import SECTIONS
from benchmarks.serving.findings import findings
from benchmarks.serving.replicas import render_replicas
from benchmarks.serving.report_tables import (
    render_concurrency,
    render_keras_cv,
    render_locust,
    render_overload,
    render_topologies,
    render_wire,
    verdict,
)

HEADINGS = {
    "topologies": "1. Topologies: the same requests, one at a time",
    "keras_cv": "2. Against keras-cv's StableDiffusion",
    "concurrency": "3. Throughput and latency under concurrency",
    "overload": "4. Overload: bounded queues",
    "wire": "5. Bytes on the wire",
    "locust": "6. Locust",
    "replicas": "7. Replicas: balance, and a replica killed mid-run",
}
RENDERERS: dict[str, Callable[[Record], list[str]]] = {
    "topologies": render_topologies,
    "keras_cv": render_keras_cv,
    "concurrency": render_concurrency,
    "overload": render_overload,
    "wire": render_wire,
    "locust": render_locust,
    "replicas": render_replicas,
}


def render_markdown(report: Record) -> str:
    sections = report["sections"]
    machine = report["machine"]
    lines = [
        "# Serving benchmarks",
        "",
        f"Measured by `python -m benchmarks.serving` ({report['mode']} mode), last run "
        f"{report['finished_utc']}. Random weights (timing does not depend on their values); "
        "real service processes on 127.0.0.1, started as `sdserve up` starts them and driven "
        "over HTTP by the benchmark process on the same machine (which competes for the same "
        "CPUs). Latencies are client-side wall clock. Numbers to compare are measured within "
        "one run, interleaved where possible; each section states its load average.",
        "",
        "## Machine",
        "",
        f"- CPU: {machine['cpu_model']} ({machine['logical_cpus']} logical CPUs, "
        f"{machine['usable_cpus']} usable); memory {machine['memory_gib']} GiB "
        f"({machine.get('mem_available_gib_at_start')} GiB available at start)",
        f"- Python {machine['python']}, TensorFlow {machine['tensorflow']}, Keras "
        f"{machine['keras']}, keras-cv {machine['keras_cv']}, NumPy {machine['numpy']}, "
        f"httpx {machine['httpx']}, uvicorn {machine['uvicorn']}",
        f"- Load average at start {machine['load_average_at_start']}, at end "
        f"{report.get('load_average_at_end')} (1, 5, 15 min; the machine is shared, so other "
        "processes may have competed for the 2 CPUs)",
        f"- Total run time of the last invocation: {report.get('total_seconds')} s "
        f"(sections run: {', '.join(report.get('sections_run', []))})",
        "",
        "```",
        report["command"],
        "```",
        "",
        "## Targets",
        "",
        "| target | measured | verdict |",
        "|---|---|---|",
    ]
    for t in report.get("targets", []):
        value = t["value"]
        shown = f"{value:.3f}" if isinstance(value, float) else fmt(value)
        lines.append(f"| {t['target']} | {shown} | {verdict(t['met'])} |")
    lines.append("")
    lines += notes_block("Where the time goes", "findings", lambda: findings(sections))
    for name in SECTIONS:
        if name in sections:
            lines += section_block(HEADINGS[name], sections[name], RENDERERS[name])
    return "\n".join(lines)
