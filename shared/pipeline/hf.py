"""What the Hugging Face Inference Endpoints handlers in deploy/hf share, and the one
handler of a stage (`StageHandler`), driven by the stage's contract.

Each handler directory is a model repository of its own; `deploy/hf/build_repo.py`
copies the `shared` package next to it, so this module travels with it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import math
import os
import threading
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np

from shared.config import Settings, load_settings
from shared.errors import InvalidInput, SdserveError
from shared.families import COMPONENTS, get_family
from shared.pipeline.contract import Operation, from_arrays, tensor_fields, validated
from shared.pipeline.local.base import LocalStage
from shared.wire import TensorSpec, decode_npz, encode_npz

log = logging.getLogger("sdserve.hf")
T = TypeVar("T")
CLIP_VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"


def holds_weights(directory: Path, model: str) -> bool:
    """Whether `directory` holds weights files of `model`'s family (keras-cv's or ours)."""
    family = get_family(model)
    names = {w.filename for w in family.published_weights.values()}
    names |= {f"{component}.weights.h5" for component in COMPONENTS}
    return any((directory / name).is_file() for name in names)


def handler_settings(path: str) -> Settings:
    """SDSERVE_* settings, with the repository (`path`) filling in what they leave open.

    Weights: SDSERVE_WEIGHTS when set; else the repository, when it holds weights files
    (sha256-checked as any weights directory); else the family's default (tiny: the
    embedded weights; SD: keras-cv's published files). Random weights are loudly logged. The CLIP
    vocabulary: SDSERVE_CLIP_VOCAB when set; else bpe_simple_vocab_16e6.txt.gz in the
    repository, when there; else the one packaged in shared/clip_vocab/. Stage URLs are ignored:
    every stage a handler runs is local.
    """
    repository = Path(path) if path else None
    overrides: dict[str, Any] = dict.fromkeys(("text_encoder_url", "diffusion_url", "decoder_url"))
    vocab = repository / CLIP_VOCAB_FILE if repository else None
    if vocab and vocab.is_file() and "SDSERVE_CLIP_VOCAB" not in os.environ:
        overrides["clip_vocab"] = vocab
    settings = load_settings(**overrides)
    explicit = "SDSERVE_WEIGHTS" in os.environ
    if repository and not explicit and holds_weights(repository, settings.model):
        settings = load_settings(**overrides, weights=str(repository.resolve()))
    if settings.weights == "random":
        log.warning(
            "!!! WEIGHTS ARE RANDOM (SDSERVE_WEIGHTS=random): every %s image will be "
            "noise. Add the weights files to %s or unset SDSERVE_WEIGHTS.",
            settings.model,
            path or "the repository",
        )
    return settings


class LoopThread:
    """A private event loop on a daemon thread, created once per handler.

    The stages' batchers live on this loop; `run` submits a coroutine from whichever
    thread the Inference Toolkit calls the handler on, so concurrent requests share it
    (and its batches) instead of each needing a loop of its own.
    """

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(work, self.loop).result()

    def close(self) -> None:
        async def cancel_others() -> None:
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        self.run(cancel_others())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


def split_request(data: Any) -> tuple[Any, dict[str, Any]]:
    """The toolkit's JSON body: {"inputs": ..., "parameters": {...}} (parameters optional)."""
    if not isinstance(data, dict) or "inputs" not in data:
        raise ValueError('the request body must be a JSON object with an "inputs" field')
    parameters = data.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise ValueError('"parameters" must be a JSON object')
    return data["inputs"], parameters


def number_param(parameters: dict[str, Any], name: str, *, whole: bool) -> int | float | None:
    """parameters[name] as a number, None when absent or null.

    JSON numbers and numeric strings (query parameters) are accepted; a whole-number
    field takes a float only when it is whole (64.0).
    """
    value = parameters.get(name)
    if value is None:
        return None
    problem = ValueError(
        f"parameters.{name} must be {'a whole number' if whole else 'a number'}; got {value!r}"
    )
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise problem
    if isinstance(value, int):
        return value
    try:
        number = float(value)
    except ValueError:
        raise problem from None
    if not math.isfinite(number) or (whole and not number.is_integer()):
        raise problem
    return int(number) if whole else number


def whole_param(parameters: dict[str, Any], name: str, default: int) -> int:
    value = number_param(parameters, name, whole=True)
    return default if value is None else int(value)


def real_param(parameters: dict[str, Any], name: str, default: float) -> float:
    value = number_param(parameters, name, whole=False)
    return default if value is None else float(value)


