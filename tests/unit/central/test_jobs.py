"""Central's jobs: lifecycle, events, cancel, TTL and bounds, over a real in-process chain.

The chain is the real one with the three tiny stages local (all-in-one), loaded once for
the module; each test runs its own event loop.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from central.app import create_central_app
from central.jobs import SUBSCRIBER_BUFFER, Job, JobEvent, JobNotFound, JobStore
from shared.config import Settings
from shared.errors import QueueFull, UpstreamUnavailable
from shared.pipeline.chain import Chain
from shared.pipeline.types import DenoiseParams, GenerationParams

SETTINGS = Settings(model="tiny", weights="random", sizes=[(64, 64)], max_steps=1000, warm_up=False)


@pytest.fixture(scope="module")
def chain() -> Iterator[Chain]:
    chain = Chain(SETTINGS)
    chain.load()
    yield chain
    for stage in chain.located("local").values():
        stage.shutdown()


def params(steps: int = 6, seed: int | None = 11, n: int = 1) -> GenerationParams:
    return GenerationParams(
        prompt="a red bicycle",
        negative_prompt=None,
        denoise=DenoiseParams(
            width=64,
            height=64,
            steps=steps,
            guidance_scale=7.5,
            seed=seed,
            n=n,
        ),
    )


async def collect(store: JobStore, job: Job) -> list[JobEvent]:
    return [event async for event in store.events(job)]


async def wait_for_step(job: Job, step: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while job.step < step:
        assert not job.done, job.snapshot()
        assert time.monotonic() < deadline, f"job stuck at step {job.step}"
        await asyncio.sleep(0.01)


def client_for(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://central")


def sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        lines = [line for line in block.split("\n") if line and not line.startswith(":")]
        if not lines:
            continue
        fields = dict(line.split(": ", 1) for line in lines)
        events.append((fields["event"], json.loads(fields["data"])))
    return events


# ------------------------------------------------------------------------ lifecycle


def test_job_goes_queued_running_succeeded_with_events_in_order(chain):
    async def main() -> tuple[Job, list[JobEvent], list[str]]:
        store = JobStore(chain, SETTINGS)
        job = store.submit("generation", params(steps=6, n=2), None, "b64_json")
        assert job.status == "queued" and job.total == 6
        statuses: list[str] = []
        events: list[JobEvent] = []
        async for event in store.events(job):
            statuses.append(job.status)
            events.append(event)
        await job.task  # type: ignore[misc]
        return job, events, statuses

    job, events, statuses = asyncio.run(main())
    names = [e.name for e in events]
    assert names[0] == "queued" and names[-1] == "done"
    progress = [e.data["step"] for e in events if e.name == "progress"]
    assert progress == [1, 2, 3, 4, 5, 6]  # every step, in order
    assert all(e.data["total"] == 6 for e in events if e.name == "progress")
    previews = [e for e in events if e.name == "preview"]
    assert [p.data["step"] for p in previews] == [1, 2, 3, 4, 5]  # every ceil(6/10) step
    assert all(len(p.data["images"]) == 2 for p in previews)  # one per image
    preview = Image.open(io.BytesIO(base64.b64decode(previews[0].data["images"][0].split(",")[1])))
    assert preview.size == (16, 16)  # the latent grid: small
    # Each preview follows the progress event of its step.
    assert names.index("preview") == names.index("progress") + 1
    assert statuses[0] == "queued" and "running" in statuses and statuses[-1] == "succeeded"

    snapshot = job.snapshot()
    assert snapshot["status"] == "succeeded"
    assert snapshot["progress"] == {"step": 6, "total": 6}
    assert snapshot["started"] is not None and snapshot["finished"] >= snapshot["started"]
    result = snapshot["result"]
    assert [item["seed"] for item in result["data"]] == [11, 12]
    assert set(result["timings"]) == {"text_encoder", "diffusion", "decoder"}
    assert events[-1].data["result"] == result


def test_job_result_is_the_generations_response_with_the_same_pixels(chain):
    request = {"prompt": "a lighthouse", "size": "64x64", "steps": 4, "seed": 5, "n": 2}

    async def main() -> tuple[httpx.Response, list[tuple[str, Any]], dict[str, Any], Any]:
        app = create_central_app(SETTINGS, chain)
        async with client_for(app) as client:
            submitted = await client.post("/v1/jobs", json=request)
            body = submitted.json()
            events = await client.get(body["events_url"])  # ends with the job
            job = (await client.get(body["url"])).json()
            direct = await client.post("/v1/images/generations", json=request)
            return submitted, sse(events.text), job, direct.json()

    submitted, events, job, direct = asyncio.run(main())
    assert submitted.status_code == 202
    body = submitted.json()
    assert body["status"] == "queued" and body["kind"] == "generation"
    assert body["events_url"] == f"/v1/jobs/{body['id']}/events"
    assert submitted.headers["location"] == body["url"] == f"/v1/jobs/{body['id']}"
    assert len(body["id"]) >= 20  # secrets.token_urlsafe(16)
    names = [name for name, _ in events]
    assert names[0] == "queued" and names[-1] == "done"
    assert [d["step"] for name, d in events if name == "progress"] == [1, 2, 3, 4]
    assert job["status"] == "succeeded"
    result = job["result"]
    assert set(result) == set(direct) and result["data"] == direct["data"]
    assert result["model"] == "tiny" and "random" in result["weights"]


def test_edit_jobs_inpaint_with_a_white_repaints_mask(chain):
    image = Image.new("RGB", (64, 64), (200, 30, 30))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))

    def b64(picture: Image.Image) -> str:
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()

    request = {
        "kind": "edit",
        "prompt": "a door",
        "image": b64(image),
        "mask": b64(mask),
        "steps": 10,
        "strength": 0.5,
        "seed": 3,
    }

    async def main() -> tuple[dict[str, Any], list[tuple[str, Any]]]:
        async with client_for(create_central_app(SETTINGS, chain)) as client:
            body = (await client.post("/v1/jobs", json=request)).json()
            events = sse((await client.get(body["events_url"])).text)
            return (await client.get(body["url"])).json(), events

    job, events = asyncio.run(main())
    assert job["kind"] == "edit" and job["status"] == "succeeded", job
    assert job["progress"] == {"step": 5, "total": 5}  # round(strength x steps)
    assert "image_encoder" in job["result"]["timings"]
    assert [d["step"] for name, d in events if name == "progress"] == [1, 2, 3, 4, 5]


# --------------------------------------------------------------------------- cancel


def test_cancel_frees_the_rows_and_skips_the_decode(chain):
    scheduler = chain.stages["diffusion"].scheduler
    decoder = chain.stages["decoder"].decode_batcher

    async def main() -> tuple[Job, list[JobEvent], int, int]:
        store = JobStore(chain, SETTINGS)
        cancelled_before = scheduler.stats.cancelled_jobs
        decodes_before = decoder.stats.model_calls
        job = store.submit("generation", params(steps=1000), None, "b64_json")
        listener = asyncio.ensure_future(collect(store, job))
        await wait_for_step(job, 3)
        cancelled = await store.cancel(job.id)
        assert cancelled is job and job.status == "cancelled"
        events = await asyncio.wait_for(listener, 10)
        # The scheduler drops the rows at its next step boundary.
        deadline = time.monotonic() + 10
        while scheduler.stats.cancelled_jobs == cancelled_before:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        return (
            job,
            events,
            scheduler.stats.cancelled_jobs - cancelled_before,
            decoder.stats.model_calls - decodes_before,
        )

    job, events, cancelled, decodes = asyncio.run(main())
    assert cancelled == 1 and decodes == 0
    assert scheduler.queue_depth == 0
    assert events[-1].name == "cancelled" and events[-1].data["status"] == "cancelled"
    assert 3 <= events[-1].data["step"] < 1000
    snapshot = job.snapshot()
    assert snapshot["status"] == "cancelled" and "result" not in snapshot
    assert snapshot["finished"] is not None


def test_cancel_over_http_and_cancelling_a_finished_job_changes_nothing(chain):
    async def main() -> tuple[httpx.Response, httpx.Response, list[tuple[str, Any]], int]:
        app = create_central_app(SETTINGS, chain)
        store: JobStore = app.state.jobs
        async with client_for(app) as client:
            body = (await client.post("/v1/jobs", json={"prompt": "x", "steps": 1000})).json()
            await wait_for_step(store.get(body["id"]), 2)
            deleted = await client.delete(body["url"])
            again = await client.delete(body["url"])
            late = sse((await client.get(body["events_url"])).text)
            missing = await client.delete("/v1/jobs/not-a-job")
            return deleted, again, late, missing.status_code

    deleted, again, late, missing = asyncio.run(main())
    assert deleted.status_code == 200 and deleted.json()["status"] == "cancelled"
    assert again.status_code == 200 and again.json() == deleted.json()
    assert [name for name, _ in late] == ["cancelled"]  # a late subscriber: the state
    assert missing == 404


def test_a_job_cancelled_before_it_starts_is_cancelled(chain):
    async def main() -> Job:
        store = JobStore(chain, SETTINGS)
        job = store.submit("generation", params(), None, "b64_json")
        await store.cancel(job.id)  # its task has not run a single line yet
        return job

    job = asyncio.run(main())
    assert job.status == "cancelled" and job.step == 0


# -------------------------------------------------------------------- subscribers


def test_a_late_subscriber_gets_the_current_state_first(chain):
    async def main() -> tuple[list[JobEvent], list[JobEvent]]:
        store = JobStore(chain, SETTINGS)
        job = store.submit("generation", params(steps=300), None, "b64_json")
        await wait_for_step(job, 40)  # past a preview (every 30 steps)
        while_running = []
        async for event in store.events(job):
            while_running.append(event)
            if len(while_running) == 3:
                break
        await store.cancel(job.id)
        finished = await collect(store, job)
        return while_running, finished

    while_running, finished = asyncio.run(main())
    first, second, third = while_running
    assert first.name == "progress" and first.data["step"] >= 40
    assert first.data["status"] == "running"
    assert second.name == "preview" and second.data["step"] % 30 == 0
    assert third.name in ("progress", "preview")
    assert [e.name for e in finished] == ["cancelled"]


def test_a_slow_subscriber_misses_progress_but_never_the_end():
    job = Job(id="j", kind="generation", total=10_000)
    store = JobStore.__new__(JobStore)

    async def main() -> list[str]:
        queue: asyncio.Queue[JobEvent] = asyncio.Queue(maxsize=SUBSCRIBER_BUFFER)
        job.subscribers.append(queue)
        for step in range(1, 2 * SUBSCRIBER_BUFFER):
            job.step = step
            store._publish(job, job.progress_event())
        job.status = "cancelled"
        store._publish(job, job.final_event())
        names = []
        while not queue.empty():
            names.append(queue.get_nowait().name)
        return names

    names = asyncio.run(main())
    assert len(names) == SUBSCRIBER_BUFFER and names[-1] == "cancelled"


# ------------------------------------------------------------------ failure, bounds


def test_a_failing_stage_fails_the_job_with_its_error(chain, monkeypatch):
    async def down(latent: np.ndarray) -> Any:
        raise UpstreamUnavailable("decoder stage at http://decoder is unreachable")

    monkeypatch.setattr(chain.decoder, "decode", down)

    async def main() -> tuple[Job, list[JobEvent]]:
        store = JobStore(chain, SETTINGS)
        job = store.submit("generation", params(steps=2), None, "b64_json")
        return job, await collect(store, job)

    job, events = asyncio.run(main())
    assert job.status == "failed"
    assert job.error == {
        "type": "upstream_unavailable",
        "message": "decoder stage at http://decoder is unreachable",
    }
    assert events[-1].name == "error" and events[-1].data["error"] == job.error
    assert "result" not in job.snapshot() and job.snapshot()["error"] == job.error


def test_finished_jobs_are_forgotten_after_the_ttl(chain):
    settings = SETTINGS.model_copy(update={"job_ttl_s": 0.3})

    async def main() -> None:
        store = JobStore(chain, settings)
        job = store.submit("generation", params(steps=2), None, "b64_json")
        await collect(store, job)
        assert store.get(job.id) is job  # finished, within the TTL
        await asyncio.sleep(0.4)
        with pytest.raises(JobNotFound):
            store.get(job.id)
        assert job.id not in store.jobs

    asyncio.run(main())


def test_a_full_store_refuses_with_503_and_retry_after(chain):
    settings = SETTINGS.model_copy(update={"max_jobs": 2})

    async def main() -> None:
        app = create_central_app(settings, chain)
        store: JobStore = app.state.jobs
        async with client_for(app) as client:
            first = (await client.post("/v1/jobs", json={"prompt": "a", "steps": 1000})).json()
            second = (await client.post("/v1/jobs", json={"prompt": "b", "steps": 1000})).json()
            full = await client.post("/v1/jobs", json={"prompt": "c", "steps": 2})
            assert full.status_code == 503, full.text
            assert int(full.headers["retry-after"]) > 0
            assert full.json()["error"]["type"] == "queue_full"
            assert "2 jobs" in full.json()["error"]["message"]
            with pytest.raises(QueueFull):
                store.submit("generation", params(), None, "b64_json")

            # A finished job makes room: the oldest finished one is forgotten first.
            await client.delete(first["url"])
            third = await client.post("/v1/jobs", json={"prompt": "c", "steps": 2})
            assert third.status_code == 202, third.text
            assert (await client.get(first["url"])).status_code == 404
            assert (await client.get(second["url"])).json()["status"] in ("queued", "running")
            await client.delete(second["url"])
            await store.aclose()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"prompt": "x", "kind": "video"}, 422, "kind"),
        ({"prompt": "x", "size": "96x96"}, 422, "size"),
        ({"prompt": "x", "steps": 5000}, 422, "steps"),
        ({"prompt": ""}, 422, "prompt"),
        ({"kind": "edit", "prompt": "x"}, 422, "image"),
        ({"kind": "edit", "prompt": "x", "image": "@@@"}, 422, "image"),
        (["not", "an", "object"], 422, "body"),
    ],
)
def test_bad_job_requests_are_refused_before_a_job_exists(chain, body, status, param):
    async def main() -> tuple[httpx.Response, int]:
        app = create_central_app(SETTINGS, chain)
        async with client_for(app) as client:
            return await client.post("/v1/jobs", json=body), len(app.state.jobs.jobs)

    response, jobs = asyncio.run(main())
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == param
    assert jobs == 0


def test_unknown_jobs_are_404_everywhere(chain):
    async def main() -> list[httpx.Response]:
        async with client_for(create_central_app(SETTINGS, chain)) as client:
            return [
                await client.get("/v1/jobs/nope"),
                await client.get("/v1/jobs/nope/events"),
                await client.delete("/v1/jobs/nope"),
                await client.post("/v1/jobs", content=b"x", headers={"content-type": "text/plain"}),
            ]

    get, events, delete, wrong_type = asyncio.run(main())
    for response in (get, events, delete):
        assert response.status_code == 404
        assert response.json()["error"]["type"] == "not_found"
    assert wrong_type.status_code == 415
