"""Hugging Face Inference Endpoints handler: the sdserve decoder stage (the VAE).

Latents in, PNG images out; and, in ``encode-image`` mode, images in, latents out (the
init latent of image to image and inpainting). It runs `shared.stages.LocalDecoder`, the
object the sdserve decoder service wraps.

Decode (the default mode), JSON::

    {"inputs": "<base64 .npz: latent (B, h, w, C) float32 or float16>"}
    -> {"images": ["<base64 PNG>", ...]}          # B images, (h*f) x (w*f) RGB

The ``inputs`` is exactly the ``npz`` the diffusion handler returns.

Encode an image::

    {"inputs": "<base64 PNG or JPEG>" or ["<base64 ...>", ...],
     "parameters": {"mode": "encode-image", "fp16": false}}
    -> {"npz": "<base64 .npz: latent (B, h, w, C) float32>"}

A raw image body (Content-Type: image/png) reaches the handler as a PIL image and is
encoded too. Images must be of a served size (SDSERVE_SIZES); they are converted to RGB.

Tensors travel as base64 of sdserve's .npz wire format (``shared.wire``; uncompressed,
no pickles, checked before use), the only way to carry them in the toolkit's JSON. Bad
input raises ValueError naming the field (the toolkit answers 400).

Configuration: SDSERVE_* environment variables (SDSERVE_MODEL, SDSERVE_SIZES, ...). The
weights are SDSERVE_WEIGHTS when set, else the weights files in the repository, else
random (loudly logged). Deploying: deploy/hf/README.md in sdserve.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import logging
import math
import os
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from shared.config import Settings, format_size, load_settings
from shared.errors import InvalidInput, SdserveError
from shared.families import COMPONENTS, get_family
from shared.stages import make_decoder
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

MODES = ("decode", "encode-image")
FIELDS = {"latent": "inputs (latent)", "images": "inputs"}


def _png_b64(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class EndpointHandler:
    """Base64 .npz latent -> base64 PNGs; encode-image: images -> base64 .npz latent."""

    def __init__(self, path: str = "") -> None:
        self.settings = _handler_settings(path)
        self.loop = _LoopThread("sdserve-decoder")
        self.stage = make_decoder(self.settings)
        self.stage.load()
        channels = self.stage.family.spec.latent_channels
        self.latent_spec = {
            "latent": TensorSpec("float32", (None, None, None, channels), allow_fp16=True)
        }
        log.info("sdserve decoder handler ready: weights %s", self.settings.weights_label)

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        inputs, parameters = _request(data)
        default = "encode-image" if isinstance(inputs, Image.Image) else "decode"
        mode = parameters.get("mode") or default
        if mode not in MODES:
            raise ValueError(f"parameters.mode must be one of {', '.join(MODES)}; got {mode!r}")
        try:
            if mode == "decode":
                tensors = _decode_npz_b64(
                    inputs, self.latent_spec, "inputs", self.settings.max_body_bytes
                )
                decoded = self.loop.run(self.stage.decode(tensors["latent"]))
                return {"images": [_png_b64(image) for image in decoded.images]}
            images = self.read_images(inputs)
            encoded = self.loop.run(self.stage.encode_image(images))
        except SdserveError as exc:
            raise _request_error(exc, FIELDS) from None
        return {"npz": _encode_npz_b64({"latent": encoded.latent}, fp16=_flag(parameters, "fp16"))}

    def read_images(self, inputs: Any) -> np.ndarray:
        """PIL image, base64 image or list of base64 images -> uint8 (B, H, W, 3)."""
        items = inputs if isinstance(inputs, list) else [inputs]
        if not items or len(items) > self.settings.max_batch:
            raise ValueError(f"inputs must hold 1 to {self.settings.max_batch} images")
        served = ", ".join(format_size(s) for s in self.settings.sizes)
        arrays = []
        for i, item in enumerate(items):
            field = f"inputs[{i}]" if isinstance(inputs, list) else "inputs"
            image = item if isinstance(item, Image.Image) else self.open_image(item, field)
            # Check the size from the header, before decoding any pixels.
            if image.size not in self.settings.sizes:
                raise ValueError(
                    f"{field}: a {image.size[0]}x{image.size[1]} image is not of a served "
                    f"size; served sizes: {served}"
                )
            arrays.append(np.asarray(image.convert("RGB"), dtype=np.uint8))
        if len({a.shape for a in arrays}) > 1:
            raise ValueError("inputs: every image of a call must have the same size")
        return np.stack(arrays)

    def open_image(self, item: Any, field: str) -> Image.Image:
        if not isinstance(item, str):
            raise ValueError(f"{field} must be a base64 string of a PNG or JPEG image")
        if len(item) > (self.settings.max_body_bytes + 2) // 3 * 4 + 4:
            raise ValueError(
                f"{field} is larger than the {self.settings.max_body_bytes}-byte limit"
            )
        try:
            body = base64.b64decode(item, validate=True)
            return Image.open(io.BytesIO(body), formats=["PNG", "JPEG"])
        except (binascii.Error, ValueError, OSError):
            raise ValueError(f"{field} is not a base64 PNG or JPEG image") from None

    def close(self) -> None:
        """Stop the event loop and the model worker (the toolkit never calls this)."""
        self.loop.close()
        self.stage.close()
