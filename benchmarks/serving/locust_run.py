"""Section 6, locust: benchmarks/locustfile.py run headless against a tiny stack."""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.harness import REPO_ROOT, Record, log
from benchmarks.serving.common import STAGE_MODULES, wxh
from benchmarks.serving.stack import GatewaySpecs, Stack, StageSpecs, family_env


def section_locust(plan: Record, args: argparse.Namespace, log_dir: Path) -> Record:
    if importlib.util.find_spec("locust") is None:
        return {"status": "skipped: locust is not installed (pip install locust)"}
    stages: StageSpecs = {kind: (kind, {}) for kind in STAGE_MODULES}
    gateways: GatewaySpecs = {"central": ({k: k for k in STAGE_MODULES}, {})}
    result: Record = {"config": {**plan, "size": wxh(plan["size"])}}
    with (
        Stack("locust-tiny", family_env("tiny", plan["size"]), stages, gateways, log_dir) as st,
        tempfile.TemporaryDirectory() as tmp,
    ):
        prefix = Path(tmp) / "locust"
        command = [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(REPO_ROOT / "benchmarks" / "locustfile.py"),
            "--headless",
            "-u",
            str(plan["users"]),
            "-r",
            str(plan["spawn_rate"]),
            "-t",
            f"{plan['seconds']}s",
            "--host",
            st.url("central"),
            "--csv",
            str(prefix),
            "--only-summary",
        ]
        env = {
            **os.environ,
            "SDSERVE_BENCH_SIZE": wxh(plan["size"]),
            "SDSERVE_BENCH_STEPS": str(plan["steps"]),
        }
        log(f"locust: {shlex.join(command[1:])}")
        log_path = log_dir / "locust.log"
        with log_path.open("wb") as log_file:
            code = subprocess.call(
                command,
                cwd=REPO_ROOT,
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                timeout=plan["seconds"] + 120,
            )
        result["exit_code"] = code
        result["command"] = (
            f"SDSERVE_BENCH_SIZE={wxh(plan['size'])} SDSERVE_BENCH_STEPS={plan['steps']} "
            f"locust -f benchmarks/locustfile.py --headless -u {plan['users']} "
            f"-r {plan['spawn_rate']} -t {plan['seconds']}s --host URL"
        )
        stats_csv = Path(f"{prefix}_stats.csv")
        if stats_csv.exists():
            import csv

            with stats_csv.open() as fh:
                rows = list(csv.DictReader(fh))
            result["stats"] = [
                {
                    k: row.get(k)
                    for k in (
                        "Name",
                        "Request Count",
                        "Failure Count",
                        "Median Response Time",
                        "95%",
                        "Average Response Time",
                        "Requests/s",
                    )
                }
                for row in rows
            ]
        failures_csv = Path(f"{prefix}_failures.csv")
        if failures_csv.exists():
            result["failures_csv"] = failures_csv.read_text()[:2000]
        result["log_tail"] = "\n".join(log_path.read_text(errors="replace").splitlines()[-25:])
    return result
