"""Section 5, wire: bytes per request between central and the stages, npz vs base64
JSON."""

from __future__ import annotations

import argparse
import base64
import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import Record, ratio
from benchmarks.serving.common import wxh
from benchmarks.serving.records import CodecTimes, WireHop, as_json


def b64_json(arrays: Mapping[str, np.ndarray]) -> bytes:
    """What a JSON API would send: each tensor base64 of its raw bytes (float32 as
    float32), with dtype and shape."""
    return json.dumps(
        {
            name: {
                "dtype": str(a.dtype),
                "shape": list(a.shape),
                "b64": base64.b64encode(np.ascontiguousarray(a).tobytes()).decode("ascii"),
            }
            for name, a in arrays.items()
        }
    ).encode()


def json_lists(arrays: Mapping[str, np.ndarray]) -> int:
    """Length of the same tensors as JSON number lists (TF Serving REST style)."""
    return len(json.dumps({name: a.tolist() for name, a in arrays.items()}).encode())


def _best_of_ms(fn: Callable[[], Any], repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return round(min(times) * 1000, 2)


def codec_times(arrays: Mapping[str, np.ndarray]) -> CodecTimes:
    """Encode and decode milliseconds (best of 5): npz with the stages' checked decode,
    and base64 JSON."""
    from shared.wire import TensorSpec, decode_npz, encode_npz

    spec = {
        k: TensorSpec(str(v.dtype), tuple(v.shape), allow_fp16=v.dtype == np.float32)
        for k, v in arrays.items()
    }
    npz_body = encode_npz(arrays)
    json_body = b64_json(arrays)

    def decode_json() -> None:
        for item in json.loads(json_body).values():
            raw = base64.b64decode(item["b64"])
            np.frombuffer(raw, dtype=item["dtype"]).reshape(item["shape"])

    return CodecTimes(
        npz_encode_ms=_best_of_ms(lambda: encode_npz(arrays)),
        npz_decode_checked_ms=_best_of_ms(lambda: decode_npz(npz_body, spec, max_bytes=1 << 30)),
        b64_json_encode_ms=_best_of_ms(lambda: b64_json(arrays)),
        b64_json_decode_ms=_best_of_ms(decode_json),
    )


def section_wire(plan: Record, args: argparse.Namespace, log_dir: Path) -> Record:
    from shared.families import get_family
    from shared.wire import encode_npz

    rng = np.random.default_rng(0)
    result: Record = {"shapes": {}}
    for family_name, size in plan["shapes"].items():
        spec = get_family(family_name).spec
        width, height = size
        f = spec.downsampling_factor
        for n in plan["n"]:
            context = rng.standard_normal((1, spec.max_tokens, spec.context_dim), np.float32)
            uncond = rng.standard_normal((1, spec.max_tokens, spec.context_dim), np.float32)
            latent = rng.standard_normal((n, height // f, width // f, spec.latent_channels))
            latent = latent.astype(np.float32)
            images = rng.integers(0, 256, (n, height, width, 3), dtype=np.uint8)
            # The five bodies of one request, as central and the stages exchange them.
            bodies = {
                "text encoder -> central": {
                    "context": context,
                    "unconditional_context": uncond,
                    "token_count": np.asarray([9], np.int32),
                    "truncated": np.asarray([False]),
                },
                "central -> diffusion": {"context": context, "unconditional_context": uncond},
                "diffusion -> central": {"latent": latent},
                "central -> decoder": {"latent": latent},
                "decoder -> central": {"images": images},
            }
            rows: list[WireHop] = []
            for hop, arrays in bodies.items():
                rows.append(
                    WireHop(
                        hop=hop,
                        tensors={k: list(v.shape) for k, v in arrays.items()},
                        npz_fp32=len(encode_npz(arrays)),
                        npz_fp16=len(encode_npz(arrays, fp16=True)),
                        b64_json_fp32=len(b64_json(arrays)),
                        json_lists=json_lists(arrays),
                        raw_fp32=int(sum(a.nbytes for a in arrays.values())),
                    )
                )
            total = {
                k: sum(int(getattr(r, k)) for r in rows)
                for k in ("npz_fp32", "npz_fp16", "b64_json_fp32", "json_lists", "raw_fp32")
            }
            # Encode + decode cost of the biggest body (checked decode, as the stages do).
            big = max(bodies.values(), key=lambda a: sum(x.nbytes for x in a.values()))
            codec_ms = codec_times(big)
            result["shapes"][f"{family_name} {wxh(size)} n={n}"] = {
                "hops": [as_json(r) for r in rows],
                "total": total,
                "b64_json_over_npz_fp32": ratio(total["b64_json_fp32"], total["npz_fp32"]),
                "npz_fp16_over_fp32": ratio(total["npz_fp16"], total["npz_fp32"]),
                "codec_of_biggest_body": as_json(codec_ms),
            }
    return result
