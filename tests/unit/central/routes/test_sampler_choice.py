"""`sampler` on the gateway's routes, over a real in-process chain: every accepted name,
the default, the refusal, edits and jobs with each sampler, and /v1/info's list."""

from __future__ import annotations

import asyncio
import base64
import io
from typing import Any

import httpx
import pytest
from PIL import Image

from central.app import create_central_app
from shared.pipeline.chain import Chain
from shared.sampler_names import SAMPLER_NAMES, SAMPLERS
from tests.utils.gateway import SETTINGS, client_for

GENERATE = {"prompt": "a red square", "steps": 3, "seed": 21}


def run(chain: Chain, *requests: dict[str, Any]) -> list[httpx.Response]:
    async def main() -> list[httpx.Response]:
        async with client_for(create_central_app(SETTINGS, chain)) as client:
            answers = []
            for request in requests:
                method = request.pop("method", "POST")
                answers.append(await client.request(method, **request))
            return answers

    return asyncio.run(main())


def generate(**fields: Any) -> dict[str, Any]:
    return {"url": "/v1/images/generations", "json": {**GENERATE, **fields}}


def pixels(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [item["b64_json"] for item in response.json()["data"]]


def test_each_sampler_by_any_of_its_names_draws_its_own_image(chain: Chain) -> None:
    names = {name: [name, *SAMPLERS[name].aliases] for name in SAMPLER_NAMES}
    requests = [generate()] + [
        generate(sampler=spelling)
        for aliases in names.values()
        for spelling in (aliases[0], aliases[1].upper(), f"  {aliases[1].lower()} ")
    ]
    default, *answers = run(chain, *requests)
    assert default.json()["sampler"] == "ddim"  # tiny's default stays DDIM
    by_sampler: dict[str, list[str]] = {}
    for (name, _), answer in zip([(n, s) for n in names for s in range(3)], answers, strict=True):
        assert answer.json()["sampler"] == name, answer.text
        by_sampler.setdefault(name, pixels(answer))
        assert pixels(answer) == by_sampler[name]  # every spelling: the same sampler
    assert by_sampler["ddim"] == pixels(default)
    # Each sampler takes effect: four different images from one seed.
    assert len({tuple(p) for p in by_sampler.values()}) == len(SAMPLER_NAMES)


@pytest.mark.parametrize(
    "request_",
    [
        generate(sampler="k_lms"),
        {"url": "/v1/images/edits", "data": {"prompt": "x", "sampler": "plms"}, "files": {}},
        {"url": "/v1/jobs", "json": {"prompt": "x", "sampler": "heun"}},
        {"url": "/", "json": {"inputs": "x", "parameters": {"scheduler": "PNDMScheduler"}}},
    ],
    ids=["generations", "edits", "jobs", "hugging-face"],
)
def test_an_unknown_sampler_is_422_naming_the_field_and_the_accepted_names(
    chain: Chain, request_: dict[str, Any]
) -> None:
    if "files" in request_:  # the image is read after the fields are checked
        request_["files"] = {"image": ("i.png", _png(Image.new("RGB", (64, 64))))}
    (response,) = run(chain, request_)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["param"].rsplit(".", 1)[-1] in ("sampler", "scheduler"), error
    for name in ("ddim", "dpmpp_2m_karras", "DPM++ 2M Karras", "Euler a", "k_euler_a"):
        assert repr(name) in error["message"], error["message"]


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("masked", [False, True], ids=["img2img", "inpaint"])
def test_edits_run_with_every_sampler(chain: Chain, masked: bool) -> None:
    image = _png(Image.new("RGB", (64, 64), (30, 90, 200)))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (8, 8, 40, 40))
    body: dict[str, Any] = {
        "prompt": "a red circle",
        "steps": 4,
        "strength": 0.75,
        "seed": 3,
        "num_resamples": 2,
        "image": base64.b64encode(image).decode(),
    }
    if masked:
        body["mask"] = base64.b64encode(_png(mask)).decode()
    answers = run(
        chain,
        *({"url": "/v1/images/edits", "json": {**body, "sampler": s}} for s in SAMPLER_NAMES),
    )
    assert [a.json()["sampler"] for a in answers] == list(SAMPLER_NAMES)
    assert len({tuple(pixels(a)) for a in answers}) == len(SAMPLER_NAMES)


def test_hugging_face_scheduler_picks_the_sampler(chain: Chain) -> None:
    parameters = {"seed": 2, "num_inference_steps": 3}
    default, dpm, direct = run(
        chain,
        {"url": "/", "json": {"inputs": "x", "parameters": parameters}},
        {
            "url": "/",
            "json": {
                "inputs": "x",
                "parameters": {**parameters, "scheduler": "DPMSolverMultistepScheduler"},
            },
        },
        {
            "url": "/v1/images/generations",
            "json": {"prompt": "x", "seed": 2, "steps": 3, "sampler": "dpmpp_2m"},
        },
    )
    assert default.status_code == 200 and dpm.status_code == 200, dpm.text
    assert default.content != dpm.content
    expected = Image.open(io.BytesIO(base64.b64decode(pixels(direct)[0])))
    assert Image.open(io.BytesIO(dpm.content)).tobytes() == expected.tobytes()


def test_job_records_say_which_sampler_ran(chain: Chain) -> None:
    body = {**GENERATE, "sampler": "Euler a"}

    async def main() -> tuple[dict[str, Any], dict[str, Any]]:
        async with client_for(create_central_app(SETTINGS, chain)) as client:
            submitted = (await client.post("/v1/jobs", json=body)).json()
            await client.get(submitted["events_url"])  # ends with the job
            job = (await client.get(submitted["url"])).json()
            direct = (await client.post("/v1/images/generations", json=body)).json()
            return job, direct

    job, direct = asyncio.run(main())
    assert job["status"] == "succeeded", job
    assert job["result"]["sampler"] == "euler_ancestral"
    assert job["result"]["data"] == direct["data"]  # seeded noise: the same image


def test_info_lists_the_samplers_and_the_default() -> None:
    from shared.pipeline.chain import Chain as _Chain

    chain = _Chain(SETTINGS)  # /v1/info needs no loaded model

    async def main() -> httpx.Response:
        async with client_for(create_central_app(SETTINGS, chain)) as client:
            return await client.get("/v1/info")

    info = asyncio.run(main()).json()
    assert [s["name"] for s in info["samplers"]] == list(SAMPLER_NAMES)
    labels = {s["name"]: s["label"] for s in info["samplers"]}
    assert labels == {
        "ddim": "DDIM",
        "dpmpp_2m": "DPM++ 2M",
        "dpmpp_2m_karras": "DPM++ 2M Karras",
        "euler_ancestral": "Euler a",
    }
    assert "k_euler_a" in info["samplers"][3]["aliases"]
    assert info["limits"]["default_sampler"] == "ddim"


def test_a_deployments_default_sampler_is_what_a_request_without_one_gets(chain: Chain) -> None:
    settings = SETTINGS.model_copy(update={"default_sampler": "euler_ancestral"})

    async def main() -> httpx.Response:
        async with client_for(create_central_app(settings, chain)) as client:
            return await client.post("/v1/images/generations", json=GENERATE)

    (named,) = run(chain, generate(sampler="euler_ancestral"))
    response = asyncio.run(main())
    assert response.json()["sampler"] == "euler_ancestral"
    assert pixels(response) == pixels(named)
