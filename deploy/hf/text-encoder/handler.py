"""Hugging Face Inference Endpoints handler: the sdserve text encoder stage.

Prompts in, the context tensors the diffusion stage needs out. It runs
`shared.stages.LocalTextEncoder`, the object the sdserve text encoder service wraps.

Request (JSON)::

    {"inputs": "a lighthouse at dusk"            # or a list of prompts
     "parameters": {"negative_prompt": "blurry",  # or a list, as long as inputs
                    "fp16": false}}               # send the contexts as float16

Response (JSON)::

    {"npz": "<base64 .npz: context, unconditional_context (B, 77, D) float32>",
     "token_counts": [7], "truncated": [false]}

Tensors travel as base64 of sdserve's .npz wire format (``shared.wire``; uncompressed,
no pickles, checked before use), the only way to carry them in the toolkit's JSON. The
``npz`` value is exactly what the diffusion handler takes as its ``inputs``. Bad input
raises ValueError naming the field (the toolkit answers 400).

Configuration: SDSERVE_* environment variables (SDSERVE_MODEL, ...). The weights are
SDSERVE_WEIGHTS when set, else the weights files in the repository, else the family's
default (tiny: its embedded weights; SD: keras-cv's published files).
Deploying: deploy/hf/README.md in sdserve.
"""

from __future__ import annotations

from typing import Any

# Shared by every sdserve handler: central/hf_endpoint.py.
from central.hf_endpoint import (
    LoopThread as _LoopThread,
)
from central.hf_endpoint import (
    encode_npz_b64 as _encode_npz_b64,
)
from central.hf_endpoint import (
    flag_param as _flag,
)
from central.hf_endpoint import (
    handler_settings as _handler_settings,
)
from central.hf_endpoint import log as log
from central.hf_endpoint import (
    request_error as _request_error,
)
from central.hf_endpoint import (
    split_request as _request,
)
from shared.errors import SdserveError
from shared.pipeline.local import make_text_encoder

FIELDS = {"prompts": "inputs", "negative_prompts": "parameters.negative_prompt"}


def _prompts(value: Any, field: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(p, str) for p in value):
        return list(value)
    raise ValueError(f"{field} must be a prompt or a non-empty list of prompts")


class EndpointHandler:
    """Prompts -> base64 .npz of context and unconditional_context."""

    def __init__(self, path: str = "") -> None:
        self.settings = _handler_settings(path)
        self.loop = _LoopThread("sdserve-text-encoder")
        self.stage = make_text_encoder(self.settings)
        self.stage.load()
        log.info("sdserve text encoder handler ready: weights %s", self.settings.weights_label)

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        inputs, parameters = _request(data)
        prompts = _prompts(inputs, "inputs")
        negatives: list[str | None] | None = None
        if parameters.get("negative_prompt") is not None:
            negatives = list(_prompts(parameters["negative_prompt"], "parameters.negative_prompt"))
        fp16 = _flag(parameters, "fp16")
        try:
            result = self.loop.run(self.stage.encode(prompts, negatives))
        except SdserveError as exc:
            raise _request_error(exc, FIELDS) from None
        tensors = {
            "context": result.context,
            "unconditional_context": result.unconditional_context,
        }
        return {
            "npz": _encode_npz_b64(tensors, fp16=fp16),
            "token_counts": list(result.token_counts),
            "truncated": list(result.truncated),
        }

    def close(self) -> None:
        """Stop the event loop and the model worker (the toolkit never calls this)."""
        self.loop.close()
        self.stage.close()
