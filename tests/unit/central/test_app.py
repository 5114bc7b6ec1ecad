"""The gateway's OpenAPI document: every JSON answer has a schema, every refusal the error body."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import SecretStr

from central.app import create_central_app
from central.schemas import GatewayInfo
from tests.utils.gateway import SETTINGS, client_for

# The routes of the public API (the rest are health, metrics and the web page).
PUBLIC = {
    ("post", "/v1/images/generations"),
    ("post", "/v1/images/edits"),
    ("post", "/"),
    ("post", "/v1/jobs"),
    ("get", "/v1/jobs/{job_id}"),
    ("get", "/v1/jobs/{job_id}/events"),
    ("delete", "/v1/jobs/{job_id}"),
}
# AUTOMATIC1111's API (central/routes/a1111.py), in its shapes and with its error bodies.
A1111 = {
    ("post", "/sdapi/v1/txt2img"),
    ("post", "/sdapi/v1/img2img"),
    ("get", "/sdapi/v1/progress"),
    ("post", "/sdapi/v1/interrupt"),
    ("get", "/sdapi/v1/options"),
    ("post", "/sdapi/v1/options"),
    ("get", "/sdapi/v1/sd-models"),
    ("get", "/sdapi/v1/samplers"),
    ("get", "/sdapi/v1/upscalers"),
    ("get", "/sdapi/v1/loras"),
    ("get", "/sdapi/v1/scripts"),
}
# JSON answers typed as a plain object on purpose: each stage describes itself its way.
LOOSE = {("get", "/v1/stages"), ("get", "/healthz")}


@pytest.fixture(scope="module")
def openapi() -> dict[str, Any]:
    # The document only: the chain is never loaded.
    return create_central_app(SETTINGS).openapi()


def operations(openapi: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, operation)
        for path, item in openapi["paths"].items()
        for method, operation in item.items()
    ]


def test_every_json_success_has_a_schema(openapi: dict[str, Any]) -> None:
    checked = []
    for method, path, operation in operations(openapi):
        success = {k: v for k, v in operation["responses"].items() if k.startswith("2")}
        assert success, f"{method} {path} declares no success response"
        for status, response in success.items():
            content = response.get("content", {})
            assert content, f"{method} {path} {status} declares no content"
            json_body = content.get("application/json")
            if json_body is None:
                continue  # PNG, SSE or Prometheus text
            schema = json_body.get("schema", {})
            if (method, path) in LOOSE:
                assert schema.get("type") == "object", f"{method} {path} {status}: {schema}"
            else:
                # A named model (or a list of them, as A1111's lists are): a route
                # answering an untyped dict shows no fields.
                named = schema.get("items", {}) if schema.get("type") == "array" else schema
                assert "$ref" in named, f"{method} {path} {status}: {schema}"
            checked.append((method, path))
    # The JSON routes of the gateway are all there (a route lost from the walk fails too).
    assert {
        ("get", "/v1/info"),
        ("get", "/v1/stages"),
        ("get", "/readyz"),
        ("post", "/v1/images/generations"),
        ("post", "/v1/images/edits"),
        ("post", "/v1/jobs"),
        ("get", "/v1/jobs/{job_id}"),
        ("delete", "/v1/jobs/{job_id}"),
        *A1111,
    } <= set(checked)


def test_a1111_routes_declare_a1111s_error_bodies(openapi: dict[str, Any]) -> None:
    found = {(m, p): op for m, p, op in operations(openapi) if p.startswith("/sdapi/")}
    assert set(found) == A1111
    schemas = openapi["components"]["schemas"]
    for (method, path), operation in found.items():
        for status, response in operation["responses"].items():
            if status[0] not in "45":
                continue
            ref = response["content"]["application/json"]["schema"]["$ref"]
            name = "ValidationErrorBody" if status == "422" else "ErrorBody"
            assert ref == f"#/components/schemas/{name}", (method, path, status)
    assert set(schemas["ErrorBody"]["properties"]) == {"error", "detail", "body", "errors"}
    item = schemas["ValidationItem"]["properties"]
    assert set(item) == {"loc", "msg", "type"}
    for method, path in (("post", "/sdapi/v1/txt2img"), ("post", "/sdapi/v1/img2img")):
        assert {"401", "403", "422", "429", "503"} <= set(found[(method, path)]["responses"])


def test_public_routes_declare_the_error_body(openapi: dict[str, Any]) -> None:
    found = {(m, p): op for m, p, op in operations(openapi) if (m, p) in PUBLIC}
    assert set(found) == PUBLIC
    for (method, path), operation in found.items():
        errors = {k: v for k, v in operation["responses"].items() if k[0] in "45"}
        assert {"401", "403", "500", "503"} <= set(errors), (method, path, sorted(errors))
        for status, response in errors.items():
            schema = response["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, (path, status)
    error = openapi["components"]["schemas"]["ErrorDetail"]
    assert set(error["required"]) == {"type", "message"}


def test_the_images_and_job_schemas_name_every_field(openapi: dict[str, Any]) -> None:
    schemas = openapi["components"]["schemas"]
    images = schemas["ImagesResponse"]["properties"]
    assert set(images) == {
        "created",
        "data",
        "timings",
        "prompt_tokens",
        "prompt_truncated",
        "model",
        "weights",
        "sampler",
        "warnings",
    }
    assert set(schemas["ImageData"]["properties"]) == {"seed", "b64_json", "url"}
    job = schemas["JobResource"]["properties"]
    assert {"id", "status", "url", "events_url", "progress", "result", "error"} <= set(job)


def test_info_answers_in_its_declared_shape() -> None:
    async def main() -> dict[str, Any]:
        async with client_for(create_central_app(SETTINGS)) as client:
            response = await client.get("/v1/info")
            assert response.status_code == 200, response.text
            return dict(response.json())

    info = asyncio.run(main())
    # extra="forbid": a key /v1/info sends that the schema does not declare fails here.
    GatewayInfo.model_validate(info)
    assert info["service"] == "central" and info["family"] == "tiny"
    assert info["sizes"] == ["64x64"] and info["limits"]["max_steps"] == 1000


def test_with_api_keys_the_schema_declares_bearer_and_stages_need_a_key(
    openapi: dict[str, Any],
) -> None:
    assert "securitySchemes" not in openapi.get("components", {})  # an open gateway
    settings = SETTINGS.model_copy(update={"api_keys": SecretStr("key-one")})
    app = create_central_app(settings)
    guarded = app.openapi()
    assert guarded["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    for method, path in PUBLIC:
        assert guarded["paths"][path][method]["security"] == [{"HTTPBearer": []}]
    # A1111 clients send the key with HTTP basic auth (or as a bearer token).
    for method, path in A1111:
        security = guarded["paths"][path][method]["security"]
        assert security == [{"HTTPBearer": []}, {"HTTPBasic": []}], (method, path)

    async def main() -> list[int]:
        async with client_for(app) as client:
            key = {"Authorization": "Bearer key-one"}
            return [
                (await client.get("/v1/stages")).status_code,
                (await client.get("/v1/stages", headers=key)).status_code,
                (await client.get("/v1/models")).status_code,
            ]

    # Stages show internal addresses and call each stage: only with a key.
    assert asyncio.run(main()) == [401, 200, 200]


def test_a_second_models_own_stages_have_their_own_metric_labels(tmp_path) -> None:
    """Two tiny models in one gateway share the text encoder and decoder; the second's
    own UNet reports as `diffusion@<model>`, so no two series share a label (stages are
    built here, not loaded)."""
    from central.app import GatewayService
    from shared.pipeline.catalog import Catalog

    models = tmp_path / "models.toml"
    models.write_text(
        '[[model]]\nname = "tiny"\nfamily = "tiny"\nweights = "embedded"\n\n'
        '[[model]]\nname = "other"\nfamily = "tiny"\nweights = "random"\n'
    )
    catalog = Catalog(SETTINGS.model_copy(update={"models_file": models}))
    labels = [s.stage for s in GatewayService(catalog, api_key_required=False).batching_sources()]
    assert sorted(labels) == [
        "decoder",
        "diffusion",
        "diffusion@other",
        "image_encoder",
        "text_encoder",
    ]
