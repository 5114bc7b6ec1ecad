"""Serving benchmarks: topologies, keras-cv, concurrency, overload, bytes on the wire.

Real service processes (`python -m services.diffusion`, `python -m central`, ...) are
started on free ports with `tests.utils.servers.ServiceProcess`, exactly as `sdserve up`
would start them, and driven over HTTP from this process. Sections:

1. topologies   the same requests sent one at a time through all-in-one, three-endpoints
                and hybrid gateways (tiny 64x64 and sd-v1 128x128, random weights):
                median latency per topology, the three-endpoints/all-in-one ratio and
                the per-stage breakdown from each response's `timings`.
2. keras_cv     our in-process all-in-one Chain against keras-cv's own
                `StableDiffusion.text_to_image` (jit_compile=True, its default, and
                False) on the very same sd-v1 Keras models, 128x128, batch 1 (child
                process).
3. concurrency  1..16 closed-loop clients against a three-endpoints stack, continuous
                batching on vs off: throughput and p50/p95 latency.
4. overload     64 clients against queues of 4: every request must end 200 or 503, and
                each process's resident memory must stay flat.
5. wire         bytes per request between central and the stages: our npz (fp32, fp16)
                vs base64 float32 JSON, tiny 64x64 and sd-v1 512x512 shapes.
6. locust       benchmarks/locustfile.py run headless against a tiny stack (if locust is
                installed).

Writes `serving.md` (tables), `serving.json` (raw) and `serving.png` (throughput and
latency vs concurrency) into --out-dir (default benchmarks/results). `--only` runs some
sections and keeps the others' previous results from serving.json.

    python benchmarks/serving.py                       # everything (~30 min on 2 CPUs)
    python benchmarks/serving.py --quick               # fewer requests (~20 min)
    python benchmarks/serving.py --only wire,overload
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import httpx  # noqa: E402
import numpy as np  # noqa: E402

Record = dict[str, Any]

SECTIONS = ("topologies", "keras_cv", "concurrency", "overload", "wire", "locust")
TOPOLOGIES = ("all-in-one", "three-endpoints", "hybrid")
# Which stages each topology runs as its own service (the others run inside central).
REMOTE_STAGES: dict[str, tuple[str, ...]] = {
    "all-in-one": (),
    "three-endpoints": ("text_encoder", "diffusion", "decoder"),
    "hybrid": ("diffusion",),
}
STAGE_MODULES = {
    "text_encoder": "services.text_encoder",
    "diffusion": "services.diffusion",
    "decoder": "services.decoder",
}
URL_ENV = {
    "text_encoder": "SDSERVE_TEXT_ENCODER_URL",
    "diffusion": "SDSERVE_DIFFUSION_URL",
    "decoder": "SDSERVE_DECODER_URL",
}
PROMPT = "a photograph of an astronaut riding a horse"
SEED = 1234
GUIDANCE_SCALE = 7.5
CLIENT_TIMEOUT_S = 120.0
# Interleaving the sd-v1 topologies keeps two sd-v1 UNets (and two text encoders and
# decoders) alive, about 12 GiB on CPU; below this much free memory they run one by one.
SD_INTERLEAVE_MIN_GIB = 16.0
GENERATIONS = "/v1/images/generations"

# What each mode measures. Sizes are (width, height).
PLANS: dict[str, Record] = {
    "full": {
        "topologies": {
            "tiny": {"size": (64, 64), "n": 4, "steps": 5, "warmup": 2, "repeats": 10},
            # A batch of 4, as the seed system's timing test sent.
            "sd-v1": {"size": (128, 128), "n": 4, "steps": 3, "warmup": 1, "repeats": 4},
        },
        "keras_cv": {"size": (128, 128), "steps": 3, "repeats": 4, "xla_repeats": 2},
        "concurrency": {
            "tiny": {
                "size": (64, 64),
                "steps": 25,
                "clients": [1, 2, 4, 8, 16],
                "warmup_s": 3.0,
                "window_s": 15.0,
                "window_factor": 1.5,
            },
            "sd-v1": {
                "size": (128, 128),
                "steps": 3,
                "clients": [1, 4, 8],
                "warmup_s": 8.0,
                "window_s": 30.0,
                "window_factor": 0.75,
            },
        },
        "overload": {
            "size": (64, 64),
            "steps": 25,
            "queue_size": 4,
            "moderate_clients": 4,
            "moderate_s": 20.0,
            "overload_clients": 64,
            "overload_s": 30.0,
            "max_requests": 4000,
            "pause_after_503_s": 0.05,
        },
        "wire": {"shapes": {"tiny": (64, 64), "sd-v1": (512, 512)}, "n": [1, 4]},
        "locust": {"users": 8, "spawn_rate": 4, "seconds": 20, "size": (64, 64), "steps": 25},
    },
    "quick": {
        "topologies": {
            "tiny": {"size": (64, 64), "n": 4, "steps": 5, "warmup": 1, "repeats": 3},
            "sd-v1": {"size": (128, 128), "n": 1, "steps": 3, "warmup": 1, "repeats": 2},
        },
        "keras_cv": {"size": (128, 128), "steps": 3, "repeats": 2, "xla_repeats": 1},
        "concurrency": {
            "tiny": {
                "size": (64, 64),
                "steps": 25,
                "clients": [1, 8],
                "warmup_s": 2.0,
                "window_s": 6.0,
                "window_factor": 1.0,
            },
            "sd-v1": {
                "size": (128, 128),
                "steps": 3,
                "clients": [1, 4],
                "warmup_s": 5.0,
                "window_s": 20.0,
                "window_factor": 1.0,
            },
        },
        "overload": {
            "size": (64, 64),
            "steps": 25,
            "queue_size": 4,
            "moderate_clients": 4,
            "moderate_s": 8.0,
            "overload_clients": 64,
            "overload_s": 10.0,
            "max_requests": 1500,
            "pause_after_503_s": 0.05,
        },
        "wire": {"shapes": {"tiny": (64, 64), "sd-v1": (512, 512)}, "n": [1, 4]},
        "locust": {"users": 8, "spawn_rate": 4, "seconds": 10, "size": (64, 64), "steps": 25},
    },
}

# Targets of the "Throughput" issue, checked against the numbers in the report.
TARGETS = {
    "topology_ratio_max": 1.05,  # sd-v1 128x128: three-endpoints / all-in-one median
    "vs_keras_cv_default_max": 0.5,  # ours / keras-cv jit_compile=True, steady state
    "vs_keras_cv_best_max": 1.0,  # ours / keras-cv's faster setting
    "cb_throughput_min": 2.0,  # tiny 64x64 at 8 clients, CB / no-CB
    "cb_lone_latency_max": 1.1,  # tiny 64x64 at 1 client, CB p50 / no-CB p50
    "rss_growth_max": 1.10,  # overload RSS / moderate-load RSS, each process
}


def log(message: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", file=sys.stderr, flush=True)


def wxh(size: Sequence[int]) -> str:
    return f"{size[0]}x{size[1]}"


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def mem_available_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def proc_status_kib(pid: int, field: str = "VmRSS") -> int | None:
    """A field of /proc/<pid>/status in KiB (VmRSS: resident now, VmHWM: peak)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds a process has used (/proc/<pid>/stat)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def cpu_snapshot(pids: Mapping[str, int]) -> dict[str, float | None]:
    snap = {name: cpu_seconds(pid) for name, pid in pids.items()}
    snap["benchmark client"] = cpu_seconds(os.getpid())
    return snap


def cores_used(
    before: Mapping[str, float | None], after: Mapping[str, float | None], seconds: float
) -> dict[str, float | None]:
    """Average CPU cores each process used between two snapshots."""
    out: dict[str, float | None] = {}
    for name, then in before.items():
        now = after.get(name)
        out[name] = (
            round((now - then) / seconds, 2) if now is not None and then is not None else None
        )
    return out


