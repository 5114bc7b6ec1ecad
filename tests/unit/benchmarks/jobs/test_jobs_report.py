"""benchmarks.jobs: the committed results re-render to themselves, the measuring rounds
count what they should on a memory store, the summaries compute their ratios, and the
benchmark's own redis-server launcher starts and cleans up."""

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from benchmarks.jobs.http_bench import JobTimes, summarize_http
from benchmarks.jobs.redis_server import RedisServer
from benchmarks.jobs.report import render_markdown
from benchmarks.jobs.store_bench import (
    latency_round,
    lifecycle_round,
    summarize_latency,
    summarize_lifecycle,
)
from central.jobs.store import MemoryJobStore

RESULTS = Path(__file__).resolve().parents[4] / "benchmarks" / "results"


def test_committed_jobs_json_renders_the_committed_markdown() -> None:
    report = json.loads((RESULTS / "jobs.json").read_text())
    assert render_markdown(report) == (RESULTS / "jobs.md").read_text()


def _memory_store() -> MemoryJobStore:
    return MemoryJobStore(max_jobs=64, ttl_s=600, lease_s=10)


def test_latency_round_has_a_sample_per_subscriber_and_event() -> None:
    store = _memory_store()
    result = asyncio.run(latency_round(store, subscribers=3, events=4, gap_s=0.0))
    assert len(result["samples_s"]) == 12
    assert len(result["last_subscriber_s"]) == len(result["update_call_s"]) == 4
    assert all(0 < s < 1 for s in result["samples_s"])
    (entry,) = store.jobs.values()
    assert entry.record.status == "succeeded"
    assert [e.name for _, e in entry.events] == ["queued", *["progress"] * 4, "done"]


def test_lifecycle_round_runs_whole_jobs() -> None:
    store = _memory_store()
    result = asyncio.run(lifecycle_round(store, submitters=2, steps=3, duration_s=0.05))
    assert result["jobs"] >= 2 and result["jobs_per_s"] > 0
    entries = list(store.jobs.values())
    assert entries and all(e.record.status == "succeeded" for e in entries)
    assert all(len(e.events) == 5 for e in entries)  # queued, 3 x progress, done


def test_store_summaries_take_medians_and_redis_over_memory() -> None:
    def rounds(*rates: float) -> list[dict[str, float | None]]:
        return [
            {"jobs_per_s": r, "jobs": 10, "job_ms_median": 1.0, "benchmark_cores": 0.5}
            for r in rates
        ]

    life = summarize_lifecycle(
        {"memory": {"1": rounds(90, 100, 110)}, "redis": {"1": rounds(5, 50, 9)}}
    )
    assert life["memory"]["1"]["jobs_per_s_median"] == 100
    assert life["redis_vs_memory"]["1"] == pytest.approx(0.09)
    samples = {
        "samples_s": [0.001, 0.002, 0.003],
        "last_subscriber_s": [0.003],
        "update_call_s": [0.001],
    }
    slow = {k: [v * 10 for v in vs] for k, vs in samples.items()}
    latency = summarize_latency({"memory": {"1": samples}, "redis": {"1": slow}})
    assert latency["memory"]["1"]["delivery"]["median_ms"] == 2.0
    assert latency["redis_vs_memory"]["1"]["median_ms"] == pytest.approx(10)


def test_http_summary_counts_outcomes_and_ratios() -> None:
    def job(first: float, done: float, last_event: str = "done") -> JobTimes:
        return JobTimes(202, 0.005, first, done, last_event, 7, 0.0)

    sequential = {"memory": [job(0.05, 0.15)], "redis": [job(0.06, 0.16), job(1, 2, "error")]}
    bursts = {
        "memory": [{"jobs_per_s": 20.0, "jobs": [job(0.5, 1.0)]}],
        "redis": [{"jobs_per_s": 15.0, "jobs": [job(0.6, 1.2)]}],
    }
    out = summarize_http(sequential, bursts, {"memory": {}, "redis": {}})
    assert out["redis"]["sequential"]["outcomes"] == {"done": 1, "error": 1}
    assert out["redis"]["sequential"]["first_progress"]["n"] == 1  # errors are not timed
    assert out["redis_vs_memory"]["burst_jobs_per_s"] == pytest.approx(0.75)
    assert out["redis_vs_memory"]["sequential_first_progress_median"] == pytest.approx(1.2)


def test_redis_launcher_starts_a_server_and_removes_its_directory() -> None:
    if shutil.which("redis-server") is None and shutil.which("valkey-server") is None:
        pytest.skip("redis-server is not installed")
    with RedisServer() as server:
        assert server.ping() and server.url.startswith("redis://127.0.0.1:")
        directory = server.directory
        assert directory.is_dir()
    assert server.proc is None and not directory.exists()
