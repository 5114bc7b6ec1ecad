"""One sampler's accuracy at each step count, through the in-process serving chain."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from functools import cache
from pathlib import Path

import numpy as np

from benchmarks.harness import Record, log
from shared.config import Settings, load_settings
from shared.families import get_family
from shared.pipeline.chain import Chain
from shared.sampler_names import SamplerName
from shared.weights import sha256_of
from training import evaluate
from training.model_card import EDIT_CASES
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


def _weights_directory(weights: str) -> Path | None:
    """Where tiny's judged weights (and their model card) are, if they are files."""
    if weights == "embedded":
        return get_family("tiny").embedded_weights
    return None if weights in ("random", "pretrained") else Path(weights)


def weights_description(args: argparse.Namespace) -> Record:
    """Which weights were judged: their label and the UNet file's sha256 (the scores
    belong to those bytes; tiny's are retrained from time to time)."""
    settings = chain_settings(args)
    family = get_family("tiny")
    directory = _weights_directory(settings.weights)
    unet = None if directory is None else directory / "diffusion_model.weights.h5"
    return {
        "label": settings.weights_label,
        "diffusion_model_sha256": sha256_of(unet) if unet and unet.is_file() else None,
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


# ----------------------------------------------------------------- the card's measures

# The sampler the model card was scored with (its evaluation.json records the steps).
CARD_SAMPLER: SamplerName = "ddim"


def card_setting_label(sampler: SamplerName, steps: int) -> str:
    return f"{sampler}:{steps}"


def section_card(args: argparse.Namespace) -> Record:
    """Every score of tiny's model card (held-out prompts in the grammar and in held-out
    phrasings, inpainting, image to image, the last preview) at the card's settings and at
    each of `args.card_settings`, so a new default is shown to keep the card's scores."""
    directory = _weights_directory(args.weights)
    card = None if directory is None else directory / "evaluation.json"
    if card is None or not card.is_file():
        raise ValueError(
            f"weights {args.weights!r} have no model card (evaluation.json) to compare"
        )
    card_steps = int(json.loads(card.read_text())["settings"]["steps"])
    chain = _chain(args.weights, args.prompts)
    settings = [(CARD_SAMPLER, card_steps), *args.card_settings]
    measured: Record = {}
    for sampler, steps in dict.fromkeys(settings):
        started = time.perf_counter()
        scores = asyncio.run(_card_scores(chain, args.prompts, sampler, steps))
        scores["seconds"] = round(time.perf_counter() - started, 1)
        measured[card_setting_label(sampler, steps)] = scores
        log(
            f"card at {sampler} {steps} steps: colour+shape "
            f"{scores['text_to_image']['colour_and_shape']} %, phrasings "
            f"{scores['held_out_phrasings']['colour_and_shape']} % ({scores['seconds']} s)"
        )
    return {"reference": card_setting_label(CARD_SAMPLER, card_steps), "settings": measured}


async def _card_scores(chain: Chain, prompts: int, sampler: SamplerName, steps: int) -> Record:
    grammar = await evaluate.text_to_image(chain, prompts, steps=steps, sampler=sampler)
    phrased = await evaluate.phrasings_to_image(chain, prompts, steps=steps, sampler=sampler)
    inpainted = await evaluate.inpaint(chain, EDIT_CASES, steps=steps, sampler=sampler)
    i2i = await evaluate.img2img(chain, EDIT_CASES, steps=steps, sampler=sampler)
    preview = evaluate.last_preview_scores(grammar)
    return {
        "text_to_image": {name: round(100 * grammar.rate(name), 2) for name in ATTRIBUTES},
        "held_out_phrasings": {name: round(100 * phrased.rate(name), 2) for name in ATTRIBUTES},
        "inpainting_colour_and_shape_inside": round(
            100 * float(np.mean([v.colour_and_shape for v in inpainted.verdicts])), 2
        ),
        "img2img_psnr_db_min": round(float(np.min(i2i.psnr)), 2),
        "img2img_psnr_db_median": round(float(np.median(i2i.psnr)), 2),
        "last_preview_psnr_db_median": round(float(np.median(preview.psnr)), 2),
        "prompts": prompts,
        "edit_cases": EDIT_CASES,
    }