def stats_ms(samples_s: Sequence[float]) -> Record:
    """Median, p10/p50/p90/p95, min/max of seconds, in milliseconds."""
    if not samples_s:
        return {"n": 0}
    ms = np.asarray(samples_s, dtype=np.float64) * 1000.0
    return {
        "n": len(ms),
        "median_ms": round(float(np.median(ms)), 1),
        "p10_ms": round(float(np.percentile(ms, 10)), 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p90_ms": round(float(np.percentile(ms, 90)), 1),
        "p95_ms": round(float(np.percentile(ms, 95)), 1),
        "min_ms": round(float(ms.min()), 1),
        "max_ms": round(float(ms.max()), 1),
        "mean_ms": round(float(ms.mean()), 1),
    }


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


# --------------------------------------------------------------------------- machine


def package_version(*names: str) -> str | None:
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def machine_description() -> Record:
    """The machine, without importing TensorFlow (this process only sends requests)."""
    cpu_model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return {
        "cpu_model": cpu_model,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gib": memory_gib,
        "mem_available_gib_at_start": mem_available_gib(),
        "load_average_at_start": load_average(),
        "python": platform.python_version(),
        "tensorflow": package_version("tensorflow-cpu", "tensorflow"),
        "keras": package_version("keras"),
        "keras_cv": package_version("keras-cv"),
        "numpy": np.__version__,
        "httpx": package_version("httpx"),
        "uvicorn": package_version("uvicorn"),
        "os": platform.platform(),
    }


# --------------------------------------------------------------------------- processes


def family_env(family: str, size: Sequence[int], extra: Mapping[str, str] | None = None) -> dict:
    env = {
        "SDSERVE_MODEL": family,
        "SDSERVE_WEIGHTS": "random",
        "SDSERVE_SIZES": wxh(size),
    }
    env.update(extra or {})
    return env


class Stack:
    """Stage services and gateways started together; stopped (all of them) on exit.

    `stages`: name -> (stage kind, env overrides), e.g. {"diffusion_nocb": ("diffusion",
    {"SDSERVE_CONTINUOUS_BATCHING": "false"})}. `gateways`: name -> (which stage service
    each remote stage kind uses, env overrides); a stage kind not named is local to that
    gateway. Stage services start first (so their URLs are known), gateways right after;
    all load concurrently.
    """

    def __init__(
        self,
        label: str,
        base_env: Mapping[str, str],
        stages: Mapping[str, tuple[str, Mapping[str, str]]],
        gateways: Mapping[str, tuple[Mapping[str, str], Mapping[str, str]]],
        log_dir: Path,
        startup_timeout: float = 600.0,
    ) -> None:
        self.label = label
        self.base_env = dict(base_env)
        self.stage_specs = dict(stages)
        self.gateway_specs = dict(gateways)
        self.log_dir = log_dir
        self.startup_timeout = startup_timeout
        self.procs: dict[str, Any] = {}
        self.ready_s: dict[str, float] = {}

    def __enter__(self) -> Stack:
        from tests.utils.servers import ServiceProcess

        started = time.perf_counter()
        try:
            for name, (kind, env) in self.stage_specs.items():
                self._start(ServiceProcess, name, STAGE_MODULES[kind], {**self.base_env, **env})
            for name, (remotes, env) in self.gateway_specs.items():
                urls = {URL_ENV[kind]: self.procs[stage].url for kind, stage in remotes.items()}
                self._start(ServiceProcess, name, "central", {**self.base_env, **env, **urls})
            for name, proc in self.procs.items():
                proc.wait_ready()
                self.ready_s[name] = round(time.perf_counter() - started, 1)
        except BaseException:
            self.stop()
            raise
        log(f"{self.label}: ready in {max(self.ready_s.values()):.0f} s ({self.ready_s})")
        return self

    def _start(self, cls: Any, name: str, module: str, env: Mapping[str, str]) -> None:
        proc = cls(
            module,
            env=env,
            log_path=self.log_dir / f"{self.label}-{name}.log",
            startup_timeout=self.startup_timeout,
            wait_ready=False,
        )
        self.procs[name] = proc
        proc.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        # Gateways first (they hold connections to the stages), then the stages.
        for name in reversed(list(self.procs)):
            with contextlib.suppress(Exception):
                self.procs[name].stop()

    def url(self, name: str) -> str:
        return str(self.procs[name].url)

    def pids(self) -> dict[str, int]:
        return {name: int(p.proc.pid) for name, p in self.procs.items() if p.proc is not None}

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.returncode is not None:
                raise RuntimeError(
                    f"{self.label}: {name} exited with {proc.returncode}\n{proc.log_tail(30)}"
                )


def generation_body(
    size: Sequence[int], steps: int, n: int = 1, seed: int | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "prompt": PROMPT,
        "size": wxh(size),
        "n": n,
        "steps": steps,
        "guidance_scale": GUIDANCE_SCALE,
        "response_format": "b64_json",
    }
    if seed is not None:
        body["seed"] = seed
    return body


def parse_metrics(text: str) -> dict[str, dict[str, float]]:
    """sdserve_batch_rows_{sum,count} per stage label from a Prometheus text page."""
    out: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        for suffix in ("sum", "count"):
            prefix = f"sdserve_batch_rows_{suffix}{{"
            if line.startswith(prefix):
                labels, _, value = line[len(prefix) :].partition("} ")
                stage = labels.split('stage="', 1)[-1].split('"', 1)[0]
                out.setdefault(stage, {})[suffix] = float(value)
    return out


async def batch_rows(client: httpx.AsyncClient, url: str) -> dict[str, dict[str, float]]:
    try:
        response = await client.get(f"{url}/metrics", timeout=10)
        return parse_metrics(response.text) if response.status_code == 200 else {}
    except httpx.HTTPError:
        return {}


def rows_between(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Record]:
    """Model calls and mean rows per call between two metric snapshots, per stage."""
    out: dict[str, Record] = {}
    for stage, now in after.items():
        then = before.get(stage, {})
        calls = now.get("count", 0) - then.get("count", 0)
        rows = now.get("sum", 0) - then.get("sum", 0)
        out[stage] = {
            "model_calls": int(calls),
            "rows": int(rows),
            "mean_rows_per_call": round(rows / calls, 2) if calls else None,
        }
    return out


async def wait_idle(client: httpx.AsyncClient, diffusion_url: str, timeout_s: float) -> float:
    """Wait until the diffusion service has no request left; seconds waited."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout_s:
        try:
            info = (await client.get(f"{diffusion_url}/v1/info", timeout=10)).json()
            if int(info.get("batching", {}).get("queue_depth", 0)) == 0:
                return round(time.perf_counter() - started, 2)
        except (httpx.HTTPError, ValueError):
            pass
        await asyncio.sleep(0.2)
    raise RuntimeError(f"diffusion at {diffusion_url} still busy after {timeout_s:.0f} s")


# --------------------------------------------------------------------------- 1. topologies


def png_digest(payload: Mapping[str, Any]) -> str:
    h = hashlib.sha256()
    for item in payload.get("data", []):
        h.update(item.get("b64_json", "").encode())
    return h.hexdigest()[:16]


async def sequential_rounds(
    urls: Mapping[str, str], body: Mapping[str, Any], warmup: int, repeats: int
) -> list[Record]:
    """One request at a time; each round visits every gateway, in a rotating order so that
    load drift and ordering effects hit every topology alike."""
    records: list[Record] = []
    names = list(urls)
    async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_S * 5) as client:
        for r in range(warmup + repeats):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                started = time.perf_counter()
                response = await client.post(f"{urls[name]}{GENERATIONS}", json=body)
                elapsed = time.perf_counter() - started
                if response.status_code != 200:
                    raise RuntimeError(f"{name}: HTTP {response.status_code}: {response.text}")
                payload = response.json()
                records.append(
                    {
                        "topology": name,
                        "round": r,
                        "warmup": r < warmup,
                        "e2e_ms": round(elapsed * 1000, 1),
                        "timings": payload.get("timings", {}),
                        "digest": png_digest(payload),
                        "load_1m": load_average()[0],
                    }
                )
                log(f"  {name} round {r}: {elapsed * 1000:.0f} ms")
    return records


def summarize_topologies(records: list[Record]) -> Record:
    measured = [r for r in records if not r["warmup"]]
    out: Record = {}
    for topology in TOPOLOGIES:
        rows = [r for r in measured if r["topology"] == topology]
        if not rows:
            continue
        e2e = [r["e2e_ms"] / 1000 for r in rows]
        stages: Record = {}
        stage_total = [0.0] * len(rows)
        for stage in ("text_encoder", "diffusion", "decoder"):
            parts: Record = {}
            for key in ("queue_ms", "compute_ms", "transfer_ms"):
                values = [float(r["timings"].get(stage, {}).get(key, 0.0)) for r in rows]
                parts[key] = round(float(np.median(values)), 1)
            totals = [
                sum(float(r["timings"].get(stage, {}).get(k, 0.0)) for k in parts) for r in rows
            ]
            parts["total_ms"] = round(float(np.median(totals)), 1)
            stages[stage] = parts
            stage_total = [a + b for a, b in zip(stage_total, totals, strict=True)]
        other = [r["e2e_ms"] - t for r, t in zip(rows, stage_total, strict=True)]
        compute = [
            sum(
                float(r["timings"].get(s, {}).get("compute_ms", 0.0))
                for s in ("text_encoder", "diffusion", "decoder")
            )
            for r in rows
        ]
        overhead = [r["e2e_ms"] - c for r, c in zip(rows, compute, strict=True)]
        out[topology] = {
            "e2e": stats_ms(e2e),
            "stages": stages,
            # Model compute of the three stages, and everything else (serving overhead:
            # batch waits, HTTP, npz, validation, PNG, JSON).
            "compute_ms": round(float(np.median(compute)), 1),
            "overhead_ms": round(float(np.median(overhead)), 1),
            # Client <-> gateway HTTP, validation, PNG encoding and the JSON response.
            "gateway_other_ms": round(float(np.median(other)), 1),
            "transfer_total_ms": round(
                float(
                    np.median(
                        [
                            sum(
                                float(r["timings"].get(s, {}).get("transfer_ms", 0.0))
                                for s in ("text_encoder", "diffusion", "decoder")
                            )
                            for r in rows
                        ]
                    )
                ),
                1,
            ),
        }
    aio = out.get("all-in-one", {})
    base = aio.get("e2e", {}).get("median_ms")
    for entry in out.values():
        entry["ratio_to_all_in_one"] = ratio(entry["e2e"].get("median_ms"), base)
        # The same ratio at equal model compute (all-in-one's): what the topology itself
        # adds, free of load drift between measurements of different topologies.
        if aio:
            entry["ratio_at_equal_compute"] = ratio(
                aio["compute_ms"] + entry["overhead_ms"], aio["compute_ms"] + aio["overhead_ms"]
            )
    digests = {r["digest"] for r in records}
    out["_identical_images"] = len(digests) == 1
    return out


def section_topologies(plan: Record, args: argparse.Namespace, log_dir: Path) -> Record:
    result: Record = {"families": {}}
    for family, cfg in plan.items():
        log(f"topologies: {family} {wxh(cfg['size'])} n={cfg['n']} steps={cfg['steps']}")
        # Every topology alive at once and requests interleaved, so load drift from other
        # processes hits all of them alike. For sd-v1 that is two UNets (all-in-one's
        # central, and the diffusion service that three-endpoints and hybrid share); with
        # too little memory, or --sd-layout sequential, all-in-one runs first and the
        # other two after it (one UNet alive at a time).
        groups = [list(TOPOLOGIES)]
        layout_note = "interleaved"
        if family != "tiny":
            available = mem_available_gib() or 0.0
            if args.sd_layout == "sequential" or available < SD_INTERLEAVE_MIN_GIB:
                groups = [["all-in-one"], ["three-endpoints", "hybrid"]]
                layout_note = (
                    "sequential (--sd-layout sequential)"
                    if args.sd_layout == "sequential"
                    else f"sequential: MemAvailable {available} GiB < {SD_INTERLEAVE_MIN_GIB}"
                )
        records: list[Record] = []
        startup: Record = {}
        describe: Record = {}
        rss: Record = {}
        for group in groups:
            needed = sorted({k for t in group for k in REMOTE_STAGES[t]})
            stages = {kind: (kind, {}) for kind in needed}
            gateways = {t: ({k: k for k in REMOTE_STAGES[t]}, {}) for t in group}
            mem = mem_available_gib()
            log(f"  starting {group} (MemAvailable {mem} GiB)")
            with Stack(
                f"topologies-{family}-{'+'.join(group)}",
                family_env(family, cfg["size"]),
                stages,
                gateways,
                log_dir,
            ) as stack:
                startup["+".join(group)] = stack.ready_s
                log(f"  MemAvailable {mem_available_gib()} GiB with {group} up")
                with httpx.Client(timeout=30) as client:
                    describe[group[0]] = client.get(f"{stack.url(group[0])}/v1/stages").json()
                urls = {t: stack.url(t) for t in group}
                body = generation_body(cfg["size"], cfg["steps"], cfg["n"], SEED)
                group_records = asyncio.run(
                    sequential_rounds(urls, body, cfg["warmup"], cfg["repeats"])
                )
                records.extend(group_records)
                for name, pid in stack.pids().items():
                    rss[f"{'+'.join(group)}: {name}"] = round((proc_status_kib(pid) or 0) / 1024)
        execution = {}
        for stage_info in describe.values():
            for name, info in stage_info.items():
                if isinstance(info, dict) and "execution" in info:
                    execution[name] = info["execution"]
        result["families"][family] = {
            "config": {**cfg, "size": wxh(cfg["size"]), "groups": groups},
            "layout": layout_note,
            "startup_ready_s": startup,
            "rss_mib": rss,
            "execution": execution,
            "summary": summarize_topologies(records),
            "requests": records,
        }
    return result


# --------------------------------------------------------------------------- 2. keras-cv


class _TimedModel:
    """Wraps a Keras model for keras-cv: times every predict_on_batch call."""

    def __init__(self, model: Any, name: str, totals: dict[str, float]) -> None:
        self.model = model
        self.name = name
        self.totals = totals

    def predict_on_batch(self, inputs: Any) -> Any:
        started = time.perf_counter()
        output = self.model.predict_on_batch(inputs)
        self.totals[self.name] = self.totals.get(self.name, 0.0) + time.perf_counter() - started
        return output


def worker_keras_cv(args: argparse.Namespace) -> Record:
    """In this (child) process: our Chain vs keras-cv's StableDiffusion, same models."""
    import keras_cv

    from shared.config import Settings
    from shared.pipeline.chain import Chain
    from shared.pipeline.types import DenoiseParams, GenerationParams

    width, height = args.kcv_size
    steps = args.kcv_steps
    settings = Settings(model="sd-v1", weights="random", sizes=[(width, height)])
    out: Record = {"settings": {"size": wxh((width, height)), "steps": steps, "batch": 1}}
    started = time.perf_counter()
    chain = Chain(settings)
    chain.load()  # builds, loads and warms the three stages, as a gateway does
    out["ours_build_and_warm_s"] = round(time.perf_counter() - started, 1)
    text_stage = chain.local["text_encoder"]
    diffusion_stage = chain.local["diffusion"]
    decoder_stage = chain.local["decoder"]
    out["ours_execution"] = diffusion_stage.models.strategy.as_dict()
    models = {
        "text_encoder": text_stage.models.text_encoder.model,
        "diffusion_model": diffusion_stage.models.diffusion[(width, height)].model,
        "decoder": decoder_stage.models.decoder[(width, height)].model,
    }
    loop = asyncio.new_event_loop()
    params = GenerationParams(
        prompt=PROMPT,
        negative_prompt=None,
        denoise=DenoiseParams(
            width=width,
            height=height,
            steps=steps,
            guidance_scale=GUIDANCE_SCALE,
            seed=SEED,
            n=1,
        ),
    )
    ours_stages: list[Record] = []

    def ours() -> None:
        result = loop.run_until_complete(chain.generate(params))
        assert result.images.shape == (1, height, width, 3)
        ours_stages.append({k: v.as_dict() for k, v in result.timings.items()})

    def make_kcv(jit_compile: bool) -> tuple[Any, dict[str, float]]:
        sd = keras_cv.models.StableDiffusion(
            img_height=height, img_width=width, jit_compile=jit_compile
        )
        totals: dict[str, float] = {}
        # The same Keras models our stages run (same random weights); keras-cv's own
        # properties would build new ones and compile them with jit_compile itself.
        sd._tokenizer = text_stage.tokenizer._tokenizer
        sd._text_encoder = _TimedModel(models["text_encoder"], "text_encoder", totals)
        sd._diffusion_model = _TimedModel(models["diffusion_model"], "diffusion", totals)
        sd._decoder = _TimedModel(models["decoder"], "decoder", totals)
        return sd, totals

    kcv_eager, eager_totals = make_kcv(False)
    kcv_xla, xla_totals = make_kcv(True)
    breakdown: dict[str, list[Record]] = {"keras_cv_jit_false": [], "keras_cv_jit_true": []}

    def kcv_call(sd: Any, totals: dict[str, float], key: str) -> Callable[[], None]:
        def call() -> None:
            totals.clear()
            images = sd.text_to_image(PROMPT, num_steps=steps, seed=SEED)
            assert images.shape == (1, height, width, 3)
            breakdown[key].append({k: round(v * 1000, 1) for k, v in totals.items()})

        return call

    def timed(fn: Callable[[], None]) -> float:
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    calls = {
        "ours": ours,
        "keras_cv_jit_false": kcv_call(kcv_eager, eager_totals, "keras_cv_jit_false"),
    }
    # Both run on the same models compiled with jit_compile=False (our auto strategy on
    # CPU); first calls, then alternating timed calls so load drift hits both alike.
    first = {name: round(timed(fn) * 1000, 1) for name, fn in calls.items()}
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for i in range(args.kcv_repeats):
        order = list(calls) if i % 2 == 0 else list(reversed(calls))
        for name in order:
            samples[name].append(timed(calls[name]))
            log(f"keras_cv: {name} {samples[name][-1]:.2f} s")
    # keras-cv's default: jit_compile=True on each model, as its properties do.
    for model in models.values():
        model.compile(jit_compile=True)
    out["xla_effective"] = {k: bool(m.jit_compile) for k, m in models.items()}
    log("keras_cv: jit_compile=True first call (XLA compilation)")
    xla_call = kcv_call(kcv_xla, xla_totals, "keras_cv_jit_true")
    first["keras_cv_jit_true"] = round(timed(xla_call) * 1000, 1)
    samples["keras_cv_jit_true"] = []
    for _ in range(args.kcv_xla_repeats):
        samples["keras_cv_jit_true"].append(timed(xla_call))
        log(f"keras_cv: jit_compile=True {samples['keras_cv_jit_true'][-1]:.2f} s")
    out["first_call_ms"] = first
    out["steady"] = {name: stats_ms(s) for name, s in samples.items()}
    out["ours_stage_timings"] = ours_stages
    out["keras_cv_model_ms"] = breakdown
    loop.close()
    chain_close = getattr(chain, "aclose", None)
    if chain_close is not None:
        with contextlib.suppress(Exception):
            asyncio.run(chain_close())
    return out


def section_keras_cv(plan: Record, args: argparse.Namespace, log_dir: Path) -> Record:
    with tempfile.TemporaryDirectory() as tmp:
        worker_out = Path(tmp) / "keras_cv.json"
        log_path = log_dir / "keras_cv-worker.log"
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker",
            "keras_cv",
            "--worker-out",
            str(worker_out),
            "--kcv-size",
            wxh(plan["size"]),
            "--kcv-steps",
            str(plan["steps"]),
            "--kcv-repeats",
            str(plan["repeats"]),
            "--kcv-xla-repeats",
            str(plan["xla_repeats"]),
        ]
        log(f"keras_cv: child process, log {log_path}")
        with log_path.open("wb") as log_file:
            code = subprocess.call(
                command, cwd=REPO_ROOT, stdout=log_file, stderr=subprocess.STDOUT, timeout=3600
            )
        if code != 0 or not worker_out.exists():
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
            raise RuntimeError(f"keras_cv worker exited with {code}:\n{tail}")
        result: Record = json.loads(worker_out.read_text())
    steady = result["steady"]
    ours = steady["ours"]["median_ms"]
    xla = steady["keras_cv_jit_true"]["median_ms"]
    eager = steady["keras_cv_jit_false"]["median_ms"]
    result["ratios"] = {
        "ours_vs_keras_cv_default": ratio(ours, xla),
        "ours_vs_keras_cv_jit_false": ratio(ours, eager),
        "ours_vs_keras_cv_best": ratio(ours, min(xla, eager)),
        "keras_cv_best": "jit_compile=True" if xla < eager else "jit_compile=False",
    }
    return result


