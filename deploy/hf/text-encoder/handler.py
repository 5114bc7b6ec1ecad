"""Hugging Face Inference Endpoints handler: the sdserve text encoder stage.

Prompts in, the context tensors the diffusion stage needs out. It runs
`shared.pipeline.local.LocalTextEncoder`, the object the sdserve text encoder service wraps.

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

from typing import Any, ClassVar

from shared.pipeline.hf import StageHandler, flag_param, split_request
from shared.pipeline.local.text_encoder import make_text_encoder
from shared.pipeline.stage_contracts import ENCODE
from shared.pipeline.types import EncodeRequest


def _prompts(value: Any, field: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(p, str) for p in value):
        return list(value)
    raise ValueError(f"{field} must be a prompt or a non-empty list of prompts")


class EndpointHandler(StageHandler):
    """Prompts -> base64 .npz of context and unconditional_context."""

    fields: ClassVar[dict[str, str]] = {
        "prompts": "inputs",
        "negative_prompts": "parameters.negative_prompt",
    }

    def __init__(self, path: str = "") -> None:
        super().__init__(path, make_text_encoder)

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        inputs, parameters = split_request(data)
        prompts = _prompts(inputs, "inputs")
        negatives: list[str | None] | None = None
        if parameters.get("negative_prompt") is not None:
            negatives = list(_prompts(parameters["negative_prompt"], "parameters.negative_prompt"))
        fp16 = flag_param(parameters, "fp16")
        result = self.run(ENCODE, EncodeRequest(prompts=prompts, negative_prompts=negatives))
        return self.answer(result, fp16=fp16)
