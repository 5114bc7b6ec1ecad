"""Stage services and gateways started as `sdserve up` starts them, and the HTTP
helpers that drive and observe them."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from benchmarks.harness import Record, log
from benchmarks.serving.common import GUIDANCE_SCALE, PROMPT, STAGE_MODULES, URL_ENV, wxh
from shared.service_process import ServiceProcess

# Stage service name -> (stage kind, env overrides).
StageSpecs = Mapping[str, tuple[str, Mapping[str, str]]]
# Gateway name -> (stage kind -> stage service it uses, env overrides).
GatewaySpecs = Mapping[str, tuple[Mapping[str, str], Mapping[str, str]]]


def family_env(
    family: str, size: Sequence[int], extra: Mapping[str, str] | None = None
) -> dict[str, str]:
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
        stages: StageSpecs,
        gateways: GatewaySpecs,
        log_dir: Path,
        startup_timeout: float = 600.0,
    ) -> None:
        self.label = label
        self.base_env = dict(base_env)
        self.stage_specs = dict(stages)
        self.gateway_specs = dict(gateways)
        self.log_dir = log_dir
        self.startup_timeout = startup_timeout
        self.procs: dict[str, ServiceProcess] = {}
        self.ready_s: dict[str, float] = {}

    def __enter__(self) -> Stack:
        started = time.perf_counter()
        try:
            for name, (kind, env) in self.stage_specs.items():
                self._start(name, STAGE_MODULES[kind], {**self.base_env, **env})
            for name, (remotes, env) in self.gateway_specs.items():
                urls = {URL_ENV[kind]: self.procs[stage].url for kind, stage in remotes.items()}
                self._start(name, "central", {**self.base_env, **env, **urls})
            for name, proc in self.procs.items():
                proc.wait_ready()
                self.ready_s[name] = round(time.perf_counter() - started, 1)
        except BaseException:
            self.stop()
            raise
        log(f"{self.label}: ready in {max(self.ready_s.values()):.0f} s ({self.ready_s})")
        return self

    def _start(self, name: str, module: str, env: Mapping[str, str]) -> None:
        proc = ServiceProcess(
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
