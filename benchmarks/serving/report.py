"""The serving report: serving.md from the measured sections."""

from __future__ import annotations

from benchmarks.serving.common import SECTIONS, Record
from benchmarks.serving.findings import findings
from benchmarks.serving.replicas import render_replicas
from benchmarks.serving.report_tables import (
    fmt,
    render_concurrency,
    render_keras_cv,
    render_locust,
    render_overload,
    render_topologies,
    render_wire,
    verdict,
)


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
    try:
        notes = findings(sections)
    except Exception as exc:  # a report without findings beats no report
        notes = [f"(findings could not be computed: {exc!r})"]
    if notes:
        lines += ["## Where the time goes", ""]
        lines += [f"- {note}" for note in notes]
        lines.append("")
    for name in SECTIONS:
        if name not in sections:
            continue
        section = sections[name]
        header = {
            "topologies": "1. Topologies: the same requests, one at a time",
            "keras_cv": "2. Against keras-cv's StableDiffusion",
            "concurrency": "3. Throughput and latency under concurrency",
            "overload": "4. Overload: bounded queues",
            "wire": "5. Bytes on the wire",
            "locust": "6. Locust",
            "replicas": "7. Replicas: balance, and a replica killed mid-run",
        }[name]
        lines += [f"## {header}", ""]
        lines.append(
            f"Measured {section.get('_finished_utc')}, {section.get('_seconds')} s; load "
            f"average before {section.get('_load_before')}, after {section.get('_load_after')}."
        )
        lines.append("")
        if section.get("_error"):
            lines += ["**Failed:**", "", "```", section["_error"][-3000:], "```", ""]
            continue
        renderer = {
            "topologies": render_topologies,
            "keras_cv": render_keras_cv,
            "concurrency": render_concurrency,
            "overload": render_overload,
            "wire": render_wire,
            "locust": render_locust,
            "replicas": render_replicas,
        }[name]
        lines += renderer(section)
        lines.append("")
    return "\n".join(lines)
