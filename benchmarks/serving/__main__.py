"""Serving benchmarks: topologies, keras-cv, concurrency, overload, bytes on the wire,
replicas.

Runs the sections named on the command line and writes serving.md, serving.json and
serving.png into --out-dir; see benchmarks/README.md.

    python -m benchmarks.serving                       # everything (~30 min on 2 CPUs)
    python -m benchmarks.serving --quick               # fewer requests (~20 min)
    python -m benchmarks.serving --only wire,overload
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import shlex
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from benchmarks.serving.chart import render_chart
from benchmarks.serving.common import REPO_ROOT, SECTIONS, Record, load_average, log
from benchmarks.serving.concurrency import section_concurrency
from benchmarks.serving.keras_cv_compare import section_keras_cv, worker_keras_cv
from benchmarks.serving.locust_run import section_locust
from benchmarks.serving.machine import machine_description
from benchmarks.serving.overload import section_overload
from benchmarks.serving.plans import PLANS, TARGETS
from benchmarks.serving.replicas import section_replicas
from benchmarks.serving.report import render_markdown
from benchmarks.serving.report_tables import verdict
from benchmarks.serving.targets import evaluate_targets
from benchmarks.serving.topologies import section_topologies
from benchmarks.serving.wire import section_wire

SECTION_RUNNERS: dict[str, Callable[[Record, argparse.Namespace, Path], Record]] = {
    "topologies": section_topologies,
    "keras_cv": section_keras_cv,
    "concurrency": section_concurrency,
    "overload": section_overload,
    "wire": section_wire,
    "locust": section_locust,
    "replicas": section_replicas,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.serving", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="fewer requests, fewer levels")
    parser.add_argument("--only", default="", help="comma list of sections: " + ", ".join(SECTIONS))
    parser.add_argument(
        "--skip", default="", help="comma list of sections not to run (keeps old results)"
    )
    parser.add_argument(
        "--families",
        default="tiny,sd-v1",
        help="families for topologies and concurrency (default: tiny,sd-v1)",
    )
    parser.add_argument("--out-dir", default="benchmarks/results", help="where serving.* go")
    parser.add_argument(
        "--fresh", action="store_true", help="do not keep other sections from serving.json"
    )
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="re-render serving.md and serving.png from serving.json, measuring nothing",
    )
    parser.add_argument(
        "--sd-layout",
        choices=("interleaved", "sequential"),
        default="interleaved",
        help="sd-v1 topologies: all alive and interleaved (2 UNets; needs ~16 GiB free) or "
        "one after another (default: interleaved, sequential if memory is short)",
    )
    # Internal: the keras-cv comparison in a child process.
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    parser.add_argument("--kcv-size", default="128x128", help=argparse.SUPPRESS)
    parser.add_argument("--kcv-steps", type=int, default=5, help=argparse.SUPPRESS)
    parser.add_argument("--kcv-repeats", type=int, default=3, help=argparse.SUPPRESS)
    parser.add_argument("--kcv-xla-repeats", type=int, default=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    for name in [*only, *skip]:
        if name not in SECTIONS:
            parser.error(f"unknown section {name!r}; expected one of {', '.join(SECTIONS)}")
    args.sections = [s for s in (only or SECTIONS) if s not in skip]
    args.families = [f.strip() for f in args.families.split(",") if f.strip()]
    w, h = args.kcv_size.lower().split("x")
    args.kcv_size = (int(w), int(h))
    return args


def render_only(out_dir: Path) -> int:
    """Re-render serving.md and serving.png from serving.json, measuring nothing."""
    json_path = out_dir / "serving.json"
    report = json.loads(json_path.read_text())
    report["targets"] = evaluate_targets(report["sections"])
    if "concurrency" in report["sections"]:
        report["chart"] = render_chart(report, out_dir / "serving.png") or "serving.png"
    json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out_dir / "serving.md").write_text(render_markdown(report))
    log(f"re-rendered {out_dir}/serving.md from serving.json")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker == "keras_cv":
        out = worker_keras_cv(args)
        Path(args.worker_out).write_text(json.dumps(out, indent=2) + "\n")
        return 0
    started = time.perf_counter()
    mode = "quick" if args.quick else "full"
    plan = json.loads(json.dumps(PLANS[mode]))  # a copy
    for key in ("topologies", "concurrency"):
        plan[key] = {f: cfg for f, cfg in plan[key].items() if f in args.families}
    out_dir = Path(args.out_dir)
    if not out_dir.is_absolute():
        out_dir = REPO_ROOT / out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "serving.json"
    if args.render_only:
        return render_only(out_dir)
    previous: Record = {}
    if json_path.exists() and not args.fresh:
        with contextlib.suppress(ValueError):
            previous = json.loads(json_path.read_text())
    shown_argv = sys.argv[1:] if argv is None else argv
    report: Record = {
        "command": shlex.join(
            ["KERAS_BACKEND=tensorflow", "python", "-m", "benchmarks.serving", *shown_argv]
        ),
        "mode": mode,
        "machine": machine_description(),
        "plan": plan,
        "targets_definition": TARGETS,
        "sections_run": args.sections,
        "sections": dict(previous.get("sections", {})),
    }
    log_dir = Path(tempfile.mkdtemp(prefix="sdserve-serving-bench-"))
    log(f"{mode} run of {args.sections}; process logs in {log_dir}")

    def save() -> None:
        report["finished_utc"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        report["total_seconds"] = round(time.perf_counter() - started, 1)
        report["load_average_at_end"] = load_average()
        report["targets"] = evaluate_targets(report["sections"])
        json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
        (out_dir / "serving.md").write_text(render_markdown(report))

    for name in args.sections:
        section_started = time.perf_counter()
        load_before = load_average()
        log(f"=== {name} (load {load_before})")
        try:
            section = SECTION_RUNNERS[name](plan[name], args, log_dir)
        except Exception as exc:
            log(f"{name} failed: {exc!r}")
            section = {"_error": f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-3000:]}"}
        section["_seconds"] = round(time.perf_counter() - section_started, 1)
        section["_load_before"] = load_before
        section["_load_after"] = load_average()
        section["_finished_utc"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        section["_mode"] = mode
        report["sections"][name] = section
        save()  # keep what is measured if a later section dies
        log(f"=== {name} done in {section['_seconds']} s")
    if "concurrency" in report["sections"]:
        problem = render_chart(report, out_dir / "serving.png")
        report["chart"] = problem or "serving.png"
    save()
    log(f"done in {report['total_seconds']} s; wrote {out_dir}/serving.md, .json, .png")
    for t in report["targets"]:
        log(f"target: {t['target']}: {t['value']} -> {verdict(t['met'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
