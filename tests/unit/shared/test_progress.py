"""The diffusion service's streamed reply: frames, their limits, and latent previews."""

from __future__ import annotations

import json

import numpy as np
import pytest

from shared.errors import QueueFull, error_from_body
from shared.families.base import SD_VAE_PREVIEW, LatentPreviewMap
from shared.progress import (
    ERROR,
    PREVIEW,
    PROGRESS,
    RESULT,
    TIMING_MEMBER,
    FrameReader,
    StreamError,
    error_frame,
    frame,
    latent_preview,
    preview_every,
    preview_frame,
    progress_frame,
    read_json_frame,
    read_preview,
    read_progress,
    result_frame,
    should_preview,
)
from shared.wire import TensorSpec, decode_npz


def _stream() -> bytes:
    latent = np.random.default_rng(0).standard_normal((2, 8, 8, 4)).astype(np.float32)
    return b"".join(
        [
            progress_frame(1, 3),
            preview_frame(1, 3, latent_preview(latent)),
            progress_frame(2, 3),
            progress_frame(3, 3),
            result_frame({"latent": latent, "seeds": np.array([7, 8])}, 1.5, 20.25),
        ]
    )


@pytest.mark.parametrize("chunk", [1, 3, 7, 64, 1 << 20])
def test_frames_survive_any_chunking(chunk):
    body = _stream()
    reader = FrameReader(max_frame_bytes=1 << 20)
    frames = []
    for i in range(0, len(body), chunk):
        frames += reader.feed(body[i : i + chunk])
    assert reader.pending == 0
    assert [kind for kind, _ in frames] == [PROGRESS, PREVIEW, PROGRESS, PROGRESS, RESULT]
    assert read_progress(frames[0][1]) == (1, 3)
    step, total, preview = read_preview(frames[1][1], max_bytes=1 << 20)
    assert (step, total, preview.shape, preview.dtype) == (1, 3, (2, 8, 8, 3), np.uint8)
    spec = {
        "latent": TensorSpec("float32", (None, None, None, 4)),
        "seeds": TensorSpec("int64", (None,)),
        TIMING_MEMBER: TensorSpec("float64", (2,)),
    }
    arrays = decode_npz(frames[4][1], spec, max_bytes=1 << 20)
    assert arrays["seeds"].tolist() == [7, 8]
    assert arrays["timing_ms"].tolist() == [1.5, 20.25]
    assert arrays["latent"].shape == (2, 8, 8, 4)


def test_a_cut_stream_leaves_bytes_pending():
    body = _stream()
    reader = FrameReader(max_frame_bytes=1 << 20)
    reader.feed(body[:-10])
    assert reader.pending > 0


def test_bad_frames_are_refused():
    with pytest.raises(StreamError, match="kind"):
        FrameReader(1024).feed(b"Z\x00\x00\x00\x01x")
    with pytest.raises(StreamError, match="exceeds"):
        FrameReader(1024).feed(b"R\x00\x01\x00\x00")
    with pytest.raises(StreamError, match="exceeds"):  # JSON frames are small, always
        FrameReader(1 << 30).feed(b"P\x01\x00\x00\x00")
    with pytest.raises(StreamError):
        read_progress(frame(PROGRESS, b'{"step": 5, "total": 3}')[5:])
    with pytest.raises(StreamError):
        read_json_frame(b"[1, 2]")
    with pytest.raises(ValueError):
        frame("X", b"")


def test_error_frame_reads_back_as_the_same_error():
    payload = error_frame(QueueFull("diffusion queue is full", retry_after_s=3))
    [(kind, body)] = FrameReader(1024).feed(payload)
    assert kind == ERROR
    decoded = json.loads(body)
    assert decoded["status"] == 503
    error = error_from_body(decoded["status"], decoded, stage="diffusion")
    assert isinstance(error, QueueFull)
    assert "diffusion queue is full" in error.message


def test_latent_preview_is_small_uint8_rgb():
    latent = np.zeros((1, 4, 6, 4), np.float32)
    preview = latent_preview(latent)
    assert preview.shape == (1, 4, 6, 3) and preview.dtype == np.uint8
    assert (preview == 128).all()  # a zero latent is mid-grey
    other = latent_preview(np.arange(2 * 2 * 2 * 2, dtype=np.float32).reshape(2, 2, 2, 2))
    assert other.shape == (2, 2, 2, 3) and other.min() == 0 and other.max() == 255


def test_a_preview_map_is_a_linear_map_plus_bias_into_the_decoders_range() -> None:
    identity = LatentPreviewMap(
        matrix=((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (0.0, 0.0, 0.0)),
        bias=(0.0, -1.0, 1.0),
    )
    latent = np.zeros((1, 2, 3, 4), np.float32)
    latent[0, 0, 0] = (1.0, 1.0, -1.0, 9.0)  # the fourth channel does not count
    preview = latent_preview(latent, identity)
    assert preview.shape == (1, 2, 3, 3) and preview.dtype == np.uint8
    # [-1, 1] -> 0..255, clipped: r = 1, g = 1 - 1 = 0, b = -1 + 1 = 0.
    assert preview[0, 0, 0].tolist() == [255, 128, 128]
    assert preview[0, 1, 2].tolist() == [128, 0, 255]  # zero latent: the bias alone
    with pytest.raises(ValueError, match="4 channels for latents of 3"):
        latent_preview(np.zeros((1, 2, 2, 3), np.float32), identity)


def test_without_a_map_four_channels_get_the_sd_vae_factors() -> None:
    latent = np.random.default_rng(0).standard_normal((2, 3, 3, 4)).astype(np.float32)
    assert (latent_preview(latent) == latent_preview(latent, SD_VAE_PREVIEW)).all()


def test_a_job_gets_about_ten_previews_whatever_its_steps() -> None:
    assert [preview_every(n) for n in (1, 6, 10, 25, 80, 1000)] == [1, 1, 1, 3, 8, 100]


def test_previews_every_k_steps_but_not_the_last():
    assert [s for s in range(1, 11) if should_preview(s, 10, 3)] == [3, 6, 9]
    assert [s for s in range(1, 5) if should_preview(s, 4, 0)] == []
    assert [s for s in range(1, 5) if should_preview(s, 4, 1)] == [1, 2, 3]