# --------------------------------------------------------------------------- 3. concurrency


async def closed_loop(
    url: str,
    body: Mapping[str, Any],
    clients: int,
    warmup_s: float,
    window_s: float,
) -> Record:
    """`clients` closed-loop clients for warmup + window seconds, then cancel the rest.

    Throughput counts the images of requests that completed inside the window; latency is
    over those requests. Requests still running at the end are cancelled (the server
    frees their rows at the next step) and not counted.
    """
    records: list[Record] = []
    t0 = time.perf_counter()
    stop_issuing = t0 + warmup_s + window_s
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_S, limits=limits) as client:

        async def run_client(i: int) -> None:
            while time.perf_counter() < stop_issuing:
                started = time.perf_counter()
                status: Any
                images = 0
                timings: Record = {}
                try:
                    response = await client.post(f"{url}{GENERATIONS}", json=body)
                    status = response.status_code
                    if status == 200:
                        payload = response.json()
                        images = len(payload["data"])
                        timings = payload.get("timings", {})
                except httpx.TimeoutException:
                    status = "timeout"
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                records.append(
                    {
                        "client": i,
                        "start": started - t0,
                        "end": time.perf_counter() - t0,
                        "status": status,
                        "images": images,
                        "timings": timings,
                    }
                )

        tasks = [asyncio.create_task(run_client(i)) for i in range(clients)]
        await asyncio.sleep(max(0.0, stop_issuing - time.perf_counter()))
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    lo, hi = warmup_s, warmup_s + window_s
    done = [r for r in records if r["status"] == 200 and lo <= r["end"] <= hi]
    latencies = [r["end"] - r["start"] for r in done]
    errors: dict[str, int] = {}
    for r in records:
        if r["status"] != 200:
            errors[str(r["status"])] = errors.get(str(r["status"]), 0) + 1
    diffusion_queue = [float(r["timings"].get("diffusion", {}).get("queue_ms", 0)) for r in done]
    diffusion_compute = [
        float(r["timings"].get("diffusion", {}).get("compute_ms", 0)) for r in done
    ]
    return {
        "clients": clients,
        "warmup_s": round(warmup_s, 1),
        "window_s": round(window_s, 1),
        "completed_in_window": len(done),
        "images_per_s": round(sum(r["images"] for r in done) / window_s, 3),
        "latency": stats_ms(latencies),
        "diffusion_queue_ms_median": round(float(np.median(diffusion_queue)), 1) if done else None,
        "diffusion_compute_ms_median": round(float(np.median(diffusion_compute)), 1)
        if done
        else None,
        "errors": errors,
        "requests_started": len(records),
    }


