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
import functools
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from benchmarks.harness import Outputs, Record, SectionRun, log, parse_section_args, section_parser
from benchmarks.serving.chart import render_chart
from benchmarks.serving.common import SECTIONS
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
    parser = section_parser(
        "serving",
        __doc__,
        SECTIONS,
        quick_help="fewer requests, fewer levels",
        render_help="re-render serving.md and serving.png from serving.json, measuring nothing",
    )
    parser.add_argument(
        "--families",
        default="tiny,sd-v1",
        help="families for topologies and concurrency (default: tiny,sd-v1)",
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
    args = parse_section_args(parser, SECTIONS, argv)
    args.families = [f.strip() for f in args.families.split(",") if f.strip()]
    w, h = args.kcv_size.lower().split("x")
    args.kcv_size = (int(w), int(h))
    return args


def derive(report: Record) -> None:
    """What serving.json keeps besides the measurements: each target, met or not."""
    report["targets"] = evaluate_targets(report["sections"])


def add_chart(report: Record, out_dir: Path) -> None:
    """serving.png from the concurrency section, and in the report its name or why not."""
    if "concurrency" in report["sections"]:
        report["chart"] = render_chart(report, out_dir / "serving.png") or "serving.png"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker == "keras_cv":
        out = worker_keras_cv(args)
        Path(args.worker_out).write_text(json.dumps(out, indent=2) + "\n")
        return 0
    plan = json.loads(json.dumps(PLANS[args.mode]))  # a copy
    for key in ("topologies", "concurrency"):
        plan[key] = {f: cfg for f, cfg in plan[key].items() if f in args.families}
    outputs = Outputs.at("serving", args.out_dir, render_markdown)
    if args.render_only:
        report = outputs.load()
        derive(report)
        add_chart(report, outputs.out_dir)
        outputs.write(report)
        log(f"re-rendered {outputs.md_path} from serving.json")
        return 0
    run = SectionRun(
        outputs,
        args,
        argv,
        machine=machine_description(),
        plan=plan,
        extra={"targets_definition": TARGETS},
        env=["KERAS_BACKEND=tensorflow"],
        derive=derive,
    )
    log_dir = Path(tempfile.mkdtemp(prefix="sdserve-serving-bench-"))
    log(f"{args.mode} run of {args.sections}; process logs in {log_dir}")
    run.run(
        {
            name: functools.partial(SECTION_RUNNERS[name], plan[name], args, log_dir)
            for name in args.sections
        }
    )
    add_chart(run.report, outputs.out_dir)
    run.save()
    report = run.report
    log(f"done in {report['total_seconds']} s; wrote {outputs.out_dir}/serving.md, .json, .png")
    for t in report["targets"]:
        log(f"target: {t['target']}: {t['value']} -> {verdict(t['met'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
