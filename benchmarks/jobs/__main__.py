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
import contextlib
import datetime as dt
import json
import shlex
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from benchmarks.jobs.common import REPO_ROOT, SECTIONS, Record, load_average, log
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
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.jobs", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="fewer rounds, shorter ones")
    parser.add_argument("--only", default="", help="comma list of sections: " + ", ".join(SECTIONS))
    parser.add_argument(
        "--skip", default="", help="comma list of sections not to run (keeps old results)"
    )
    parser.add_argument("--out-dir", default="benchmarks/results", help="where jobs.* go")
    parser.add_argument(
        "--fresh", action="store_true", help="do not keep other sections from jobs.json"
    )
    parser.add_argument(
        "--redis-fsync",
        choices=FSYNC_MODES,
        default="everysec",
        help="the redis-server's appendfsync (append-only file on; default: everysec)",
    )
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="re-render jobs.md from jobs.json, measuring nothing",
    )
    args = parser.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    for name in [*only, *skip]:
        if name not in SECTIONS:
            parser.error(f"unknown section {name!r}; expected one of {', '.join(SECTIONS)}")
    args.sections = [s for s in (only or SECTIONS) if s not in skip]
    return args


def render_only(out_dir: Path) -> int:
    """Re-render jobs.md from jobs.json, measuring nothing."""
    report = json.loads((out_dir / "jobs.json").read_text())
    (out_dir / "jobs.md").write_text(render_markdown(report))
    log(f"re-rendered {out_dir}/jobs.md from jobs.json")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out_dir = Path(args.out_dir)
    if not out_dir.is_absolute():
        out_dir = REPO_ROOT / out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.render_only:
        return render_only(out_dir)
    started = time.perf_counter()
    mode = "quick" if args.quick else "full"
    plan = PLANS[mode]
    json_path = out_dir / "jobs.json"
    previous: Record = {}
    if json_path.exists() and not args.fresh:
        with contextlib.suppress(ValueError):
            previous = json.loads(json_path.read_text())
    shown_argv = sys.argv[1:] if argv is None else argv
    report: Record = {
        "command": shlex.join(["python", "-m", "benchmarks.jobs", *shown_argv]),
        "mode": mode,
        "machine": machine_description(),
        "plan": plan,
        "sections_run": args.sections,
        "sections": dict(previous.get("sections", {})),
    }
    log(f"{mode} run of {args.sections}")

    def save() -> None:
        report["finished_utc"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        report["total_seconds"] = round(time.perf_counter() - started, 1)
        report["load_average_at_end"] = load_average()
        json_path.write_text(json.dumps(report, indent=2) + "\n")
        (out_dir / "jobs.md").write_text(render_markdown(report))

    for name in args.sections:
        section_started = time.perf_counter()
        load_before = load_average()
        log(f"=== {name} (load {load_before})")
        try:
            section = SECTION_RUNNERS[name](plan[name], args)
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
    save()
    log(f"done in {report['total_seconds']} s; wrote {out_dir}/jobs.md and jobs.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