def flag_param(parameters: Mapping[str, Any], name: str) -> bool:
    value = parameters.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ValueError(f"parameters.{name} must be true or false; got {value!r}")
    return value


def request_error(exc: SdserveError, fields: dict[str, str]) -> Exception:
    """A stage's error as the toolkit reports it: bad input is a ValueError naming the field."""
    if not isinstance(exc, InvalidInput):
        return RuntimeError(exc.message)
    param = exc.param or ""
    field = fields.get(param, f"parameters.{param}" if param else "inputs")
    return ValueError(f"{field}: {exc.message}")


def decode_npz_b64(
    text: Any, spec: dict[str, TensorSpec], field: str, max_bytes: int
) -> dict[str, np.ndarray]:
    """Base64 of an sdserve .npz body, checked like a stage service checks its body."""
    if not isinstance(text, str):
        raise ValueError(f"{field} must be a base64 string of an .npz archive")
    if len(text) > (max_bytes + 2) // 3 * 4 + 4:
        raise ValueError(f"{field} is larger than the {max_bytes}-byte limit")
    try:
        body = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{field} is not valid base64") from None
    try:
        return decode_npz(body, spec, max_bytes=max_bytes)
    except SdserveError as exc:
        raise ValueError(f"{field}: {exc.message}") from None


def encode_npz_b64(arrays: dict[str, np.ndarray], *, fp16: bool = False) -> str:
    return base64.b64encode(encode_npz(arrays, fp16=fp16)).decode("ascii")


class StageHandler:
    """A handler of one local stage: its operations' tensors as base64 `.npz` in
    `inputs`, their scalar parameters in `parameters` (validated by the contract's
    params model, named `parameters.<field>` when wrong), the result's tensors back as
    base64 `.npz` and its lists (seeds, token counts) as JSON lists.

    `fields` maps a stage error's `param` to the name the caller knows it by.
    """

    fields: ClassVar[Mapping[str, str]] = {}

    def __init__(self, path: str, make_stage: Callable[[Settings], LocalStage]) -> None:
        self.settings = handler_settings(path)
        self.stage = make_stage(self.settings)
        self.loop = LoopThread(f"sdserve-{self.stage.name}")
        self.stage.load()
        self.stage.warm()
        log.info(
            "sdserve %s handler ready: weights %s", self.stage.name, self.settings.weights_label
        )

    def request(
        self,
        op: Operation[Any, Any],
        route_index: int,
        inputs: Any,
        parameters: Mapping[str, Any],
        defaults: Mapping[str, Any] | None = None,
    ) -> Any:
        """The operation's request from base64 `.npz` inputs and the parameters (those left
        out take `defaults`, then the deployment's, as the stage service does)."""
        route = op.routes[route_index]
        specs = op.request_specs(route, self.stage.family.spec)
        arrays = decode_npz_b64(inputs, specs, "inputs", self.settings.max_body_bytes)
        extra: dict[str, Any] = {}
        if op.params is not None:
            given = {k: v for k, v in parameters.items() if k in op.params.model_fields}
            deployment = op.params_defaults(self.settings) if op.params_defaults else {}
            values = {**deployment, **(defaults or {}), **given}
            try:
                extra["params"] = validated(op.params, values, prefix="parameters.")
            except InvalidInput as exc:
                raise ValueError(exc.message) from None
        return from_arrays(op.request, arrays, **extra)

    def run(self, op: Operation[Any, Any], request: Any) -> Any:
        try:
            return self.loop.run(self.stage.run(op, request))
        except SdserveError as exc:
            raise request_error(exc, dict(self.fields)) from None

    @staticmethod
    def answer(result: Any, *, fp16: bool, skip: tuple[str, ...] = ()) -> dict[str, Any]:
        """Array tensors as one base64 `.npz` ("npz"); list fields as JSON lists."""
        arrays: dict[str, np.ndarray] = {}
        answer: dict[str, Any] = {}
        for name, declared in tensor_fields(type(result)).items():
            value = getattr(result, name)
            if name in skip or value is None:
                continue
            if isinstance(value, list):
                answer[name] = list(value)
            else:
                arrays[declared.wire_name or name] = value
        return {"npz": encode_npz_b64(arrays, fp16=fp16), **answer}

    def close(self) -> None:
        """Stop the event loop and the model worker (the toolkit never calls this)."""
        self.loop.close()
        self.stage.shutdown()
