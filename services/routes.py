"""A stage service's routes, built from its contract (shared.pipeline.stage_contracts).

Each operation route reads its request (JSON, or an `.npz` body checked against the
contract's tensor specs, plus the `params` model as query parameters), runs the stage,
and answers the result's tensors as `.npz` (or streams progress, then the result).
"""

import inspect
from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field, create_model
from pydantic.fields import FieldInfo
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services import VERSION
from services.streaming import stream_reply
from shared.config import Settings
from shared.http import (
    NPZ_REQUEST_BODY,
    cancel_on_disconnect,
    create_app,
    npz_response,
    npz_responses,
    read_npz,
    require_internal_token,
)
from shared.metrics import BatchingSource
from shared.pipeline.contract import Operation, Route, from_arrays, tensor_fields, to_arrays
from shared.pipeline.local.base import LocalStage
from shared.progress import STREAM_MEDIA_TYPE
from shared.wire import encode_npz

MAX_PREVIEW_EVERY = 1000


class StageService:
    """Adapts a local stage to the app factory's service interface."""

    def __init__(self, stage: LocalStage) -> None:
        self.stage = stage
        self.name = stage.name

    def load(self) -> None:
        self.stage.load()
        self.stage.warm()

    def describe(self) -> Mapping[str, Any]:
        return self.stage.summary()

    def batching_sources(self) -> list[BatchingSource]:
        return self.stage.batching_sources()

    def close(self) -> None:
        self.stage.shutdown()


class QueueDepthHeader:
    """Every answer says how deep the stage's queue is (X-Queue-Depth), so the gateway
    can route by load without asking."""

    def __init__(self, app: ASGIApp, stage: LocalStage) -> None:
        self.app = app
        self.stage = stage

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_depth(message: Message) -> None:
            if message["type"] == "http.response.start":
                depth = str(self.stage.queue_depth()).encode()
                message["headers"] = [*message.get("headers", []), (b"x-queue-depth", depth)]
            await send(message)

        await self.app(scope, receive, send_with_depth)


def create_stage_app(stage: LocalStage, settings: Settings, *, title: str) -> FastAPI:
    """The service of `stage`: the app factory's health routes plus its operations."""
    app = create_app(StageService(stage), settings, title=title, version=VERSION)
    app.add_middleware(QueueDepthHeader, stage=stage)
    auth = Depends(require_internal_token(settings))
    for op in stage.contract.operations:
        query_model = _query_model(op, settings)
        for route in op.routes:
            _add_route(app, stage, op, route, query_model, settings, auth)
    return app


def _query_model(op: Operation[Any, Any], settings: Settings) -> type[BaseModel]:
    """The operation's query parameters: its params (with the deployment's defaults)
    plus the transport options."""
    fields: dict[str, Any] = {}
    if op.params is not None:
        defaults = op.params_defaults(settings) if op.params_defaults else {}
        for name, info in op.params.model_fields.items():
            if name in defaults:
                info = FieldInfo.merge_field_infos(info, default=defaults[name])
            fields[name] = (info.annotation, info)
    fields["fp16"] = (bool, Field(default=False, description="Send float tensors as float16."))
    if op.streams:
        fields["stream"] = (
            bool,
            Field(
                default=False,
                description=f"Answer {STREAM_MEDIA_TYPE}: progress frames after each step, "
                "then the result frame (or an error frame); see shared/progress.py.",
            ),
        )
        fields["preview_every"] = (
            int,
            Field(
                default=0,
                ge=0,
                le=MAX_PREVIEW_EVERY,
                description="Streaming: a small uint8 preview frame every k steps (0: none).",
            ),
        )
    name = "".join(part.title() for part in op.method.split("_")) + "Query"
    return create_model(name, **fields)


def _add_route(
    app: FastAPI,
    stage: LocalStage,
    op: Operation[Any, Any],
    route: Route,
    query_model: type[BaseModel],
    settings: Settings,
    auth: Any,
) -> None:
    family = stage.family.spec
    specs = op.request_specs(route, family)
    params_fields = set(op.params.model_fields) if op.params is not None else set()

    async def endpoint(request: Request, **kwargs: Any) -> Response:
        query = kwargs["query"]
        if op.json_body:
            body = kwargs["body"]
        else:
            arrays = await read_npz(request, specs, settings)
            extra = {}
            if op.params is not None:
                extra["params"] = op.params(**query.model_dump(include=params_fields))
            body = from_arrays(op.request, arrays, **extra)
        if op.streams and query.stream:
            return await stream_reply(
                request,
                lambda progress: stage.run(op, body, progress),
                preview_every=query.preview_every,
                fp16=query.fp16,
            )
        result = await cancel_on_disconnect(request, stage.run(op, body))
        headers = result.timing.headers() if result.timing else {}
        if op.headers is not None:
            headers.update(op.headers(result))
        return npz_response(encode_npz(to_arrays(result), fp16=query.fp16), headers)

    parameters = [
        inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request),
        inspect.Parameter(
            "query", inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[query_model, Query()]
        ),
    ]
    if op.json_body:
        parameters.append(
            inspect.Parameter("body", inspect.Parameter.KEYWORD_ONLY, annotation=op.request)
        )
    endpoint.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    endpoint.__name__ = route.path.rsplit("/", 1)[-1].replace("-", "_")

    responses = npz_responses(op.result_doc)
    if op.streams:
        responses[200]["content"][STREAM_MEDIA_TYPE] = {
            "schema": {"type": "string", "format": "binary"}
        }
    extra: dict[str, Any] | None = None
    if not op.json_body:
        declared = tensor_fields(op.request)
        members = ", ".join(
            f"{name} {declared[name].dtype} {declared[name].shape}" for name in route.members
        )
        extra = {**NPZ_REQUEST_BODY, "description": f"Body: npz with {members}."}
    app.post(
        route.path,
        dependencies=[auth],
        response_class=Response,
        summary=route.summary.split(":")[0].rstrip("."),
        description=route.summary,
        openapi_extra=extra,
        responses=responses,
    )(endpoint)
