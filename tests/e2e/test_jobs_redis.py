"""Jobs that nothing loses: two real gateway processes sharing a real redis-server.

A job posted on one gateway is followed and fetched on the other; a gateway killed
mid-job has its job finished by the other, to the same image; a restarted gateway still
has its finished jobs; Redis stopped and started costs a 503 naming the store, not the
job; a key's limit holds across gateways; SIGTERM hands a gateway's jobs over at once.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.service_process import ServiceProcess
from tests.utils.redis_server import RedisServer, start_redis

KEY, LIMITED_KEY = "key-one", "key-two"
LEASE_S = 1.0


def gateway_env(redis: RedisServer) -> dict[str, str]:
    return {
        "SDSERVE_MODEL": "tiny",
        "SDSERVE_SIZES": "64x64",
        "SDSERVE_MAX_STEPS": "1000",
        "SDSERVE_WARM_UP": "false",
        "SDSERVE_JOB_STORE": redis.url,
        "SDSERVE_JOB_LEASE_S": str(LEASE_S),
        "SDSERVE_API_KEYS": f"{KEY},{LIMITED_KEY}",
        "SDSERVE_MAX_CONCURRENT_PER_KEY": "2",
        # The jobs of a SIGTERMed gateway are handed over at once; it need not linger.
        "SDSERVE_SHUTDOWN_GRACE_S": "2",
    }


class Cluster:
    def __init__(self, redis: RedisServer, logs: Path) -> None:
        self.redis, self.logs = redis, logs
        self.gateways: dict[str, ServiceProcess] = {}
        self.starts = 0

    def start(self, *names: str) -> None:
        for name in names:
            self.starts += 1
            log = self.logs / f"{name}-{self.starts}.log"
            self.gateways[name] = ServiceProcess(
                "central", gateway_env(self.redis), log_path=log, wait_ready=False
            ).start()
        for name in names:
            self.gateways[name].wait_ready()

    def url(self, name: str) -> str:
        return self.gateways[name].url


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    logs = tmp_path_factory.mktemp("jobs-redis")
    redis = start_redis(logs / "redis")
    cluster = Cluster(redis, logs)
    try:
        cluster.start("a", "b")
        yield cluster
    finally:
        for gateway in cluster.gateways.values():
            gateway.stop()
        redis.stop()


def client(base_url: str, key: str = KEY) -> httpx.Client:
    return httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60)


def job_body(seed: int, steps: int) -> dict[str, Any]:
    return {"prompt": "a red square on a white background", "size": "64x64", "seed": seed,
            "steps": steps}  # fmt: skip


def post_job(base_url: str, body: dict[str, Any], key: str = KEY) -> dict[str, Any]:
    with client(base_url, key) as http:
        response = http.post("/v1/jobs", json=body)
        assert response.status_code == 202, response.text
        return dict(response.json())


def events(
    base_url: str, job: dict[str, Any], *, after: str | None = None, limit: int | None = None
) -> list[tuple[str, str, dict[str, Any]]]:
    """(id, name, data) of the job's events, to the last (or the first `limit`)."""
    headers = {"Last-Event-ID": after} if after else {}
    seen: list[tuple[str, str, dict[str, Any]]] = []
    with client(base_url) as http, http.stream("GET", job["events_url"], headers=headers) as r:
        assert r.status_code == 200, r.read()
        fields: dict[str, str] = {}
        for line in r.iter_lines():
            if line:
                name, _, value = line.partition(": ")
                fields[name] = value
                continue
            if "event" in fields:
                seen.append((fields["id"], fields["event"], json.loads(fields["data"])))
                if fields["event"] in ("done", "error", "cancelled") or len(seen) == limit:
                    break
            fields = {}
    return seen


def wait_for(base_url: str, job: dict[str, Any], done: bool = True, step: int = 0) -> Any:
    deadline = time.monotonic() + 90
    with client(base_url) as http:
        while True:
            response = http.get(job["url"])
            if response.status_code == 200:
                body = response.json()
                finished = body["status"] in ("succeeded", "failed", "cancelled")
                if (done and finished) or (not done and body["progress"]["step"] >= step):
                    return body
                assert not finished or done, body
            assert time.monotonic() < deadline, response.text
            time.sleep(0.05)


# ---------------------------------------------------------------------------- tests


