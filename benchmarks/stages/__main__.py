"""Per-stage compute under each execution strategy, on this machine.

Runs each (family, precision) in its own child process and writes the report; see
benchmarks/README.md.

    python -m benchmarks.stages                       # everything (minutes on a 2-core CPU)
    python -m benchmarks.stages --quick               # fewer repeats, a rough look
    python -m benchmarks.stages --families tiny --repeats 50
    python -m benchmarks.stages --skip-xla-for sd-v1  # if XLA compiles are unbearable
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.harness import REPO_ROOT, Record, log
from benchmarks.stages.common import (
    DEFAULT_REPEATS,
    FAMILY_SIZES,
    GUIDANCE_SCALE,
    PRECISIONS,
    PROMPT,
    QUICK_REPEATS,
    STEPS,
)
from benchmarks.stages.family_bench import worker_main
from benchmarks.stages.machine import machine_description
from benchmarks.stages.report import write_outputs


def bench_family(family_name: str, args: argparse.Namespace, report: Record) -> None:
    """Each precision in its own process: a fresh TensorFlow (no XLA or oneDNN caches
    from the previous configuration) and all of an sd-v1 build's memory given back."""
    repeats = args.repeats or (QUICK_REPEATS if args.quick else DEFAULT_REPEATS)[family_name]
    warmup = 1 if args.quick else args.warmup
    fam: Record = {
        "size": list(FAMILY_SIZES[family_name]),
        "repeats": repeats,
        "warmup": warmup,
        "precisions": {},
    }
    report["families"][family_name] = fam
    if family_name in args.skip_xla_for:
        fam["xla_skipped"] = "--skip-xla-for " + family_name

    with tempfile.TemporaryDirectory(prefix="sdserve-bench-") as tmp:
        for precision in args.precisions:
            worker_out = Path(tmp) / f"{family_name}-{precision}.json"
            command = [
                sys.executable,
                "-m",
                "benchmarks.stages",
                "--worker",
                f"{family_name}:{precision}",
                "--worker-out",
                str(worker_out),
                "--repeats",
                str(repeats),
                "--warmup",
                str(warmup),
                "--skip-xla-for",
                ",".join(sorted(args.skip_xla_for)),
                "--fp16-max-slowdown",
                str(args.fp16_max_slowdown),
                "--fp16-max-step-s",
                str(args.fp16_max_step_s),
            ]
            f32 = fam["precisions"].get("float32", {}).get("xla", {}).get("off", {})
            if "unet_step" in f32:
                reference = f32["unet_step"]["separate_cfg"]["median_ms"]
                command += ["--fp16-reference-ms", str(reference)]
            started = time.perf_counter()
            rc = subprocess.run(command, check=False, cwd=REPO_ROOT).returncode
            entry: Record = (
                json.loads(worker_out.read_text())
                if worker_out.exists()
                else {"status": "ok", "xla": {}}
            )
            entry["process_s"] = round(time.perf_counter() - started, 1)
            if rc != 0:
                why = (
                    "killed by SIGKILL (out of memory?)"
                    if rc == -signal.SIGKILL
                    else f"exited with status {rc}"
                )
                entry["status"] = f"error: measuring process {why}; see the log"
                done = ", ".join(f"xla {k}" for k in entry.get("xla", {})) or "nothing"
                entry["status"] += f"; measured before that: {done}"
                log(f"{family_name} {precision}: {entry['status']}")
            fam["precisions"][precision] = entry
            write_outputs(report, args)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.stages", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--families", default="tiny,sd-v1", help="comma list of: " + ", ".join(FAMILY_SIZES)
    )
    parser.add_argument(
        "--precisions", default=",".join(PRECISIONS), help="comma list of Keras dtype policies"
    )
    parser.add_argument(
        "--repeats", type=int, default=0, help="timed repeats (default: sd-v1 7, tiny 30)"
    )
    parser.add_argument("--warmup", type=int, default=2, help="warm-up calls after the first")
    parser.add_argument("--quick", action="store_true", help="few repeats, one warm-up")
    parser.add_argument(
        "--skip-xla-for", default="", help="comma list of families measured without XLA only"
    )
    parser.add_argument(
        "--fp16-max-slowdown",
        type=float,
        default=4.0,
        help="on CPU, skip mixed_float16 if a UNet step is this much slower than float32",
    )
    parser.add_argument(
        "--fp16-max-step-s",
        type=float,
        default=10.0,
        help="on CPU without a float32 reference, skip mixed_float16 above this step time",
    )
    parser.add_argument("--out", default="benchmarks/results/stages.md")
    # Internal: one family at one precision in a child process.
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    parser.add_argument("--fp16-reference-ms", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.families = [f.strip() for f in args.families.split(",") if f.strip()]
    args.precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    args.skip_xla_for = {f.strip() for f in args.skip_xla_for.split(",") if f.strip()}
    for name in args.families:
        if name not in FAMILY_SIZES:
            parser.error(f"unknown family {name!r}; expected one of {', '.join(FAMILY_SIZES)}")
    for precision in args.precisions:
        if precision not in PRECISIONS:
            parser.error(f"unknown precision {precision!r}; expected one of {PRECISIONS}")
    if "mixed_float16" in args.precisions and "float32" in args.precisions:
        # float32 first: the CPU float16 check compares against it.
        args.precisions.remove("mixed_float16")
        args.precisions.append("mixed_float16")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main(args)
    started = time.perf_counter()
    from shared.execution import AUTO_STRATEGY

    shown_argv = sys.argv[1:] if argv is None else argv
    report: Record = {
        "command": shlex.join(
            ["KERAS_BACKEND=tensorflow", "python", "-m", "benchmarks.stages", *shown_argv]
        ),
        "machine": machine_description(),
        "auto_strategy": AUTO_STRATEGY,
        "settings": {
            "families": args.families,
            "precisions": args.precisions,
            "sizes": {f: list(FAMILY_SIZES[f]) for f in args.families},
            "steps_schedule": STEPS,
            "guidance_scale": GUIDANCE_SCALE,
            "prompt": PROMPT,
        },
        "families": {},
    }
    log(f"machine: {report['machine']['cpu_model']}, device {report['machine']['device']}")
    for family_name in args.families:
        bench_family(family_name, args, report)
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    report["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    write_outputs(report, args)
    log(f"done in {report['total_seconds']} s; wrote {args.out} and its .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())


if __name__ == "__main__":
    sys.exit(main())
