"""Hugging Face Inference Endpoints handler: the sdserve diffusion stage.

Contexts (and, for image to image and inpainting, an init latent and a mask) in, the
denoised latent out. It runs `shared.pipeline.local.LocalDiffusion`, the object the sdserve
diffusion service wraps: the request's sampler (DDIM, DPM++ 2M, DPM++ 2M Karras, Euler
ancestral) with classifier-free guidance, requests sharing UNet calls step by step.

Request (JSON)::

    {"inputs": "<base64 .npz>",
     "parameters": {"width": 512, "height": 512, "steps": 25, "guidance_scale": 7.5,
                    "seed": 42, "n": 1,
                    "mode": "txt2img",    # or "img2img", "inpaint"
                    "strength": 1.0,      # img2img and inpaint
                    "num_resamples": 1,   # inpaint
                    "sampler": "ddim",    # or dpmpp_2m, dpmpp_2m_karras, euler_ancestral, aliases
                    "fp16": false}}       # send the latent as float16

The .npz holds ``context`` and ``unconditional_context`` (1 or n, 77, D) float32 (what
the text encoder handler returns as ``npz``), plus ``init_latent`` (1 or n, h, w, C) for
img2img and inpaint, plus ``mask`` (1 or n, h, w, 1) in [0, 1] on the latent grid
(1 = repaint) for inpaint. float16 members are accepted. Parameters default to the first
served size, SDSERVE_DEFAULT_STEPS (the family's: 25, 8 for tiny),
SDSERVE_DEFAULT_GUIDANCE_SCALE (the family's: 7.5 for sd-v1/sd-v2, 5 for tiny),
SDSERVE_DEFAULT_SAMPLER (else DDIM), a random seed, n = 1, txt2img; image i uses seed + i.

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

from typing import Any, ClassVar

from shared.pipeline.hf import StageHandler, flag_param, split_request
from shared.pipeline.local.diffusion import make_diffusion
from shared.pipeline.stage_contracts import DENOISE

# The denoise routes in the contract's order.
MODES = ("txt2img", "img2img", "inpaint")


class EndpointHandler(StageHandler):
    """Base64 .npz of contexts (+ init latent, mask) -> base64 .npz of the latent."""

    # Tensors are in the npz ("inputs"); scalars are parameters.
    fields: ClassVar[dict[str, str]] = {
        "context": "inputs (context)",
        "unconditional_context": "inputs (unconditional_context)",
        "init_latent": "inputs (init_latent)",
        "mask": "inputs (mask)",
        "size": "parameters.width/height",
    }

    def __init__(self, path: str = "") -> None:
        super().__init__(path, make_diffusion)

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        inputs, parameters = split_request(data)
        mode = parameters.get("mode") or "txt2img"
        if mode not in MODES:
            raise ValueError(f"parameters.mode must be one of {', '.join(MODES)}; got {mode!r}")
        fp16 = flag_param(parameters, "fp16")
        width, height = self.settings.sizes[0]
        defaults = {"width": width, "height": height}
        request = self.request(DENOISE, MODES.index(mode), inputs, parameters, defaults)
        return self.answer(self.run(DENOISE, request), fp16=fp16)
