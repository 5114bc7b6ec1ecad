"""Hugging Face Inference Endpoints handler: the sdserve diffusion stage.

Contexts (and, for image to image and inpainting, an init latent and a mask) in, the
denoised latent out. It runs `shared.stages.LocalDiffusion`, the object the sdserve
diffusion service wraps: DDIM with classifier-free guidance, requests sharing UNet calls
step by step.

Request (JSON)::

    {"inputs": "<base64 .npz>",
     "parameters": {"width": 512, "height": 512, "steps": 25, "guidance_scale": 7.5,
                    "seed": 42, "n": 1,
                    "mode": "txt2img",    # or "img2img", "inpaint"
                    "strength": 1.0,      # img2img and inpaint
                    "num_resamples": 1,   # inpaint
                    "fp16": false}}       # send the latent as float16

The .npz holds ``context`` and ``unconditional_context`` (1 or n, 77, D) float32 (what
the text encoder handler returns as ``npz``), plus ``init_latent`` (1 or n, h, w, C) for
img2img and inpaint, plus ``mask`` (1 or n, h, w, 1) in [0, 1] on the latent grid
(1 = repaint) for inpaint. float16 members are accepted. Parameters default to the first
served size, SDSERVE_DEFAULT_STEPS, SDSERVE_DEFAULT_GUIDANCE_SCALE (the family's: 7.5
for sd-v1/sd-v2, 5 for tiny), a random seed, n = 1, txt2img; image i uses seed + i.

Response (JSON)::

    {"npz": "<base64 .npz: latent (n, h, w, C) float32>", "seeds": [42]}

Tensors travel as base64 of sdserve's .npz wire format (``shared.wire``; uncompressed,
no pickles, checked before use), the only way to carry them in the toolkit's JSON. The
``npz`` value is exactly what the decoder handler takes as its ``inputs``. Bad input
raises ValueError naming the field (the toolkit answers 400).

Configuration: SDSERVE_* environment variables (SDSERVE_MODEL, SDSERVE_SIZES, ...). The
weights are SDSERVE_WEIGHTS when set, else the weights files in the repository, else
the family's default (tiny: its embedded weights; SD: keras-cv's published files).
Deploying: deploy/hf/README.md in sdserve.
"""

from __future__ import annotations

from typing import Any

# Shared by every sdserve handler: central/hf_endpoint.py.
from central.hf_endpoint import (
    LoopThread as _LoopThread,
)
from central.hf_endpoint import (
    decode_npz_b64 as _decode_npz_b64,
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
    number_param as _number,
)
from central.hf_endpoint import (
    real_param as _real,
)
from central.hf_endpoint import (
    request_error as _request_error,
)
from central.hf_endpoint import (
    split_request as _request,
)
from central.hf_endpoint import (
    whole_param as _whole,
)
from shared.errors import SdserveError
from shared.pipeline.local import make_diffusion
from shared.pipeline.types import DenoiseParams
from shared.wire import TensorSpec

MODES = ("txt2img", "img2img", "inpaint")
# Tensors are in the npz ("inputs"); scalars are parameters.
FIELDS = {
    "context": "inputs (context)",
    "unconditional_context": "inputs (unconditional_context)",
    "init_latent": "inputs (init_latent)",
    "mask": "inputs (mask)",
    "size": "parameters.width/height",
}


class EndpointHandler:
    """Base64 .npz of contexts (+ init latent, mask) -> base64 .npz of the latent."""

    def __init__(self, path: str = "") -> None:
        self.settings = _handler_settings(path)
        self.loop = _LoopThread("sdserve-diffusion")
        self.stage = make_diffusion(self.settings)
        self.stage.load()
        spec = self.stage.family.spec
        context = TensorSpec("float32", (None, spec.max_tokens, spec.context_dim), allow_fp16=True)
        txt2img = {"context": context, "unconditional_context": context}
        latent = TensorSpec("float32", (None, None, None, spec.latent_channels), allow_fp16=True)
        img2img = {**txt2img, "init_latent": latent}
        mask = TensorSpec("float32", (None, None, None, 1), allow_fp16=True)
        self.specs = {"txt2img": txt2img, "img2img": img2img, "inpaint": {**img2img, "mask": mask}}
        log.info("sdserve diffusion handler ready: weights %s", self.settings.weights_label)

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        inputs, parameters = _request(data)
        mode = parameters.get("mode") or "txt2img"
        if mode not in MODES:
            raise ValueError(f"parameters.mode must be one of {', '.join(MODES)}; got {mode!r}")
        params = self.parse(parameters)
        fp16 = _flag(parameters, "fp16")
        tensors = _decode_npz_b64(inputs, self.specs[mode], "inputs", self.settings.max_body_bytes)
        try:
            result = self.loop.run(
                self.stage.denoise(
                    tensors["context"],
                    tensors["unconditional_context"],
                    params,
                    init_latent=tensors.get("init_latent"),
                    mask=tensors.get("mask"),
                )
            )
        except SdserveError as exc:
            raise _request_error(exc, FIELDS) from None
        return {
            "npz": _encode_npz_b64({"latent": result.latent}, fp16=fp16),
            "seeds": list(result.seeds),
        }

    def parse(self, parameters: dict[str, Any]) -> DenoiseParams:
        default_width, default_height = self.settings.sizes[0]
        seed = _number(parameters, "seed", whole=True)
        return DenoiseParams(
            width=_whole(parameters, "width", default_width),
            height=_whole(parameters, "height", default_height),
            steps=_whole(parameters, "steps", self.settings.default_steps),
            guidance_scale=_real(parameters, "guidance_scale", self.settings.guidance_scale),
            seed=None if seed is None else int(seed),
            n=_whole(parameters, "n", 1),
            strength=_real(parameters, "strength", 1.0),
            num_resamples=_whole(parameters, "num_resamples", 1),
        )

    def close(self) -> None:
        """Stop the event loop and the model worker (the toolkit never calls this)."""
        self.loop.close()
        self.stage.close()
