"""One sampler's accuracy at each step count, through the in-process serving chain."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import time
from functools import cache
from pathlib import Path

from benchmarks.harness import Record, log
from shared.config import Settings, load_settings
from shared.families import get_family
from shared.pipeline.chain import Chain
from shared.sampler_names import SamplerName
from training import evaluate
from training.scenes import held_out_count

ATTRIBUTES = ("colour_and_shape", "colour", "shape", "place", "size")


def chain_settings(args: argparse.Namespace) -> Settings:
    # Every prompt at once: room for all of them, and big running batches (as the card).
    return load_settings(
        model="tiny",
        weights=args.weights,
        sizes="64x64",
        max_batch=64,
        queue_size=max(args.prompts, 64),
    )


@cache
def _chain(weights: str, prompts: int) -> Chain:
    args = argparse.Namespace(weights=weights, prompts=prompts)
    chain = Chain(chain_settings(args))
    chain.load()
    return chain


def weights_description(args: argparse.Namespace) -> Record:
    """Which weights were judged: their label and the UNet file's sha256 (the scores
    belong to those bytes; tiny's are retrained from time to time)."""
    settings = chain_settings(args)
    family = get_family("tiny")
    directory = family.embedded_weights if settings.weights == "embedded" else None
    if settings.weights not in ("embedded", "random", "pretrained"):
        directory = Path(settings.weights)
    unet = None if directory is None else directory / "diffusion_model.weights.h5"
    return {
        "label": settings.weights_label,
        "diffusion_model_sha256": (
            hashlib.sha256(unet.read_bytes()).hexdigest() if unet and unet.is_file() else None
        ),
        "guidance_scale": evaluate.GUIDANCE,
        "guidance_from_timestep": family.spec.guidance_from_timestep,
        "held_out_prompts": held_out_count(),
    }


def section_sampler(sampler: SamplerName, args: argparse.Namespace) -> Record:
    """Accuracy (percent) and wall time at each of `args.steps` for one sampler."""
    chain = _chain(args.weights, args.prompts)
    by_steps: Record = {}
    for steps in args.steps:
        started = time.perf_counter()
        result = asyncio.run(
            evaluate.text_to_image(chain, args.prompts, steps=steps, sampler=sampler)
        )
        seconds = time.perf_counter() - started
        scores = {name: round(100 * result.rate(name), 2) for name in ATTRIBUTES}
        by_steps[str(steps)] = {
            **scores,
            "prompts": len(result.scenes),
            "seconds": round(seconds, 2),
            "misses": [
                scene.caption()
                for scene, verdict in zip(result.scenes, result.verdicts, strict=True)
                if not verdict.colour_and_shape
            ],
        }
        accuracy = scores["colour_and_shape"]
        log(f"{sampler} {steps} steps: colour+shape {accuracy} % ({seconds:.1f} s)")
    return {"sampler": sampler, "by_steps": by_steps}
