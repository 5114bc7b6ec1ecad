"""Hugging Face Inference Endpoints handler: sdserve text to image, all stages local.

The text encoder, the diffusion stage and the decoder run in this process, through the
same `shared.pipeline.chain.Chain` the sdserve gateway runs in its all-in-one topology, so a seed
gives the same image here as from ``POST /v1/images/generations`` on the same model.

Request, as ``huggingface_hub.InferenceClient(...).text_to_image(...)`` sends it::

    {"inputs": "a lighthouse at dusk",
     "parameters": {"negative_prompt": "blurry", "height": 512, "width": 512,
                    "num_inference_steps": 25, "guidance_scale": 7.5, "seed": 42}}

Every parameter is optional: height and width default to the first served size
(SDSERVE_SIZES), num_inference_steps to SDSERVE_DEFAULT_STEPS (the family's: 25, 8 for
tiny), guidance_scale to SDSERVE_DEFAULT_GUIDANCE_SCALE (the family's: 7.5 for sd-v1/sd-v2,
5 for tiny) and seed to a random one. Numbers may be floats when whole (64.0).
``scheduler`` picks the sampler (a diffusers class such as DPMSolverMultistepScheduler or
EulerAncestralDiscreteScheduler, or any name the gateway's ``sampler`` takes: "DPM++ 2M
Karras", "euler_ancestral", ...; default SDSERVE_DEFAULT_SAMPLER, else the family's: DDIM).
Other parameters are ignored.

Response: a ``PIL.Image.Image``, which the Inference Toolkit sends as image/png (ask for
it with ``Accept: image/png``; InferenceClient does). Bad input raises ValueError naming
the field ("parameters.height: ..."), which the toolkit answers with a 400.

Configuration: SDSERVE_* environment variables (SDSERVE_MODEL, SDSERVE_SIZES, ...).
The weights are SDSERVE_WEIGHTS when set, else the weights files in the repository, else
the family's default (tiny: its embedded weights; SD: keras-cv's published files).
Deploying: deploy/hf/README.md in sdserve.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from shared.config import format_size
from shared.errors import SdserveError
from shared.pipeline.chain import Chain
from shared.pipeline.contract import validated

# Shared by every sdserve handler: shared/pipeline/hf.py.
from shared.pipeline.hf import (
    LoopThread as _LoopThread,
)
from shared.pipeline.hf import (
    handler_settings as _handler_settings,
)
from shared.pipeline.hf import log as log
from shared.pipeline.hf import (
    number_param as _number,
)
from shared.pipeline.hf import (
    real_param as _real,
)
from shared.pipeline.hf import (
    request_error as _request_error,
)
from shared.pipeline.hf import (
    split_request as _request,
)
from shared.pipeline.hf import (
    whole_param as _whole,
)
from shared.pipeline.types import DenoiseParams, GenerationParams

# The chain's parameter names -> the request fields they came from.
FIELDS = {
    "prompt": "inputs",
    "prompts": "inputs",
    "negative_prompts": "parameters.negative_prompt",
    "steps": "parameters.num_inference_steps",
    "sampler": "parameters.scheduler",
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
        log.info(
            "generated %dx%d, seed %d", params.denoise.width, params.denoise.height, result.seeds[0]
        )
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
        fields = {
            "width": width,
            "height": height,
            "steps": _whole(parameters, "num_inference_steps", self.settings.steps),
            "guidance_scale": _real(parameters, "guidance_scale", self.settings.guidance_scale),
            "seed": None if seed is None else int(seed),
            "sampler": parameters.get("scheduler") or self.settings.sampler,
        }
        try:
            denoise = validated(DenoiseParams, fields)
        except SdserveError as exc:
            raise _request_error(exc, FIELDS) from None
        return GenerationParams(prompt=prompt, negative_prompt=negative or None, denoise=denoise)

    def close(self) -> None:
        """Stop the event loop and the model workers (the toolkit never calls this)."""
        self.loop.run(self.chain.aclose())
        self.loop.close()