async def concurrency_levels(
    stack: Stack, modes: Mapping[str, str], cfg: Record, body: Mapping[str, Any]
) -> dict[str, list[Record]]:
    """Every level of clients, for each mode (gateway name -> its diffusion service)."""
    levels: dict[str, list[Record]] = {mode: [] for mode in modes}
    single_s: dict[str, float] = {}
    async with httpx.AsyncClient(timeout=30) as client:
        # Warm every path once (the first requests of a process are slower).
        for mode in modes:
            await client.post(f"{stack.url(mode)}{GENERATIONS}", json=body, timeout=300)
        for i, clients in enumerate(cfg["clients"]):
            order = list(modes) if i % 2 == 0 else list(reversed(list(modes)))
            for mode in order:
                # Long enough for a closed loop to reach its steady state: at least one
                # expected latency (clients x a lone request's latency).
                lone = single_s.get(mode)
                expected = clients * lone if lone else 0.0
                if expected > 0.8 * CLIENT_TIMEOUT_S:
                    log(f"  {mode} {clients} clients: skipped (would time out)")
                    continue
                warmup = max(cfg["warmup_s"], expected)
                window = max(cfg["window_s"], cfg["window_factor"] * expected)
                urls = {
                    "text_encoder": stack.url("text_encoder"),
                    "diffusion": stack.url(modes[mode]),
                    "decoder": stack.url("decoder"),
                }
                before = {k: await batch_rows(client, u) for k, u in urls.items()}
                load = load_average()
                cpu_before, t_level = cpu_snapshot(stack.pids()), time.perf_counter()
                level = await closed_loop(stack.url(mode), body, clients, warmup, window)
                level["cores_used"] = cores_used(
                    cpu_before, cpu_snapshot(stack.pids()), time.perf_counter() - t_level
                )
                idle = await wait_idle(client, stack.url(modes[mode]), 180)
                after = {k: await batch_rows(client, u) for k, u in urls.items()}
                # Each service's /metrics labels its model by stage name.
                level["batching"] = {k: rows_between(before[k], after[k]).get(k, {}) for k in urls}
                level["load_1m_before"] = load[0]
                level["idle_wait_s"] = idle
                stack.check_alive()
                if clients == 1 and level["latency"].get("median_ms"):
                    single_s[mode] = level["latency"]["median_ms"] / 1000
                levels[mode].append(level)
                lat = level["latency"]
                log(
                    f"  {mode} {clients:>2} clients: {level['images_per_s']:.2f} img/s, "
                    f"p50 {lat.get('p50_ms')} ms, p95 {lat.get('p95_ms')} ms, "
                    f"n={lat.get('n')}, errors {level['errors']}"
                )
    return levels


def section_concurrency(plan: Record, args: argparse.Namespace, log_dir: Path) -> Record:
    result: Record = {"families": {}}
    for family, cfg in plan.items():
        log(f"concurrency: {family} {wxh(cfg['size'])} steps={cfg['steps']}")
        # One text encoder and one decoder service; two diffusion services (continuous
        # batching on / off), each behind its own three-endpoints gateway.
        stages = {
            "text_encoder": ("text_encoder", {}),
            "diffusion_cb": ("diffusion", {"SDSERVE_CONTINUOUS_BATCHING": "true"}),
            "diffusion_nocb": ("diffusion", {"SDSERVE_CONTINUOUS_BATCHING": "false"}),
            "decoder": ("decoder", {}),
        }
        modes = {"cb": "diffusion_cb", "nocb": "diffusion_nocb"}
        gateways = {
            mode: ({"text_encoder": "text_encoder", "diffusion": d, "decoder": "decoder"}, {})
            for mode, d in modes.items()
        }
        body = generation_body(cfg["size"], cfg["steps"])
        with Stack(
            f"concurrency-{family}", family_env(family, cfg["size"]), stages, gateways, log_dir
        ) as stack:
            log(f"  MemAvailable {mem_available_gib()} GiB with both diffusion services up")
            levels = asyncio.run(concurrency_levels(stack, modes, cfg, body))
            with httpx.Client(timeout=30) as client:
                info = client.get(f"{stack.url('diffusion_cb')}/v1/info").json()
            rss = {
                name: round((proc_status_kib(pid) or 0) / 1024)
                for name, pid in stack.pids().items()
            }
        result["families"][family] = {
            "config": {**cfg, "size": wxh(cfg["size"])},
            "topology": "three-endpoints gateway (text encoder and decoder services shared "
            "by the two gateways; one diffusion service per mode)",
            "diffusion_info": {k: info.get(k) for k in ("execution", "batching", "sizes")},
            "startup_ready_s": stack.ready_s,
            "rss_mib_at_end": rss,
            "levels": levels,
        }
    return result


# --------------------------------------------------------------------------- 4. overload


class RssSampler:
    """Samples VmRSS of some processes every `interval` seconds, tagged by phase."""

    def __init__(self, pids: Mapping[str, int], interval: float = 0.25) -> None:
        self.pids = dict(pids)
        self.interval = interval
        self.phase = "idle"
        self.samples: list[tuple[str, str, int]] = []  # (phase, process, KiB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            phase = self.phase
            for name, pid in self.pids.items():
                kib = proc_status_kib(pid)
                if kib is not None:
                    self.samples.append((phase, name, kib))
            self._stop.wait(self.interval)

    def summary(self) -> Record:
        out: Record = {}
        for name in self.pids:
            entry: Record = {}
            for phase in dict.fromkeys(p for p, _, _ in self.samples):
                values = [k for p, n, k in self.samples if p == phase and n == name]
                if values:
                    entry[phase] = {
                        "median_mib": round(float(np.median(values)) / 1024, 1),
                        "max_mib": round(max(values) / 1024, 1),
                        "samples": len(values),
                    }
            entry["vm_hwm_mib_at_end"] = (
                round((proc_status_kib(self.pids[name], "VmHWM") or 0) / 1024, 1) or None
            )
            out[name] = entry
        return out


async def overload_phase(
    url: str,
    body: Mapping[str, Any],
    clients: int,
    duration_s: float,
    max_requests: int,
    pause_after_503_s: float,
) -> Record:
    """Closed loop without cancelling: every request runs to its answer (or the client
    timeout), so a request that hangs shows up as a timeout."""
    records: list[Record] = []
    refusals: dict[str, int] = {}
    t0 = time.perf_counter()
    stop_issuing = t0 + duration_s
    issued = 0
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_S, limits=limits) as client:

        async def run_client() -> None:
            nonlocal issued
            while time.perf_counter() < stop_issuing and issued < max_requests:
                issued += 1
                started = time.perf_counter()
                status: Any
                detail = ""
                try:
                    response = await client.post(f"{url}{GENERATIONS}", json=body)
                    status = response.status_code
                    if status == 200:
                        response.json()
                    else:
                        error = response.json().get("error") or {}
                        status = f"{status} {error.get('type')}"
                        message = str(error.get("message", ""))
                        where = (
                            message.split(" queue is full")[0]
                            if "queue is full" in message
                            else message[:60]
                        )
                        refusals[where] = refusals.get(where, 0) + 1
                except httpx.TimeoutException:
                    status = "timeout"
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                    detail = repr(exc)[:300]
                except ValueError:
                    status = "bad body"
                records.append(
                    {
                        "status": status,
                        "start_s": round(started - t0, 3),
                        "seconds": round(time.perf_counter() - started, 3),
                        "detail": detail,
                    }
                )
                if status != 200 and pause_after_503_s:
                    await asyncio.sleep(pause_after_503_s)

        await asyncio.gather(*(run_client() for _ in range(clients)))
    counts: dict[str, int] = {}
    for r in records:
        counts[str(r["status"])] = counts.get(str(r["status"]), 0) + 1
    ok = [r["seconds"] for r in records if r["status"] == 200]
    refused = [r["seconds"] for r in records if str(r["status"]).startswith("503")]
    elapsed = time.perf_counter() - t0
    return {
        "clients": clients,
        "duration_s": round(elapsed, 1),
        "requests": len(records),
        "status_counts": counts,
        "refused_by": refusals,
        "ok_latency": stats_ms(ok),
        "refused_latency": stats_ms(refused),
        "ok_images_per_s": round(len(ok) / elapsed, 3),
        # Anything that was neither 200 nor 503, with when it started and how long it took.
        "other_outcomes": [
            r for r in records if r["status"] != 200 and not str(r["status"]).startswith("503")
        ][:20],
        "all_200_or_503": all(
            r["status"] == 200 or str(r["status"]).startswith("503") for r in records
        ),
    }


