"""Denoising progress: the streamed reply of the diffusion service, and latent previews.

A streaming call (`?stream=true` on /v1/denoise, /v1/img2img, /v1/inpaint) answers
`application/x-sdserve-stream`: a sequence of length-prefixed frames, written as they
happen, on the same HTTP response (no polling):

    frame = kind (1 ASCII byte) + length (uint32, big-endian) + payload (length bytes)

    P  progress  JSON {"step": k, "total": n}, after every denoising step
    V  preview   npz {"preview": uint8 (n, h, w, 3), "step": int32 (), "total": int32 ()},
                 every `preview_every` steps when asked for: a cheap RGB approximation
                 of the current latent (the family's `FamilySpec.preview_map`), on the
                 latent grid (h = H / f, f the family's downsampling factor)
    R  result    npz: the operation's result tensors as a plain answer carries them
                 (diffusion: "latent" (n, h, w, c), "seeds" (n,)), plus "timing_ms"
                 float64 (2,) = [queue, compute]; the last frame
    E  error     JSON {"status": http status, "error": {"type", "message", "param"?}};
                 the last frame (shared.errors.error_from_body reads it back)

Tensors travel as npz, as everywhere else on the wire; never as base64 in JSON. Nothing
here imports FastAPI: the stages call the callbacks, the HTTP layers move the bytes.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable
from typing import Any

import numpy as np

from shared.errors import SdserveError, error_body, http_status_for
from shared.families.base import SD_VAE_PREVIEW, LatentPreviewMap
from shared.wire import TensorSpec, decode_npz, encode_npz

STREAM_MEDIA_TYPE = "application/x-sdserve-stream"

PROGRESS = "P"
PREVIEW = "V"
RESULT = "R"
ERROR = "E"
KINDS = frozenset({PROGRESS, PREVIEW, RESULT, ERROR})
FINAL_KINDS = frozenset({RESULT, ERROR})
# The result frame's member holding [queue_ms, compute_ms].
TIMING_MEMBER = "timing_ms"

_HEADER = struct.Struct(">cI")
# Progress and error frames are a few dozen bytes; anything this big is not one.
MAX_JSON_FRAME_BYTES = 64 * 1024

# (step, total) after each step; (step, total, preview) every k steps.
PreviewCallback = Callable[[int, int, np.ndarray], None]

PREVIEW_SPEC = {
    "preview": TensorSpec("uint8", (None, None, None, 3)),
    "step": TensorSpec("int32", ()),
    "total": TensorSpec("int32", ()),
}


class StreamError(ValueError):
    """The byte stream is not a valid sequence of frames."""


def latent_preview(latent: np.ndarray, preview_map: LatentPreviewMap | None = None) -> np.ndarray:
    """A cheap uint8 RGB picture of latents (n, h, w, c), on the latent grid.

    With `preview_map` (the family's, `FamilySpec.preview_map`): its linear map, from the
    decoder's [-1, 1] to 0-255. Without: SD's VAE factors for four channels (what every
    family here had before families declared their own), else the first three channels,
    each image stretched to 0-255.
    """
    latent = np.asarray(latent, dtype=np.float32)
    if preview_map is None and latent.shape[-1] == len(SD_VAE_PREVIEW.matrix):
        preview_map = SD_VAE_PREVIEW
    if preview_map is not None:
        matrix = np.asarray(preview_map.matrix, dtype=np.float32)
        if matrix.shape != (latent.shape[-1], 3):
            raise ValueError(
                f"a preview map of {matrix.shape[0]} channels for latents of {latent.shape[-1]}"
            )
        rgb = latent @ matrix + np.asarray(preview_map.bias, dtype=np.float32)
        return (np.clip((rgb + 1.0) / 2.0, 0.0, 1.0) * 255).round().astype(np.uint8)
    channels = latent[..., :3]
    if channels.shape[-1] < 3:
        pad = [(0, 0)] * (channels.ndim - 1) + [(0, 3 - channels.shape[-1])]
        channels = np.pad(channels, pad)
    low = channels.min(axis=(1, 2, 3), keepdims=True)
    high = channels.max(axis=(1, 2, 3), keepdims=True)
    scaled = (channels - low) / np.maximum(high - low, 1e-6)
    return (scaled * 255).round().astype(np.uint8)


# A job's event stream (what the web page shows) carries about this many previews,
# whatever its steps.
PREVIEWS_PER_JOB = 10


def preview_every(total: int) -> int:
    """The interval, in steps, that gives a job of `total` steps PREVIEWS_PER_JOB previews."""
    return max(1, math.ceil(total / PREVIEWS_PER_JOB))


def should_preview(step: int, total: int, every: int) -> bool:
    """Every `every` steps, but not at the end (the real image is a moment away)."""
    return every > 0 and step < total and step % every == 0


# ------------------------------------------------------------------------ writing


def frame(kind: str, payload: bytes) -> bytes:
    if kind not in KINDS:
        raise ValueError(f"unknown frame kind {kind!r}")
    return _HEADER.pack(kind.encode("ascii"), len(payload)) + payload


def progress_frame(step: int, total: int) -> bytes:
    return frame(PROGRESS, json.dumps({"step": step, "total": total}).encode())


def preview_frame(step: int, total: int, preview: np.ndarray) -> bytes:
    arrays: dict[str, np.ndarray] = {
        "preview": np.asarray(preview, dtype=np.uint8),
        "step": np.array(step, dtype=np.int32),
        "total": np.array(total, dtype=np.int32),
    }
    return frame(PREVIEW, encode_npz(arrays))


def result_frame(
    arrays: dict[str, np.ndarray],
    queue_ms: float,
    compute_ms: float,
    *,
    fp16: bool = False,
) -> bytes:
    """The last frame: the operation's result tensors plus its queue and compute time."""
    timing = np.array([queue_ms, compute_ms], dtype=np.float64)
    return frame(RESULT, encode_npz({**arrays, TIMING_MEMBER: timing}, fp16=fp16))


def error_frame(error: SdserveError) -> bytes:
    body = {
        "status": http_status_for(error),
        **error_body(error.error_type, error.message, error.param),
    }
    return frame(ERROR, json.dumps(body).encode())


def internal_error_frame() -> bytes:
    body = {"status": 500, **error_body("internal_error", "internal error; see the server log")}
    return frame(ERROR, json.dumps(body).encode())


# ------------------------------------------------------------------------ reading


class FrameReader:
    """Splits a byte stream, fed in chunks of any size, into (kind, payload) frames."""

    def __init__(self, max_frame_bytes: int) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[str, bytes]]:
        self._buffer += data
        frames: list[tuple[str, bytes]] = []
        while len(self._buffer) >= _HEADER.size:
            raw_kind, length = _HEADER.unpack_from(self._buffer)
            kind = raw_kind.decode("latin-1")
            if kind not in KINDS:
                raise StreamError(f"unknown frame kind {kind!r}")
            limit = self.max_frame_bytes if kind in (PREVIEW, RESULT) else MAX_JSON_FRAME_BYTES
            if length > limit:
                raise StreamError(f"{kind} frame of {length} bytes exceeds {limit}")
            end = _HEADER.size + length
            if len(self._buffer) < end:
                break
            frames.append((kind, bytes(self._buffer[_HEADER.size : end])))
            del self._buffer[:end]
        return frames

    @property
    def pending(self) -> int:
        """Bytes of an unfinished frame (non-zero at the end: the stream was cut)."""
        return len(self._buffer)


def read_json_frame(payload: bytes) -> dict[str, Any]:
    try:
        body = json.loads(payload)
    except ValueError as exc:
        raise StreamError(f"frame is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise StreamError("frame is not a JSON object")
    return body


def read_progress(payload: bytes) -> tuple[int, int]:
    body = read_json_frame(payload)
    step, total = body.get("step"), body.get("total")
    if not isinstance(step, int) or not isinstance(total, int) or not 0 <= step <= total:
        raise StreamError("progress frame needs integers 0 <= step <= total")
    return step, total


def read_preview(payload: bytes, *, max_bytes: int) -> tuple[int, int, np.ndarray]:
    arrays = decode_npz(payload, PREVIEW_SPEC, max_bytes=max_bytes)
    return int(arrays["step"]), int(arrays["total"]), arrays["preview"]
