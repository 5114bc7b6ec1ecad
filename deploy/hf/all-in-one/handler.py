"""Hugging Face Inference Endpoints handler: sdserve text to image, all stages local.

The text encoder, the diffusion stage and the decoder run in this process, through the
same `central.chain.Chain` the sdserve gateway runs in its all-in-one topology, so a seed
gives the same image here as from ``POST /v1/images/generations`` on the same model.

Request, as ``huggingface_hub.InferenceClient(...).text_to_image(...)`` sends it::

    {"inputs": "a lighthouse at dusk",
     "parameters": {"negative_prompt": "blurry", "height": 512, "width": 512,
                    "num_inference_steps": 25, "guidance_scale": 7.5, "seed": 42}}

Every parameter is optional: height and width default to the first served size
(SDSERVE_SIZES), num_inference_steps to SDSERVE_DEFAULT_STEPS, guidance_scale to 7.5 and
seed to a random one. Numbers may be floats when whole (64.0). Other parameters
(scheduler, ...) are ignored.

Response: a ``PIL.Image.Image``, which the Inference Toolkit sends as image/png (ask for
it with ``Accept: image/png``; InferenceClient does). Bad input raises ValueError naming
the field ("parameters.height: ..."), which the toolkit answers with a 400.

Configuration: SDSERVE_* environment variables (SDSERVE_MODEL, SDSERVE_SIZES, ...).
The weights are SDSERVE_WEIGHTS when set, else the weights files in the repository, else
random (loudly logged: images are noise). Deploying: deploy/hf/README.md in sdserve.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import math
import os
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from central.chain import Chain, GenerationParams
from shared.config import Settings, format_size, load_settings
from shared.errors import InvalidInput, SdserveError
from shared.families import COMPONENTS, get_family
from shared.wire import TensorSpec, decode_npz, encode_npz

# --- common: kept identical in every sdserve handler (a test compares them) ----------
# A handler must stand alone in its model repository, so this block is repeated in each.

log = logging.getLogger("sdserve.hf")
T = TypeVar("T")
CLIP_VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"


def _holds_weights(directory: Path, model: str) -> bool:
    """Whether `directory` holds weights files of `model`'s family (keras-cv's or ours)."""
    family = get_family(model)
    names = {w.filename for w in family.published_weights.values()}
    names |= {f"{component}.weights.h5" for component in COMPONENTS}
    return any((directory / name).is_file() for name in names)


def _handler_settings(path: str) -> Settings:
    """SDSERVE_* settings, with the repository (`path`) filling in what they leave open.

    Weights: SDSERVE_WEIGHTS when set; else the repository, when it holds weights files
    (sha256-checked as any weights directory); else random, loudly logged. The CLIP
    vocabulary: SDSERVE_CLIP_VOCAB when set; else bpe_simple_vocab_16e6.txt.gz in the
    repository, when there; else the open-clip-torch wheel's. Stage URLs are ignored:
    every stage a handler runs is local.
    """
    repository = Path(path) if path else None
    overrides: dict[str, Any] = dict.fromkeys(("text_encoder_url", "diffusion_url", "decoder_url"))
    vocab = repository / CLIP_VOCAB_FILE if repository else None
    if vocab and vocab.is_file() and "SDSERVE_CLIP_VOCAB" not in os.environ:
        overrides["clip_vocab"] = vocab
    settings = load_settings(**overrides)
    explicit = "SDSERVE_WEIGHTS" in os.environ
    if repository and not explicit and _holds_weights(repository, settings.model):
        settings = load_settings(**overrides, weights=str(repository.resolve()))
    if settings.weights == "random":
        log.warning(
            "!!! WEIGHTS ARE RANDOM: %s holds no weights files of the %s family and "
            "SDSERVE_WEIGHTS is not set, so every image will be noise. Add the weights "
            "files to the repository or set SDSERVE_WEIGHTS=pretrained.",
            path or "the repository",
            settings.model,
        )
    return settings


class _LoopThread:
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


def _request(data: Any) -> tuple[Any, dict[str, Any]]:
    """The toolkit's JSON body: {"inputs": ..., "parameters": {...}} (parameters optional)."""
    if not isinstance(data, dict) or "inputs" not in data:
        raise ValueError('the request body must be a JSON object with an "inputs" field')
    parameters = data.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise ValueError('"parameters" must be a JSON object')
    return data["inputs"], parameters