def test_a_job_posted_on_one_gateway_is_followed_and_fetched_on_another(
    cluster: Cluster,
) -> None:
    job = post_job(cluster.url("a"), job_body(seed=1, steps=12))
    first = events(cluster.url("b"), job, limit=4)  # B follows A's job...
    rest = events(cluster.url("a"), job, after=first[-1][0])  # ...and resumes on A
    whole = events(cluster.url("b"), job)
    assert [e[0] for e in first + rest] == [e[0] for e in whole]
    assert whole[0][1] == "queued" and whole[-1][1] == "done"
    steps = [data["step"] for _, name, data in whole if name == "progress"]
    assert steps == list(range(1, 13))
    with client(cluster.url("b")) as http:
        fetched = http.get(job["url"]).json()
    assert fetched["status"] == "succeeded" and fetched["result"] == whole[-1][2]["result"]


def test_a_gateway_killed_mid_job_has_it_finished_elsewhere_to_the_same_image(
    cluster: Cluster,
) -> None:
    body = job_body(seed=7, steps=150)
    # The image an uninterrupted run makes, on B (which will finish the killed job).
    reference = wait_for(cluster.url("b"), post_job(cluster.url("b"), body))
    job = post_job(cluster.url("a"), body)
    wait_for(cluster.url("b"), job, done=False, step=3)
    a = cluster.gateways["a"]
    assert a.proc is not None
    os.kill(a.proc.pid, signal.SIGKILL)
    a.proc.wait(10)
    finished = wait_for(cluster.url("b"), job)
    assert finished["status"] == "succeeded" and finished["attempt"] == 2, finished
    assert finished["result"]["data"] == reference["result"]["data"]  # the same PNG bytes
    names = [name for _, name, _ in events(cluster.url("b"), job)]
    assert names.count("restarted") == 1 and names[-1] == "done"

    # A comes back: the jobs it held are still there, finished.
    cluster.start("a")
    with client(cluster.url("a")) as http:
        again = http.get(job["url"]).json()
    assert again["status"] == "succeeded" and again["result"] == finished["result"]


def test_redis_stopped_and_started_costs_a_503_naming_the_store_not_the_job(
    cluster: Cluster,
) -> None:
    job = post_job(cluster.url("a"), job_body(seed=3, steps=300))
    wait_for(cluster.url("a"), job, done=False, step=2)
    cluster.redis.stop()
    try:
        with client(cluster.url("a")) as http:
            down = http.get(job["url"])
            posted = http.post("/v1/jobs", json=job_body(seed=4, steps=2))
        with client(cluster.url("b")) as http:
            direct = http.post("/v1/images/generations", json=job_body(seed=4, steps=2))
    finally:
        cluster.redis.start()
    for refused in (down, posted):
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["type"] == "job_store_unavailable"
        assert "job store" in refused.json()["error"]["message"]
        assert int(refused.headers["retry-after"]) > 0
    assert direct.status_code == 200, direct.text  # the images routes need no store
    finished = wait_for(cluster.url("b"), job)
    assert finished["status"] == "succeeded", finished


def test_a_keys_limit_holds_across_gateways(cluster: Cluster) -> None:
    first = post_job(cluster.url("a"), job_body(seed=5, steps=1000), LIMITED_KEY)
    second = post_job(cluster.url("b"), job_body(seed=6, steps=1000), LIMITED_KEY)
    try:
        with client(cluster.url("a"), LIMITED_KEY) as http:
            refused = http.post("/v1/jobs", json=job_body(seed=7, steps=2))
            direct = http.post("/v1/images/generations", json=job_body(seed=7, steps=2))
            other_key = post_job(cluster.url("a"), job_body(seed=7, steps=2))
            assert http.delete(first["url"]).json()["status"] == "cancelled"
            admitted = http.post("/v1/jobs", json=job_body(seed=7, steps=2))
    finally:
        with client(cluster.url("b"), LIMITED_KEY) as http:
            http.delete(second["url"])
    for response in (refused, direct):
        assert response.status_code == 429, response.text
        assert "2 requests or jobs" in response.json()["error"]["message"]
    assert other_key["status"] == "queued"
    assert admitted.status_code == 202, admitted.text


def test_sigterm_hands_a_gateways_jobs_over_at_once(cluster: Cluster) -> None:
    job = post_job(cluster.url("b"), job_body(seed=8, steps=300))
    wait_for(cluster.url("a"), job, done=False, step=2)
    b = cluster.gateways["b"]
    assert b.proc is not None
    b.proc.send_signal(signal.SIGTERM)
    restarted = events(cluster.url("a"), job, limit=400)
    names = [name for _, name, _ in restarted]
    assert "restarted" in names and names[-1] == "done", names
    assert b.proc.wait(30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal
    assert "handing 1 jobs over to other replicas" in b.log_text()
