"""The /v1/jobs routes over a real in-process chain: submit, read, follow, cancel, refuse."""

from __future__ import annotations

import asyncio
import base64
import io
from typing import Any

import httpx
import pytest
from PIL import Image
from pydantic import SecretStr

from central.app import create_central_app
from central.jobs import JobRunner
from shared.errors import QueueFull
from shared.pipeline.chain import Chain
from tests.utils.gateway import SETTINGS, client_for, sse, sse_ids, wait_for_step


def test_job_result_is_the_generations_response_with_the_same_pixels(chain: Chain) -> None:
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
    assert result["warnings"] == direct["warnings"]
    assert [w["words"] for w in result["warnings"]] == [["lighthouse"]]


def test_edit_jobs_inpaint_with_a_white_repaints_mask(chain: Chain) -> None:
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


def test_cancel_over_http_and_cancelling_a_finished_job_changes_nothing(chain: Chain) -> None:
    async def main() -> tuple[httpx.Response, httpx.Response, list[tuple[str, Any]], int]:
        app = create_central_app(SETTINGS, chain)
        runner: JobRunner = app.state.jobs
        async with client_for(app) as client:
            body = (await client.post("/v1/jobs", json={"prompt": "x", "steps": 1000})).json()
            await wait_for_step(runner.store, body["id"], 2)
            deleted = await client.delete(body["url"])
            again = await client.delete(body["url"])
            late = sse((await client.get(body["events_url"])).text)
            missing = await client.delete("/v1/jobs/not-a-job")
            return deleted, again, late, missing.status_code

    deleted, again, late, missing = asyncio.run(main())
    assert deleted.status_code == 200 and deleted.json()["status"] == "cancelled"
    assert again.status_code == 200 and again.json() == deleted.json()
    names = [name for name, _ in late]  # a late subscriber: every event, from the start
    assert names[0] == "queued" and names[-1] == "cancelled" and "progress" in names
    assert missing == 404


def test_a_full_store_refuses_with_503_and_retry_after(chain: Chain) -> None:
    settings = SETTINGS.model_copy(update={"max_jobs": 2})

    async def main() -> None:
        app = create_central_app(settings, chain)
        runner: JobRunner = app.state.jobs
        async with client_for(app) as client:
            first = (await client.post("/v1/jobs", json={"prompt": "a", "steps": 1000})).json()
            second = (await client.post("/v1/jobs", json={"prompt": "b", "steps": 1000})).json()
            full = await client.post("/v1/jobs", json={"prompt": "c", "steps": 2})
            assert full.status_code == 503, full.text
            assert int(full.headers["retry-after"]) > 0
            assert full.json()["error"]["type"] == "queue_full"
            assert "2 jobs" in full.json()["error"]["message"]
            with pytest.raises(QueueFull):
                await runner.submit({"prompt": "d", "steps": 2})

            # A finished job makes room: the oldest finished one is forgotten first.
            await client.delete(first["url"])
            third = await client.post("/v1/jobs", json={"prompt": "c", "steps": 2})
            assert third.status_code == 202, third.text
            assert (await client.get(first["url"])).status_code == 404
            assert (await client.get(second["url"])).json()["status"] in ("queued", "running")
            await client.delete(second["url"])
            await runner.aclose()

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
def test_bad_job_requests_are_refused_before_a_job_exists(
    chain: Chain, body: Any, status: int, param: str
) -> None:
    async def main() -> tuple[httpx.Response, int]:
        app = create_central_app(SETTINGS, chain)
        async with client_for(app) as client:
            return await client.post("/v1/jobs", json=body), len(app.state.jobs.store.jobs)

    response, jobs = asyncio.run(main())
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == param
    assert jobs == 0


def test_unknown_jobs_are_404_everywhere(chain: Chain) -> None:
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
    assert wrong_type.json()["error"]["param"] == "Content-Type"


def test_events_carry_ids_and_a_reconnect_resumes_after_last_event_id(chain: Chain) -> None:
    async def main() -> tuple[list[str], list[tuple[str, Any]], list[str], httpx.Response]:
        async with client_for(create_central_app(SETTINGS, chain)) as client:
            body = (await client.post("/v1/jobs", json={"prompt": "x", "steps": 3})).json()
            whole = (await client.get(body["events_url"])).text
            ids = sse_ids(whole)
            resumed = await client.get(body["events_url"], headers={"Last-Event-ID": ids[1]})
            bad = await client.get(body["events_url"], headers={"Last-Event-ID": "../x"})
            return ids, sse(resumed.text), sse_ids(resumed.text), bad

    ids, resumed, resumed_ids, bad = asyncio.run(main())
    assert len(ids) == len(set(ids)) >= 5  # queued, 3 x progress, previews, done
    assert resumed_ids == ids[2:]
    assert resumed[-1][0] == "done"
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "Last-Event-ID"


def test_a_job_is_seen_only_with_the_key_that_made_it(chain: Chain) -> None:
    settings = SETTINGS.model_copy(update={"api_keys": SecretStr("key-one,key-two")})
    one, two = ({"Authorization": f"Bearer {key}"} for key in ("key-one", "key-two"))

    async def main() -> list[int]:
        async with client_for(create_central_app(settings, chain)) as client:
            job = await client.post("/v1/jobs", json={"prompt": "x", "steps": 2}, headers=one)
            url = job.json()["url"]
            return [
                job.status_code,
                (await client.get(url, headers=two)).status_code,
                (await client.get(url + "/events", headers=two)).status_code,
                (await client.delete(url, headers=two)).status_code,
                (await client.get(url, headers=one)).status_code,
                (await client.get(url)).status_code,
            ]

    assert asyncio.run(main()) == [202, 404, 404, 404, 200, 401]
