"""Jobs benchmark: jobs per second and event latency with the memory and Redis stores.

Runs the sections named on the command line and writes jobs.md and jobs.json into
--out-dir; see benchmarks/README.md.

    python -m benchmarks.jobs                  # both sections (~2 min on 2 CPUs)
    python -m benchmarks.jobs --quick          # fewer rounds (~1 min)
    python -m benchmarks.jobs --only store     # in-process only: no gateway, no TensorFlow
    python -m benchmarks.jobs --render-only    # re-render jobs.md from jobs.json
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable

from benchmarks.harness import Outputs, Record, SectionRun, log, parse_section_args, section_parser
from benchmarks.jobs.common import SECTIONS
from benchmarks.jobs.http_bench import section_http
from benchmarks.jobs.machine import machine_description
from benchmarks.jobs.plans import PLANS
from benchmarks.jobs.redis_server import FSYNC_MODES
from benchmarks.jobs.report import render_markdown
from benchmarks.jobs.store_bench import section_store

SECTION_RUNNERS: dict[str, Callable[[Record, argparse.Namespace], Record]] = {
    "store": section_store,
    "http": section_http,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = section_parser(
        "jobs",
        __doc__,
        SECTIONS,
        quick_help="fewer rounds, shorter ones",
        render_help="re-render jobs.md from jobs.json, measuring nothing",
    )
    parser.add_argument(
        "--redis-fsync",
        choices=FSYNC_MODES,
        default="everysec",
        help="the redis-server's appendfsync (append-only file on; default: everysec)",
    )
    return parse_section_args(parser, SECTIONS, argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    outputs = Outputs.at("jobs", args.out_dir, render_markdown)
    if args.render_only:
        outputs.write_markdown(outputs.load())
        log(f"re-rendered {outputs.md_path} from jobs.json")
        return 0
    plan = PLANS[args.mode]
    run = SectionRun(outputs, args, argv, machine=machine_description(), plan=plan)
    log(f"{args.mode} run of {args.sections}")
    run.run(
        {name: functools.partial(SECTION_RUNNERS[name], plan[name], args) for name in args.sections}
    )
    run.save()
    log(f"done in {run.report['total_seconds']} s; wrote {outputs.out_dir}/jobs.md and jobs.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