def section_overload(plan: Record, args: argparse.Namespace, log_dir: Path) -> Record:
    queue = str(plan["queue_size"])
    stages = {kind: (kind, {"SDSERVE_QUEUE_SIZE": queue}) for kind in STAGE_MODULES}
    gateways = {"central": ({k: k for k in STAGE_MODULES}, {"SDSERVE_QUEUE_SIZE": queue})}
    body = generation_body(plan["size"], plan["steps"])
    result: Record = {"config": {**plan, "size": wxh(plan["size"])}}
    with Stack("overload-tiny", family_env("tiny", plan["size"]), stages, gateways, log_dir) as st:
        with RssSampler(st.pids()) as sampler:

            async def run() -> None:
                async with httpx.AsyncClient(timeout=60) as client:
                    await client.post(f"{st.url('central')}{GENERATIONS}", json=body)
                await asyncio.sleep(2)
                sampler.phase = "moderate"
                log(f"overload: moderate load, {plan['moderate_clients']} clients")
                cpu, t = cpu_snapshot(st.pids()), time.perf_counter()
                result["moderate"] = await overload_phase(
                    st.url("central"),
                    body,
                    plan["moderate_clients"],
                    plan["moderate_s"],
                    10**9,
                    0.0,
                )
                result["moderate"]["load_1m"] = load_average()[0]
                result["moderate"]["cores_used"] = cores_used(
                    cpu, cpu_snapshot(st.pids()), time.perf_counter() - t
                )
                sampler.phase = "overload"
                log(f"overload: {plan['overload_clients']} clients, queues of {queue}")
                cpu, t = cpu_snapshot(st.pids()), time.perf_counter()
                result["overload"] = await overload_phase(
                    st.url("central"),
                    body,
                    plan["overload_clients"],
                    plan["overload_s"],
                    plan["max_requests"],
                    plan["pause_after_503_s"],
                )
                result["overload"]["load_1m"] = load_average()[0]
                result["overload"]["cores_used"] = cores_used(
                    cpu, cpu_snapshot(st.pids()), time.perf_counter() - t
                )
                sampler.phase = "after"
                await asyncio.sleep(3)
                # Still serving normally afterwards?
                async with httpx.AsyncClient(timeout=60) as client:
                    after = await client.post(f"{st.url('central')}{GENERATIONS}", json=body)
                result["after_status"] = after.status_code

            asyncio.run(run())
        st.check_alive()
        rss = sampler.summary()  # while the processes are alive (VmHWM)
    growth: Record = {}
    for name, entry in rss.items():
        moderate = entry.get("moderate", {}).get("max_mib")
        overload = entry.get("overload", {}).get("max_mib")
        growth[name] = ratio(overload, moderate)
    result["rss"] = rss
    result["rss_growth"] = growth
    for phase in ("moderate", "overload"):
        log(f"overload: {phase}: {result[phase]['status_counts']}")
    log(f"overload: RSS overload/moderate max: {growth}")
    return result


# --------------------------------------------------------------------------- 5. wire


def b64_json(arrays: Mapping[str, np.ndarray]) -> bytes:
    """What a JSON API would send: each tensor base64 of its raw bytes (float32 as
    float32), with dtype and shape."""
    return json.dumps(
        {
            name: {
                "dtype": str(a.dtype),
                "shape": list(a.shape),
                "b64": base64.b64encode(np.ascontiguousarray(a).tobytes()).decode("ascii"),
            }
            for name, a in arrays.items()
        }
    ).encode()


def json_lists(arrays: Mapping[str, np.ndarray]) -> int:
    """Length of the same tensors as JSON number lists (TF Serving REST style)."""
    return len(json.dumps({name: a.tolist() for name, a in arrays.items()}).encode())