def _number(parameters: dict[str, Any], name: str, *, whole: bool) -> int | float | None:
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


def _whole(parameters: dict[str, Any], name: str, default: int) -> int:
    value = _number(parameters, name, whole=True)
    return default if value is None else int(value)


def _real(parameters: dict[str, Any], name: str, default: float) -> float:
    value = _number(parameters, name, whole=False)
    return default if value is None else float(value)


def _flag(parameters: dict[str, Any], name: str) -> bool:
    value = parameters.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ValueError(f"parameters.{name} must be true or false; got {value!r}")
    return value


def _request_error(exc: SdserveError, fields: dict[str, str]) -> Exception:
    """A stage's error as the toolkit reports it: bad input is a ValueError naming the field."""
    if not isinstance(exc, InvalidInput):
        return RuntimeError(exc.message)
    param = exc.param or ""
    field = fields.get(param, f"parameters.{param}" if param else "inputs")
    return ValueError(f"{field}: {exc.message}")


def _decode_npz_b64(
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


def _encode_npz_b64(arrays: dict[str, np.ndarray], *, fp16: bool = False) -> str:
    return base64.b64encode(encode_npz(arrays, fp16=fp16)).decode("ascii")


# --- end common ---------------------------------------------------------------------

DEFAULT_GUIDANCE_SCALE = 7.5
# The chain's parameter names -> the request fields they came from.
FIELDS = {
    "prompt": "inputs",
    "prompts": "inputs",
    "negative_prompts": "parameters.negative_prompt",
    "steps": "parameters.num_inference_steps",
    "size": "parameters.width/height",
}


class EndpointHandler:
    """Text to image with every stage in this process."""

    def __init__(self, path: str = "") -> None:
        self.settings = _handler_settings(path)
        self.loop = _LoopThread("sdserve-all-in-one")
        self.chain = Chain(self.settings)
        self.chain.load()
        log.info(
            "sdserve all-in-one handler ready: model %s, weights %s, sizes %s",
            self.settings.model,
            self.settings.weights_label,
            ", ".join(format_size(s) for s in self.settings.sizes),
        )

    def __call__(self, data: dict[str, Any]) -> Image.Image:
        params = self.parse(data)
        try:
            result = self.loop.run(self.chain.generate(params))
        except SdserveError as exc:
            raise _request_error(exc, FIELDS) from None
        log.info("generated %dx%d, seed %d", params.width, params.height, result.seeds[0])
        return Image.fromarray(result.images[0])

    def parse(self, data: dict[str, Any]) -> GenerationParams:
        """The toolkit's request as the chain's parameters; ValueError naming a bad field."""
        prompt, parameters = _request(data)
        if not isinstance(prompt, str):
            raise ValueError("inputs must be the prompt, a string")
        negative = parameters.get("negative_prompt")
        if isinstance(negative, list) and len(negative) == 1:
            negative = negative[0]  # older huggingface_hub clients send a list
        if negative is not None and not isinstance(negative, str):
            raise ValueError("parameters.negative_prompt must be a string")
        default_width, default_height = self.settings.sizes[0]
        width = _whole(parameters, "width", default_width)
        height = _whole(parameters, "height", default_height)
        if (width, height) not in self.settings.sizes:
            served = self.settings.sizes
            bad = [
                name
                for name, value, axis in (("width", width, 0), ("height", height, 1))
                if value not in {size[axis] for size in served}
            ] or ["width", "height"]
            raise ValueError(
                f"parameters.{' and parameters.'.join(bad)}: {width}x{height} is not served "
                f"here; served sizes (width x height): "
                f"{', '.join(format_size(s) for s in served)}"
            )
        seed = _number(parameters, "seed", whole=True)
        return GenerationParams(
            prompt=prompt,
            negative_prompt=negative or None,
            width=width,
            height=height,
            steps=_whole(parameters, "num_inference_steps", self.settings.default_steps),
            guidance_scale=_real(parameters, "guidance_scale", DEFAULT_GUIDANCE_SCALE),
            seed=None if seed is None else int(seed),
            n=1,
        )

    def close(self) -> None:
        """Stop the event loop and the model workers (the toolkit never calls this)."""
        self.loop.run(self.chain.aclose())
        self.loop.close()
