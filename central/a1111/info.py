"""The `info` of an A1111 generation response: a JSON string of A1111's `Processed.js()`
fields, with what ran here (seeds, sampler, steps, size, model) plus ours: what the
request asked for that was ignored or substituted, whether it was interrupted, and the
job that ran it."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RunInfo:
    """What one A1111 request ran as, and how it ended."""

    prompt: str
    negative_prompt: str
    seeds: list[int]
    width: int
    height: int
    sampler_name: str  # the one that ran
    cfg_scale: float
    steps: int
    batch_size: int
    model: str
    version: str
    job_id: str
    started: float
    denoising_strength: float | None = None
    extra_generation_params: dict[str, Any] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    substituted: dict[str, dict[str, str]] = field(default_factory=dict)
    interrupted: bool = False
    result: dict[str, Any] | None = None  # the job's result (ours), when it has one

    def infotext(self, index: int) -> str:
        """A1111's "parameters" text of image `index` (what its UI shows and pastes)."""
        lines = [self.prompt]
        if self.negative_prompt:
            lines.append(f"Negative prompt: {self.negative_prompt}")
        settings = {
            "Steps": self.steps,
            "Sampler": self.sampler_name,
            "CFG scale": f"{self.cfg_scale:g}",
            "Seed": self.seeds[index],
            "Size": f"{self.width}x{self.height}",
            "Model": self.model,
            **(
                {"Denoising strength": f"{self.denoising_strength:g}"}
                if self.denoising_strength is not None
                else {}
            ),
            **self.extra_generation_params,
            "Version": self.version,
        }
        lines.append(", ".join(f"{name}: {value}" for name, value in settings.items()))
        return "\n".join(lines)

    def encoded(self) -> str:
        n = len(self.seeds)
        info: dict[str, Any] = {
            "prompt": self.prompt,
            "all_prompts": [self.prompt] * n,
            "negative_prompt": self.negative_prompt,
            "all_negative_prompts": [self.negative_prompt] * n,
            "seed": self.seeds[0],
            "all_seeds": self.seeds,
            "subseed": -1,
            "all_subseeds": [-1] * n,
            "subseed_strength": 0,
            "width": self.width,
            "height": self.height,
            "sampler_name": self.sampler_name,
            "cfg_scale": self.cfg_scale,
            "steps": self.steps,
            "batch_size": self.batch_size,
            "restore_faces": False,
            "face_restoration_model": None,
            "sd_model_name": self.model,
            "sd_model_hash": None,
            "sd_vae_name": None,
            "sd_vae_hash": None,
            "seed_resize_from_w": -1,
            "seed_resize_from_h": -1,
            "denoising_strength": self.denoising_strength,
            "extra_generation_params": self.extra_generation_params,
            "index_of_first_image": 0,
            "infotexts": [self.infotext(i) for i in range(n)],
            "styles": [],
            "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(self.started)),
            "clip_skip": 1,
            "is_using_inpainting_conditioning": False,
            "version": self.version,
            # Ours (A1111 clients read the fields above and pass over these).
            "ignored": self.ignored,
            "substituted": self.substituted,
            "interrupted": self.interrupted,
            "sdserve": {
                "job": self.job_id,
                **(
                    {
                        name: self.result[name]
                        for name in ("model", "weights", "timings", "warnings")
                        if name in self.result
                    }
                    if self.result is not None
                    else {}
                ),
            },
        }
        return json.dumps(info)