def _best_of_ms(fn: Callable[[], Any], repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return round(min(times) * 1000, 2)


def codec_times(arrays: Mapping[str, np.ndarray]) -> Record:
    """Encode and decode milliseconds (best of 5): npz with the stages' checked decode,
    and base64 JSON."""
    from shared.wire import TensorSpec, decode_npz, encode_npz

    spec = {
        k: TensorSpec(str(v.dtype), tuple(v.shape), allow_fp16=v.dtype == np.float32)
        for k, v in arrays.items()
    }
    npz_body = encode_npz(arrays)
    json_body = b64_json(arrays)

    def decode_json() -> None:
        for item in json.loads(json_body).values():
            raw = base64.b64decode(item["b64"])
            np.frombuffer(raw, dtype=item["dtype"]).reshape(item["shape"])

    return {
        "npz_encode_ms": _best_of_ms(lambda: encode_npz(arrays)),
        "npz_decode_checked_ms": _best_of_ms(lambda: decode_npz(npz_body, spec, max_bytes=1 << 30)),
        "b64_json_encode_ms": _best_of_ms(lambda: b64_json(arrays)),
        "b64_json_decode_ms": _best_of_ms(decode_json),
    }


def section_wire(plan: Record, args: argparse.Namespace, log_dir: Path) -> Record:
    from shared.families import get_family
    from shared.wire import encode_npz

    rng = np.random.default_rng(0)
    result: Record = {"shapes": {}}
    for family_name, size in plan["shapes"].items():
        spec = get_family(family_name).spec
        width, height = size
        f = spec.downsampling_factor
        for n in plan["n"]:
            context = rng.standard_normal((1, spec.max_tokens, spec.context_dim), np.float32)
            uncond = rng.standard_normal((1, spec.max_tokens, spec.context_dim), np.float32)
            latent = rng.standard_normal((n, height // f, width // f, spec.latent_channels))
            latent = latent.astype(np.float32)
            images = rng.integers(0, 256, (n, height, width, 3), dtype=np.uint8)
            # The five bodies of one request, as central and the stages exchange them.
            bodies = {
                "text encoder -> central": {
                    "context": context,
                    "unconditional_context": uncond,
                    "token_count": np.asarray([9], np.int32),
                    "truncated": np.asarray([False]),
                },
                "central -> diffusion": {"context": context, "unconditional_context": uncond},
                "diffusion -> central": {"latent": latent},
                "central -> decoder": {"latent": latent},
                "decoder -> central": {"images": images},
            }
            rows: list[Record] = []
            for hop, arrays in bodies.items():
                rows.append(
                    {
                        "hop": hop,
                        "tensors": {k: list(v.shape) for k, v in arrays.items()},
                        "npz_fp32": len(encode_npz(arrays)),
                        "npz_fp16": len(encode_npz(arrays, fp16=True)),
                        "b64_json_fp32": len(b64_json(arrays)),
                        "json_lists": json_lists(arrays),
                        "raw_fp32": int(sum(a.nbytes for a in arrays.values())),
                    }
                )
            total = {
                k: sum(r[k] for r in rows)
                for k in ("npz_fp32", "npz_fp16", "b64_json_fp32", "json_lists", "raw_fp32")
            }
            # Encode + decode cost of the biggest body (checked decode, as the stages do).
            big = max(bodies.values(), key=lambda a: sum(x.nbytes for x in a.values()))
            codec_ms = codec_times(big)
            result["shapes"][f"{family_name} {wxh(size)} n={n}"] = {
                "hops": rows,
                "total": total,
                "b64_json_over_npz_fp32": ratio(total["b64_json_fp32"], total["npz_fp32"]),
                "npz_fp16_over_fp32": ratio(total["npz_fp16"], total["npz_fp32"]),
                "codec_of_biggest_body": codec_ms,
            }
    return result


# --------------------------------------------------------------------------- 6. locust


def section_locust(plan: Record, args: argparse.Namespace, log_dir: Path) -> Record:
    if importlib.util.find_spec("locust") is None:
        return {"status": "skipped: locust is not installed (pip install locust)"}
    stages = {kind: (kind, {}) for kind in STAGE_MODULES}
    gateways = {"central": ({k: k for k in STAGE_MODULES}, {})}
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


# --------------------------------------------------------------------------- report

SECTION_RUNNERS: dict[str, Callable[[Record, argparse.Namespace, Path], Record]] = {
    "topologies": section_topologies,
    "keras_cv": section_keras_cv,
    "concurrency": section_concurrency,
    "overload": section_overload,
    "wire": section_wire,
    "locust": section_locust,
}


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def verdict(ok: bool | None) -> str:
    return "—" if ok is None else ("**met**" if ok else "**not met**")


def level_of(levels: list[Record], clients: int) -> Record | None:
    return next((lv for lv in levels if lv["clients"] == clients), None)


def evaluate_targets(sections: Record) -> list[Record]:
    """Each target of the issue: measured value, threshold, met or not."""
    out: list[Record] = []
    topo = sections.get("topologies", {}).get("families", {}).get("sd-v1", {}).get("summary")
    if topo:
        value = topo.get("three-endpoints", {}).get("ratio_to_all_in_one")
        out.append(
            {
                "target": "sd-v1 128x128: three-endpoints / all-in-one median latency ≤ 1.05",
                "value": value,
                "met": None if value is None else value <= TARGETS["topology_ratio_max"],
            }
        )
        value = topo.get("three-endpoints", {}).get("ratio_at_equal_compute")
        if value is not None:
            out.append(
                {
                    "target": "the same ratio at equal model compute (what the topology "
                    "adds, free of load drift) ≤ 1.05",
                    "value": value,
                    "met": value <= TARGETS["topology_ratio_max"],
                }
            )
    kcv = sections.get("keras_cv", {}).get("ratios")
    if kcv:
        value = kcv.get("ours_vs_keras_cv_default")
        out.append(
            {
                "target": "ours ≤ 0.5x keras-cv default (jit_compile=True), steady state",
                "value": value,
                "met": None if value is None else value <= TARGETS["vs_keras_cv_default_max"],
            }
        )
        value = kcv.get("ours_vs_keras_cv_best")
        out.append(
            {
                "target": "ours never slower than keras-cv's best setting "
                f"({kcv.get('keras_cv_best')})",
                "value": value,
                "met": None if value is None else value <= TARGETS["vs_keras_cv_best_max"],
            }
        )
    tiny = sections.get("concurrency", {}).get("families", {}).get("tiny", {}).get("levels")
    if tiny:
        cb8, nocb8 = level_of(tiny["cb"], 8), level_of(tiny["nocb"], 8)
        if cb8 and nocb8:
            value = ratio(cb8["images_per_s"], nocb8["images_per_s"])
            out.append(
                {
                    "target": "tiny 64x64, 8 clients: CB throughput ≥ 2x no-CB",
                    "value": value,
                    "met": None if value is None else value >= TARGETS["cb_throughput_min"],
                }
            )
        cb1, nocb1 = level_of(tiny["cb"], 1), level_of(tiny["nocb"], 1)
        if cb1 and nocb1:
            value = ratio(cb1["latency"].get("p50_ms"), nocb1["latency"].get("p50_ms"))
            out.append(
                {
                    "target": "tiny 64x64, 1 client: CB p50 latency ≤ 1.1x no-CB",
                    "value": value,
                    "met": None if value is None else value <= TARGETS["cb_lone_latency_max"],
                }
            )
    over = sections.get("overload", {})
    if over.get("overload"):
        ok = bool(over["overload"]["all_200_or_503"] and over["moderate"]["all_200_or_503"])
        counts = over["overload"]["status_counts"]
        out.append(
            {
                "target": "overload: every request answered 200 or 503, none hangs",
                "value": ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())),
                "met": ok,
            }
        )
        growth = {k: v for k, v in over.get("rss_growth", {}).items() if v is not None}
        if growth:
            worst = max(growth.values())
            out.append(
                {
                    "target": "overload: each process's RSS within 10% of moderate load",
                    "value": f"worst {worst:.3f}x ({max(growth, key=lambda k: growth[k])})",
                    "met": worst <= TARGETS["rss_growth_max"],
                }
            )
    return out


def _median_of(values: list[float]) -> float | None:
    return float(np.median(values)) if values else None


def findings(sections: Record) -> list[str]:
    """Where the time goes, computed from the numbers (one bullet per observation)."""
    out: list[str] = []
    fams = sections.get("topologies", {}).get("families", {})
    for family, entry in fams.items():
        s = entry.get("summary", {})
        aio, tep = s.get("all-in-one"), s.get("three-endpoints")
        if not (aio and tep):
            continue
        extra = tep["overhead_ms"] - aio["overhead_ms"]
        base = aio["e2e"]["median_ms"]
        out.append(
            f"**Topologies, {family} {entry['config']['size']}**: three-endpoints adds "
            f"{extra:.0f} ms per request to all-in-one's serving overhead "
            f"({tep['transfer_total_ms']:.0f} ms in the three stage calls' transfers, i.e. "
            f"about {tep['transfer_total_ms'] / 3:.0f} ms per HTTP hop with npz encoding and "
            f"checks), {100 * extra / base:.1f}% of all-in-one's {base:.0f} ms median."
            + (
                f" The raw ratio ({tep['ratio_to_all_in_one']:.3f}) differs from that mostly "
                "through the spread of model compute between requests (median "
                f"{tep['compute_ms']:.0f} vs {aio['compute_ms']:.0f} ms for the same models "
                "and inputs), i.e. load from other processes, not the topology."
                if abs(tep["compute_ms"] / aio["compute_ms"] - 1) > 0.03
                else ""
            )
        )
        first = [r for r in entry.get("requests", []) if r["round"] == 0]
        aio_first = next((r for r in first if r["topology"] == "all-in-one"), None)
        if aio_first:
            comp = sum(float(v.get("compute_ms", 0)) for v in aio_first["timings"].values())
            out.append(
                f"**First request, {family}**: all-in-one's first request took "
                f"{aio_first['e2e_ms']:.0f} ms ({comp:.0f} ms of model compute) against a "
                f"median of {base:.0f} ms ({aio['compute_ms']:.0f} ms) afterwards, although "
                "every stage warms up before /readyz: building each later stage calls "
                "`keras.utils.set_random_seed`, whose `tf.random.set_seed` clears "
                "TensorFlow's kernel cache, so the warmed functions of the stages built "
                "before it are instantiated again on the first real request (the "
                "three-endpoints services build one stage each and do not show it)."
            )
    kcv = sections.get("keras_cv", {})
    if kcv.get("steady"):
        per = kcv.get("keras_cv_model_ms", {})

        def med(key: str, part: str) -> float | None:
            calls = per.get(key, [])[1:]
            return _median_of([c.get(part, 0.0) for c in calls])

        u_xla, u_eager = (
            med("keras_cv_jit_true", "diffusion"),
            med("keras_cv_jit_false", "diffusion"),
        )
        d_xla, d_eager = med("keras_cv_jit_true", "decoder"), med("keras_cv_jit_false", "decoder")
        t_xla = med("keras_cv_jit_true", "text_encoder")
        t_eager = med("keras_cv_jit_false", "text_encoder")
        st = kcv["steady"]
        first_xla = kcv["first_call_ms"]["keras_cv_jit_true"]
        compile_s = (first_xla - st["keras_cv_jit_true"]["median_ms"]) / 1000
        faster = [
            name
            for name, x, e in (("text encoder", t_xla, t_eager), ("decoder", d_xla, d_eager))
            if x and e and x < 0.9 * e
        ]
        if u_xla and u_eager and d_xla and d_eager and t_xla and t_eager:
            out.append(
                f"**keras-cv**: its default is slower because XLA makes the UNet "
                f"{u_xla / u_eager:.1f}x slower on this CPU ({u_xla:.0f} vs {u_eager:.0f} ms for "
                f"all steps), while it makes the decoder {d_eager / d_xla:.1f}x faster "
                f"({d_xla:.0f} vs {d_eager:.0f} ms) and the text encoder "
                f"{t_eager / t_xla:.2f}x ({t_xla:.0f} vs {t_eager:.0f} ms); its first call "
                f"adds {compile_s:.0f} s "
                "of compilation. With jit_compile=False keras-cv makes the same model calls as "
                "ours (separate CFG: two batch-1 UNet calls per step), so the two differ by "
                "less than their run-to-run spread (p10-p90 "
                f"{st['ours']['p10_ms']:.0f}-{st['ours']['p90_ms']:.0f} vs "
                f"{st['keras_cv_jit_false']['p10_ms']:.0f}-{st['keras_cv_jit_false']['p90_ms']:.0f}"
                " ms)."
                + (
                    f" XLA per component (on for the {' and '.join(faster)}, off for the UNet) "
                    "would beat both on this CPU."
                    if faster
                    else ""
                )
            )
    conc = sections.get("concurrency", {}).get("families", {})
    for family, entry in conc.items():
        cb, nocb = entry["levels"]["cb"], entry["levels"]["nocb"]
        lone_cb, lone_nocb = level_of(cb, 1), level_of(nocb, 1)
        top = max((lv["clients"] for lv in cb), default=None)
        hi_cb = level_of(cb, 8) or (level_of(cb, top) if top else None)
        if not (lone_cb and hi_cb and lone_nocb):
            continue
        rows = (hi_cb.get("batching", {}).get("diffusion") or {}).get("mean_rows_per_call")
        step_ratio = (hi_cb["latency"].get("p50_ms") or 0) / (lone_cb["latency"].get("p50_ms") or 1)
        out.append(
            f"**Continuous batching, {family}**: at {hi_cb['clients']} clients the diffusion "
            f"service ran {rows} rows per UNet call (1 without CB), and a request took "
            f"{step_ratio:.1f}x a lone request's latency for {rows} times the rows, so "
            f"throughput went from {lone_nocb['images_per_s']:.2f} (one at a time) to "
            f"{hi_cb['images_per_s']:.2f} images/s ({hi_cb['completed_in_window']} requests "
            "completed in the window). Without CB throughput stays at one request's rate "
            "whatever the concurrency, and latency grows with the queue; a lone request costs "
            "the same either way (rows are never held back waiting for company)."
            + (
                " A UNet call here costs nearly rows x a one-row call: the sd-v1 UNet is "
                "compute-bound on 2 CPUs, so batching mostly saves per-call overhead and "
                "throughput gains are small (and these few samples are noisy)."
                if step_ratio > 0.8 * (rows or 1)
                else ""
            )
        )
    over = sections.get("overload", {})
    if over.get("overload") and over.get("moderate"):
        o, m = over["overload"], over["moderate"]
        refused = o.get("refused_by", {})
        cores_o, cores_m = o.get("cores_used", {}), m.get("cores_used", {})
        # The gateway's own early refusal (diffusion refused within its Retry-After) says
        # "it refused a request just now"; every other 503 came from a stage.
        early = sum(v for k, v in refused.items() if "just now" in k)
        by = ", ".join(f"{k}: {v}" for k, v in refused.items() if "just now" not in k)
        total = sum(refused.values())
        out.append(
            f"**Overload**: {early} of {total} refusals were decided by the gateway before "
            "any stage worked (the diffusion stage had refused a request within its "
            f"Retry-After); the rest came from the stages ({by}). A 503 took "
            f"{o['refused_latency'].get('p50_ms', 0):.0f} ms (p50) against "
            f"{o['ok_latency'].get('p50_ms', 0):.0f} ms for an image; goodput went from "
            f"{m['ok_images_per_s']:.2f} (moderate load) to {o['ok_images_per_s']:.2f} "
            f"images/s; CPU cores used: central {cores_m.get('central')} -> "
            f"{cores_o.get('central')}, text encoder {cores_m.get('text_encoder')} -> "
            f"{cores_o.get('text_encoder')}, diffusion {cores_m.get('diffusion')} -> "
            f"{cores_o.get('diffusion')}, and the benchmark's own clients "
            f"{cores_m.get('benchmark client')} -> {cores_o.get('benchmark client')} on the "
            f"same 2 CPUs ({o['clients']} clients, each retrying "
            f"{over.get('config', {}).get('pause_after_503_s', '?')} s after a refusal)."
        )
        others = {
            k: v for k, v in o["status_counts"].items() if k != "200" and not k.startswith("503")
        }
        if others:
            out.append(
                f"**Overload, other outcomes**: {others}: neither an image nor a 503 (the "
                "`other_outcomes` records in serving.json say what the client saw)."
            )
    wire = sections.get("wire", {}).get("shapes", {})
    for label, entry in wire.items():
        if label.startswith("sd-v1") and label.endswith("n=1"):
            t = entry["total"]
            out.append(
                f"**Wire, {label}**: {t['npz_fp32'] / 1e6:.2f} MB per request as npz fp32 "
                f"({t['npz_fp16'] / 1e6:.2f} MB with fp16 transport) vs "
                f"{t['b64_json_fp32'] / 1e6:.2f} MB as base64 JSON and "
                f"{t['json_lists'] / 1e6:.1f} MB as JSON lists; npz adds "
                f"{t['npz_fp32'] - t['raw_fp32']} bytes of headers to the raw tensors."
            )
    return out


def render_markdown(report: Record) -> str:
    sections = report["sections"]
    machine = report["machine"]
    lines = [
        "# Serving benchmarks",
        "",
        f"Measured by `benchmarks/serving.py` ({report['mode']} mode), last run "
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
        }[name]
        lines += renderer(section)
        lines.append("")
    return "\n".join(lines)


def render_topologies(section: Record) -> list[str]:
    lines = [
        "Each round sends the same request (fixed seed) to every gateway in a rotating "
        "order, one request at a time; the first round(s) are warm-up (a gateway's first "
        "request is slow, see below). All three gateways are alive at once and interleaved "
        "(for sd-v1: two UNets, all-in-one's and the diffusion service that three-endpoints "
        "and hybrid share), unless the layout line says otherwise. Stage columns are "
        "medians of the response's `timings`: total (q = queue, c = compute, t = transfer, "
        "the stage call's wall time minus its queue and compute: HTTP, npz "
        "encode/decode, validation). *Overhead* is latency minus the three stages' model "
        "compute (batch waits, transfers, gateway work: validation, PNG encoding, JSON, "
        "client HTTP); *at equal compute* is the ratio to all-in-one with each topology's "
        "overhead added to all-in-one's compute, i.e. what the topology itself costs, "
        "free of load drift between requests.",
        "",
    ]
    for family, entry in section.get("families", {}).items():
        cfg = entry["config"]
        summary = entry["summary"]
        lines += [
            f"### {family} {cfg['size']}, n={cfg['n']}, {cfg['steps']} steps "
            f"({cfg['repeats']} rounds after {cfg['warmup']} warm-up)",
            "",
            "| topology | median ms | p10-p90 ms | vs all-in-one | at equal compute | "
            "compute ms | overhead ms | text encoder ms | diffusion ms | decoder ms | "
            "transfer ms | gateway other ms |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for topology in TOPOLOGIES:
            s = summary.get(topology)
            if not s:
                continue
            st = s["stages"]

            def cell(stage: str, st: Record = st) -> str:
                p = st[stage]
                return (
                    f"{fmt(p['total_ms'])} (q {fmt(p['queue_ms'])}, c {fmt(p['compute_ms'])}, "
                    f"t {fmt(p['transfer_ms'])})"
                )

            lines.append(
                f"| {topology} | **{fmt(s['e2e']['median_ms'])}** | "
                f"{fmt(s['e2e']['p10_ms'])}-{fmt(s['e2e']['p90_ms'])} | "
                f"{fmt(s['ratio_to_all_in_one'], 3)} | {fmt(s.get('ratio_at_equal_compute'), 3)} | "
                f"{fmt(s.get('compute_ms'))} | {fmt(s.get('overhead_ms'))} | "
                f"{cell('text_encoder')} | "
                f"{cell('diffusion')} | {cell('decoder')} | {fmt(s['transfer_total_ms'])} | "
                f"{fmt(s['gateway_other_ms'])} |"
            )
        lines += [
            "",
            f"Layout: {entry.get('layout', 'interleaved')}. Same PNG bytes from every "
            f"topology and round: {'yes' if summary.get('_identical_images') else 'NO'}. "
            f"Execution strategy: {entry.get('execution', {}).get('diffusion')}. Start-up "
            f"(s until ready, processes loading concurrently): {entry.get('startup_ready_s')}. "
            f"RSS at the end, MiB: {entry.get('rss_mib')}.",
            "",
        ]
        first = [r for r in entry["requests"] if r["round"] == 0]
        if first:
            measured = {t: summary.get(t, {}).get("e2e", {}).get("median_ms") for t in TOPOLOGIES}
            lines += [
                "First request of each gateway (warm-up, not in the medians), ms: "
                + ", ".join(
                    f"{r['topology']} {fmt(r['e2e_ms'])} (median after: "
                    f"{fmt(measured.get(r['topology']))}; compute "
                    + ", ".join(f"{k} {fmt(v.get('compute_ms'))}" for k, v in r["timings"].items())
                    + ")"
                    for r in first
                )
                + ".",
                "",
            ]
    return lines


def render_keras_cv(section: Record) -> list[str]:
    s = section["settings"]
    steady = section["steady"]
    first = section["first_call_ms"]
    ratios = section["ratios"]
    rows = [
        ("ours: in-process all-in-one `Chain.generate`", "ours"),
        ("keras-cv `text_to_image`, jit_compile=False", "keras_cv_jit_false"),
        ("keras-cv `text_to_image`, jit_compile=True (default)", "keras_cv_jit_true"),
    ]
    lines = [
        f"sd-v1 at {s['size']}, {s['steps']} steps, batch 1, guidance 7.5, in one child "
        "process. keras-cv's `StableDiffusion` object is given the very Keras models our "
        "stages built (same random weights) through its `_tokenizer`, `_text_encoder`, "
        "`_diffusion_model` and `_decoder` attributes; for its default the models are "
        "compiled with `jit_compile=True`, as keras-cv's own properties do. Ours is the "
        "in-process `central.chain.Chain` (all-in-one, no HTTP, no PNG encoding; keras-cv "
        "returns arrays too) with the `auto` execution strategy "
        f"{section.get('ours_execution')}. Ours and keras-cv jit_compile=False alternate; "
        "jit_compile=True runs last (its first call compiles).",
        "",
        "| run | first call ms | steady median ms | p10-p90 ms | n | vs ours |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    ours = steady["ours"]["median_ms"]
    for label, key in rows:
        st = steady[key]
        lines.append(
            f"| {label} | {fmt(first.get(key))} | **{fmt(st['median_ms'])}** | "
            f"{fmt(st['p10_ms'])}-{fmt(st['p90_ms'])} | {st['n']} | "
            f"{fmt(ratio(st['median_ms'], ours), 2)}x |"
        )
    lines += [
        "",
        f"Ours / keras-cv default: **{fmt(ratios['ours_vs_keras_cv_default'], 3)}**; ours / "
        f"keras-cv jit_compile=False: **{fmt(ratios['ours_vs_keras_cv_jit_false'], 3)}**; "
        f"keras-cv's best setting here: {ratios['keras_cv_best']}. XLA in effect per model: "
        f"{section.get('xla_effective')}. Building and warming our stages took "
        f"{section.get('ours_build_and_warm_s')} s.",
        "",
        "Where the time goes (medians, ms): model calls inside keras-cv (summed "
        "`predict_on_batch` per model, per `text_to_image`) and our stages' compute:",
        "",
        "| run | text encoder | UNet (all steps) | decoder |",
        "|---|---:|---:|---:|",
    ]
    for key in ("keras_cv_jit_false", "keras_cv_jit_true"):
        calls = section["keras_cv_model_ms"].get(key, [])
        steady_calls = calls[1:] or calls  # the first one traced/compiled
        if steady_calls:
            med = {
                k: float(np.median([c.get(k, 0.0) for c in steady_calls]))
                for k in ("text_encoder", "diffusion", "decoder")
            }
            lines.append(
                f"| {key.replace('_', ' ')} | {fmt(med['text_encoder'])} | "
                f"{fmt(med['diffusion'])} | {fmt(med['decoder'])} |"
            )
    ours_t = section.get("ours_stage_timings", [])[1:]
    if ours_t:
        med = {
            k: float(np.median([t.get(k, {}).get("compute_ms", 0.0) for t in ours_t]))
            for k in ("text_encoder", "diffusion", "decoder")
        }
        lines.append(
            f"| ours (stage compute) | {fmt(med['text_encoder'])} | {fmt(med['diffusion'])} | "
            f"{fmt(med['decoder'])} |"
        )
    return lines


def render_concurrency(section: Record) -> list[str]:
    lines = [
        "Closed-loop clients (each sends its next request when the previous answers) "
        "against a three-endpoints gateway; the diffusion service runs with "
        "`SDSERVE_CONTINUOUS_BATCHING=true` (CB) or `false`, everything else default "
        "(`SDSERVE_MAX_BATCH=8`). Per level: a warm-up period, then a window; throughput "
        "counts images of requests completed in the window, latency is over those requests "
        "(p95 of few samples is close to their max). The warm-up stretches to at least one "
        "expected latency (clients x a lone request's) so the closed loop is in its steady "
        "state, and the window to a multiple of it (see below); levels whose expected "
        "latency exceeds 0.8x the 120 s client timeout are skipped. Requests still running "
        "at a window's end are cancelled (which also exercises cancellation). "
        "Rows/call is the diffusion service's mean batch (rows per UNet step call) in that "
        "level, from its `/metrics`.",
        "",
    ]
    for family, entry in section.get("families", {}).items():
        cfg = entry["config"]
        lines += [
            f"### {family} {cfg['size']}, {cfg['steps']} steps, n=1",
            "",
            "| clients | CB img/s | no-CB img/s | CB/no-CB | CB p50 ms | no-CB p50 ms | "
            "CB p95 ms | no-CB p95 ms | CB rows/call | no-CB rows/call | completed (CB, "
            "no-CB) | errors | load 1m |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
        ]
        cb_levels, nocb_levels = entry["levels"]["cb"], entry["levels"]["nocb"]
        for clients in cfg["clients"]:
            cb, nocb = level_of(cb_levels, clients), level_of(nocb_levels, clients)
            if not cb and not nocb:
                lines.append(f"| {clients} | skipped | | | | | | | | | | | |")
                continue

            def g(level: Record | None, *path: str) -> Any:
                value: Any = level
                for p in path:
                    value = value.get(p) if isinstance(value, dict) else None
                return value

            errors = {}
            for tag, level in (("CB", cb), ("no-CB", nocb)):
                if level and level["errors"]:
                    errors[tag] = level["errors"]
            lines.append(
                f"| {clients} | **{fmt(g(cb, 'images_per_s'), 2)}** | "
                f"**{fmt(g(nocb, 'images_per_s'), 2)}** | "
                f"{fmt(ratio(g(cb, 'images_per_s'), g(nocb, 'images_per_s')), 2)} | "
                f"{fmt(g(cb, 'latency', 'p50_ms'), 0)} | {fmt(g(nocb, 'latency', 'p50_ms'), 0)} | "
                f"{fmt(g(cb, 'latency', 'p95_ms'), 0)} | {fmt(g(nocb, 'latency', 'p95_ms'), 0)} | "
                f"{fmt(g(cb, 'batching', 'diffusion', 'mean_rows_per_call'), 2)} | "
                f"{fmt(g(nocb, 'batching', 'diffusion', 'mean_rows_per_call'), 2)} | "
                f"{fmt(g(cb, 'completed_in_window'))}, {fmt(g(nocb, 'completed_in_window'))} | "
                f"{errors or 'none'} | "
                f"{fmt(g(cb, 'load_1m_before'), 2)}, {fmt(g(nocb, 'load_1m_before'), 2)} |"
            )
        names: list[str] = []
        for level in cb_levels + nocb_levels:
            for name in level.get("cores_used", {}):
                if name not in names:
                    names.append(name)
        lines += [
            "",
            f"Diffusion service: {entry.get('diffusion_info', {}).get('execution')}. Warm-up "
            f"and window per level (s): CB {[(lv['warmup_s'], lv['window_s']) for lv in cb_levels]}"
            f", no-CB {[(lv['warmup_s'], lv['window_s']) for lv in nocb_levels]}. RSS at the "
            f"end, MiB: {entry.get('rss_mib_at_end')}.",
            "",
            "CPU cores used per process over each level (warm-up + window), where the time "
            "goes across processes:",
            "",
            "| clients | mode | " + " | ".join(names) + " |",
            "|---:|---|" + "---:|" * len(names),
        ]
        for clients in cfg["clients"]:
            for mode, levels in (("CB", cb_levels), ("no-CB", nocb_levels)):
                level = level_of(levels, clients)
                if level and level.get("cores_used"):
                    cores = level["cores_used"]
                    lines.append(
                        f"| {clients} | {mode} | "
                        + " | ".join(fmt(cores.get(n), 2) for n in names)
                        + " |"
                    )
        lines.append("")
    return lines


def render_overload(section: Record) -> list[str]:
    cfg = section["config"]
    lines = [
        f"tiny {cfg['size']}, {cfg['steps']} steps, three-endpoints, "
        f"`SDSERVE_QUEUE_SIZE={cfg['queue_size']}` on every process. Moderate load: "
        f"{cfg['moderate_clients']} closed-loop clients for {cfg['moderate_s']} s. Overload: "
        f"{cfg['overload_clients']} closed-loop clients for {cfg['overload_s']} s (at most "
        f"{cfg['max_requests']} requests; a client pauses {cfg['pause_after_503_s']} s after a "
        "refusal instead of honouring Retry-After, to keep the pressure on). Every request "
        "runs to its answer or the 120 s client timeout (no cancellation).",
        "",
        "| phase | clients | requests | status counts | refused by | 200 p50 / p95 ms | "
        "503 p50 / p95 ms | images/s | load 1m |",
        "|---|---:|---:|---|---|---:|---:|---:|---:|",
    ]
    for phase in ("moderate", "overload"):
        p = section[phase]
        lines.append(
            f"| {phase} | {p['clients']} | {p['requests']} | {p['status_counts']} | "
            f"{p.get('refused_by') or '—'} | "
            f"{fmt(p['ok_latency'].get('p50_ms'), 0)} / {fmt(p['ok_latency'].get('p95_ms'), 0)} | "
            f"{fmt(p['refused_latency'].get('p50_ms'), 0)} / "
            f"{fmt(p['refused_latency'].get('p95_ms'), 0)} | {fmt(p['ok_images_per_s'], 2)} | "
            f"{fmt(p.get('load_1m'), 2)} |"
        )
    lines += [
        "",
        "CPU cores used per process during each phase (from /proc/<pid>/stat; the 2 CPUs "
        "are shared with everything else on the machine):",
        "",
        "| phase | " + " | ".join(section["moderate"].get("cores_used", {})) + " |",
        "|---|" + "---:|" * len(section["moderate"].get("cores_used", {})),
    ]
    for phase in ("moderate", "overload"):
        cores = section[phase].get("cores_used", {})
        lines.append(f"| {phase} | " + " | ".join(fmt(v, 2) for v in cores.values()) + " |")
    lines += [
        "",
        f"A request after the overload: HTTP {section.get('after_status')}.",
        "",
        "Resident memory (VmRSS from /proc/<pid>/status, sampled every 0.25 s), MiB:",
        "",
        "| process | idle median | moderate median / max | overload median / max | "
        "after median | overload max / moderate max | VmHWM at end |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, entry in section["rss"].items():

        def m(phase: str, key: str, entry: Record = entry) -> str:
            return fmt(entry.get(phase, {}).get(key))

        lines.append(
            f"| {name} | {m('idle', 'median_mib')} | {m('moderate', 'median_mib')} / "
            f"{m('moderate', 'max_mib')} | {m('overload', 'median_mib')} / "
            f"{m('overload', 'max_mib')} | {m('after', 'median_mib')} | "
            f"**{fmt(section['rss_growth'].get(name), 3)}** | "
            f"{fmt(entry.get('vm_hwm_mib_at_end'))} |"
        )
    return lines


def render_wire(section: Record) -> list[str]:
    lines = [
        "Bytes of the five bodies one text-to-image request sends between central and the "
        "stages (three-endpoints), computed by encoding random arrays of the real shapes "
        "with `shared.wire.encode_npz` (uncompressed npz; fp16 = float32 tensors sent as "
        "float16, images stay uint8) against JSON with each tensor base64-encoded in its own "
        "dtype (float32 as float32) and, for scale, JSON number lists. The prompt JSON to "
        "the text encoder (~100 bytes) is left out.",
        "",
    ]
    for label, entry in section["shapes"].items():
        lines += [
            f"### {label}",
            "",
            "| hop | tensors | raw bytes | npz fp32 | npz fp16 | base64 JSON fp32 | JSON lists |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for row in entry["hops"]:
            tensors = ", ".join(f"{k} {tuple(v)}" for k, v in row["tensors"].items())
            lines.append(
                f"| {row['hop']} | {tensors} | {fmt(row['raw_fp32'])} | {fmt(row['npz_fp32'])} "
                f"| {fmt(row['npz_fp16'])} | {fmt(row['b64_json_fp32'])} | "
                f"{fmt(row['json_lists'])} |"
            )
        t = entry["total"]
        lines += [
            f"| **total** | | {fmt(t['raw_fp32'])} | **{fmt(t['npz_fp32'])}** | "
            f"**{fmt(t['npz_fp16'])}** | **{fmt(t['b64_json_fp32'])}** | {fmt(t['json_lists'])} |",
            "",
            f"base64 JSON / npz fp32 = {fmt(entry['b64_json_over_npz_fp32'], 3)}; npz fp16 / "
            f"fp32 = {fmt(entry['npz_fp16_over_fp32'], 3)}. Biggest body, best of 5: "
            f"{entry['codec_of_biggest_body']}.",
            "",
        ]
    return lines


def render_locust(section: Record) -> list[str]:
    if section.get("status", "").startswith("skipped"):
        return [section["status"]]
    lines = [
        f"`{section.get('command')}` against a tiny three-endpoints stack (exit code "
        f"{section.get('exit_code')}).",
        "",
        "| name | requests | failures | median ms | p95 ms | mean ms | req/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in section.get("stats", []):
        lines.append(
            f"| {row['Name']} | {row['Request Count']} | {row['Failure Count']} | "
            f"{row['Median Response Time']} | {row['95%']} | "
            f"{fmt(float(row['Average Response Time'] or 0), 0)} | "
            f"{fmt(float(row['Requests/s'] or 0), 2)} |"
        )
    return lines


def render_chart(report: Record, path: Path) -> str | None:
    families = report["sections"].get("concurrency", {}).get("families", {})
    if not families:
        return "no concurrency results"
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed"
    fig, axes = plt.subplots(len(families), 2, figsize=(11, 4 * len(families)), squeeze=False)
    colours = {"cb": "tab:blue", "nocb": "tab:orange"}
    labels = {"cb": "continuous batching", "nocb": "one request at a time"}
    for row, (family, entry) in enumerate(families.items()):
        cfg = entry["config"]
        ax_t, ax_l = axes[row]
        for mode in ("cb", "nocb"):
            levels = sorted(entry["levels"][mode], key=lambda lv: lv["clients"])
            if not levels:
                continue
            x = [lv["clients"] for lv in levels]
            ax_t.plot(
                x,
                [lv["images_per_s"] for lv in levels],
                "o-",
                color=colours[mode],
                label=labels[mode],
            )
            p50 = [(lv["latency"].get("p50_ms") or np.nan) / 1000 for lv in levels]
            p95 = [(lv["latency"].get("p95_ms") or np.nan) / 1000 for lv in levels]
            ax_l.plot(x, p50, "o-", color=colours[mode], label=f"{labels[mode]} p50")
            ax_l.plot(x, p95, "s--", color=colours[mode], alpha=0.7, label=f"{labels[mode]} p95")
        title = f"{family} {cfg['size']}, {cfg['steps']} steps"
        ax_t.set_title(f"throughput, {title}")
        ax_t.set_ylabel("images / s")
        ax_l.set_title(f"latency, {title}")
        ax_l.set_ylabel("seconds")
        for ax in (ax_t, ax_l):
            ax.set_xscale("log", base=2)
            ax.set_xticks(cfg["clients"], [str(c) for c in cfg["clients"]])
            ax.set_xlabel("concurrent clients")
            ax.grid(True, alpha=0.3)
            ax.set_ylim(bottom=0)
            ax.legend(fontsize=8)
    fig.suptitle(
        f"sdserve three-endpoints on {report['machine']['usable_cpus']} CPUs "
        f"({report['machine']['cpu_model']}), {report['finished_utc']}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
        report = json.loads(json_path.read_text())
        report["targets"] = evaluate_targets(report["sections"])
        if "concurrency" in report["sections"]:
            report["chart"] = render_chart(report, out_dir / "serving.png") or "serving.png"
        json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
        (out_dir / "serving.md").write_text(render_markdown(report))
        log(f"re-rendered {out_dir}/serving.md from serving.json")
        return 0
    previous: Record = {}
    if json_path.exists() and not args.fresh:
        with contextlib.suppress(ValueError):
            previous = json.loads(json_path.read_text())
    shown_argv = sys.argv[1:] if argv is None else argv
    report: Record = {
        "command": shlex.join(
            ["KERAS_BACKEND=tensorflow", "python", "benchmarks/serving.py", *shown_argv]
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
