"""Several models on one gateway: a models file names them, a request picks one with
OpenAI's `model` field, and models of one family share the text encoder and decoder.
Here: the embedded tiny model in the gateway, and tiny with other (random) weights as a
diffusion service of its own, "deployed beside" it."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from shared.service_process import ServiceProcess, run_services
from tests.utils.tiny_stack import TINY_STACK_ENV
from tests.utils.wire import assert_error

BODY = {"prompt": "a red square on a white background", "size": "64x64", "steps": 6, "seed": 7}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    logs = tmp_path_factory.mktemp("models")
    other = ServiceProcess(
        "services.diffusion",
        {**TINY_STACK_ENV, "SDSERVE_WEIGHTS": "random"},
        log_path=logs / "diffusion-random.log",
    )
    with run_services(other):
        models_file = Path(logs / "models.toml")
        models_file.write_text(
            '[[model]]\nname = "tiny"\nfamily = "tiny"\nweights = "embedded"\n\n'
            '[[model]]\nname = "tiny-random"\nfamily = "tiny"\nweights = "random"\n'
            f'diffusion_url = "{other.url}"\n'
        )
        gateway = ServiceProcess(
            "central",
            {**TINY_STACK_ENV, "SDSERVE_MODELS_FILE": str(models_file)},
            log_path=logs / "central.log",
        )
        with run_services(gateway):
            yield gateway


def image(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    png = base64.b64decode(response.json()["data"][0]["b64_json"])
    return np.asarray(Image.open(io.BytesIO(png)), dtype=np.int16)


def test_models_are_listed_in_openais_shape(gateway: ServiceProcess) -> None:
    listing = httpx.get(f"{gateway.url}/v1/models", timeout=10).json()
    assert listing["object"] == "list"
    assert [m["id"] for m in listing["data"]] == ["tiny", "tiny-random"]
    assert all(m["object"] == "model" and m["family"] == "tiny" for m in listing["data"])
    info = httpx.get(f"{gateway.url}/v1/info", timeout=10).json()
    assert info["models"] == ["tiny", "tiny-random"]
    stages = httpx.get(f"{gateway.url}/v1/stages", timeout=10).json()
    # One text encoder and one decoder for both: the family's, shared.
    assert set(stages) == {"text_encoder", "diffusion", "decoder", "diffusion@tiny-random"}
    assert stages["diffusion@tiny-random"]["location"] == "remote"


def test_the_same_seed_gives_each_model_its_own_image(
    gateway: ServiceProcess, tiny_stack: dict[str, ServiceProcess]
) -> None:
    url = f"{gateway.url}/v1/images/generations"
    default = httpx.post(url, json=BODY, timeout=120)
    named = httpx.post(url, json={**BODY, "model": "tiny"}, timeout=120)
    other = httpx.post(url, json={**BODY, "model": "tiny-random"}, timeout=120)
    assert default.json()["model"] == named.json()["model"] == "tiny"
    assert other.json()["model"] == "tiny-random"
    assert other.json()["weights"].startswith("random")
    single = httpx.post(f"{tiny_stack['all-in-one'].url}/v1/images/generations", json=BODY)
    # The default model is the one-model gateway's (up to float noise between processes).
    assert int(np.abs(image(default) - image(single)).max()) <= 2
    assert int(np.abs(image(named) - image(default)).max()) <= 2
    assert float(np.abs(image(other) - image(default)).mean()) > 10, "random weights, same image"


def test_an_unknown_model_is_a_404_naming_it(gateway: ServiceProcess) -> None:
    response = httpx.post(
        f"{gateway.url}/v1/images/generations", json={**BODY, "model": "dall-e-3"}, timeout=30
    )
    error = assert_error(response, 404, param="model", error_type="model_not_found")
    assert "dall-e-3" in error["message"] and "tiny-random" in error["message"]
    job = httpx.post(f"{gateway.url}/v1/jobs", json={**BODY, "model": "nope"}, timeout=30)
    assert_error(job, 404, param="model", error_type="model_not_found")


def test_the_openai_client_picks_a_model(gateway: ServiceProcess) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused")
    assert [m.id for m in client.models.list()] == ["tiny", "tiny-random"]
    result = client.images.generate(
        model="tiny-random",
        prompt=BODY["prompt"],
        size="64x64",  # type: ignore[arg-type]
        response_format="b64_json",
        extra_body={"steps": 6, "seed": 7},
    )
    assert result.data and result.data[0].b64_json
    assert result.model_extra is not None and result.model_extra["model"] == "tiny-random"


def test_an_a1111_client_selects_a_model_with_options(gateway: ServiceProcess) -> None:
    webuiapi = pytest.importorskip("webuiapi")
    api = webuiapi.WebUIApi(baseurl=f"{gateway.url}/sdapi/v1", sampler="DDIM")
    assert api.util_get_model_names() == ["tiny", "tiny-random"]
    assert api.util_get_current_model() == "tiny"
    ours = httpx.post(
        f"{gateway.url}/v1/images/generations",
        json={**BODY, "model": "tiny-random", "guidance_scale": 7.5},
        timeout=120,
    )
    api.util_set_model("tiny-random")  # POST /options {"sd_model_checkpoint": ...}
    try:
        assert api.util_get_current_model() == "tiny-random"
        a1111 = dict(prompt=BODY["prompt"], width=64, height=64, steps=6, seed=7, cfg_scale=7.5)
        selected = api.txt2img(**a1111)
        # A request's override_settings picks for that request only.
        overridden = api.txt2img(**a1111, override_settings={"sd_model_checkpoint": "tiny"})
        unknown = httpx.post(
            f"{gateway.url}/sdapi/v1/options", json={"sd_model_checkpoint": "x"}, timeout=10
        )
    finally:
        api.set_options({"sd_model_checkpoint": "tiny"})
    assert selected.info["sd_model_name"] == "tiny-random" and selected.info["substituted"] == {}
    assert overridden.info["sd_model_name"] == "tiny"
    assert api.util_get_current_model() == "tiny"
    same = np.asarray(selected.image.convert("RGB"), dtype=np.int16)
    assert int(np.abs(same - image(ours)).max()) <= 2  # the model /v1 draws as tiny-random
    assert unknown.status_code == 404 and "tiny-random" in unknown.json()["detail"]
