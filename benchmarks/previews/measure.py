"""The numbers of benchmarks.previews: two chains that differ only in their preview map."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from benchmarks.harness import Record, log, utc_now
from benchmarks.host import cpu_and_memory
from shared.batching import ModelWorker
from shared.config import load_settings
from shared.families import get_family
from shared.families.base import SD_VAE_PREVIEW
from shared.pipeline.chain import Chain
from shared.pipeline.local.decoder import make_decoder
from shared.pipeline.local.diffusion import LocalDiffusion, make_diffusion
from shared.pipeline.local.text_encoder import make_text_encoder
from shared.pipeline.stage import Stage, load_all
from shared.progress import preview_every
from training import evaluate, fit_preview
from training.scenes import IMAGE_SIZE, held_out_count

# The maps compared, in the report's order: what tiny declares, and what it used before.
MAPS = {
    "fitted": "tiny's fitted map (`training.fit_preview`)",
    "sd-vae": "SD VAE factors (ComfyUI's SD 1.x)",
}
DEFAULT_STEPS = evaluate.STEPS
MANY_STEPS = 80  # the browser test's job (tests/e2e/test_web_page.py)
PROMPTS = held_out_count()  # every held-out prompt with a plain background
MANY_STEPS_PROMPTS = 32
# Encoded held-out scenes the map is checked against the decoder on.
DECODER_SCENES = fit_preview.CHECK_SCENES


class Chains:
    """One text encoder and decoder, a diffusion stage per map, and a chain for each."""

    def __init__(self, queue_size: int) -> None:
        settings = load_settings(
            model="tiny", weights="embedded", sizes="64x64", max_batch=64, queue_size=queue_size
        )
        family = get_family("tiny")
        family.spec = replace(family.spec, preview_map=SD_VAE_PREVIEW)
        worker = ModelWorker("diffusion", queue_size=settings.queue_size)
        text_encoder, decoder = make_text_encoder(settings), make_decoder(settings)
        diffusion: dict[str, Stage] = {
            "fitted": make_diffusion(settings),
            "sd-vae": LocalDiffusion(settings, family, worker),
        }
        self.stages: list[Stage] = [text_encoder, *diffusion.values(), decoder]
        load_all(self.stages)
        self.chains = {
            name: Chain(settings, stages=(text_encoder, stage, decoder))
            for name, stage in diffusion.items()
        }

    async def aclose(self) -> None:
        for stage in self.stages:
            await stage.close()


def _stats(scores: evaluate.PreviewScores) -> Record:
    return {
        "psnr_db": {
            "median": round(float(np.median(scores.psnr)), 2),
            "min": round(float(np.min(scores.psnr)), 2),
            "max": round(float(np.max(scores.psnr)), 2),
        },
        "mean_abs_error": {
            "median": round(float(np.median(scores.mean_abs_error)), 2),
            "max": round(float(np.max(scores.mean_abs_error)), 2),
        },
    }


def _forming(result: evaluate.TextToImageResult) -> dict[str, float]:
    """Median PSNR of each previewed step against the final image, on the latent grid."""
    steps = sorted(result.previews[0])
    factor = IMAGE_SIZE // result.previews[0][steps[0]].shape[0]
    finals = [evaluate.box_downscale(image, factor) for image in result.images]
    return {
        str(step): round(
            float(
                np.median(
                    [
                        evaluate.psnr(previews[step], final)
                        for previews, final in zip(result.previews, finals, strict=True)
                    ]
                )
            ),
            2,
        )
        for step in steps
    }


async def _both_maps(
    chains: Chains, prompts: int, steps: int
) -> dict[str, evaluate.TextToImageResult]:
    results: dict[str, evaluate.TextToImageResult] = {}
    for name, chain in chains.chains.items():
        started = time.monotonic()
        results[name] = await evaluate.text_to_image(chain, prompts, steps=steps)
        log(f"{name}: {prompts} prompts, {steps} steps in {time.monotonic() - started:.1f} s")
    first, *others = results.values()
    for other in others:  # the same latents: only the previews may differ
        same = all((a == b).all() for a, b in zip(first.images, other.images, strict=True))
        if not same:
            raise RuntimeError("the two chains drew different images; the comparison is void")
    return results


def decoder_fit(scenes: int) -> Record:
    """PSNR of each map's previews against the decoded images on the latent grid."""
    encoder, decoder = fit_preview.vae_models()
    latents, decoded = fit_preview.encode_and_decode(
        encoder, decoder, fit_preview.check_scenes(scenes)
    )
    factor = get_family("tiny").spec.downsampling_factor
    on_the_grid = fit_preview.decoded_on_the_grid(decoded, factor)
    declared = get_family("tiny").spec.preview_map
    assert declared is not None
    maps = {"fitted": declared, "sd-vae": SD_VAE_PREVIEW}
    return {
        "scenes": scenes,
        "psnr_db": {
            name: round(fit_preview.map_psnr(latents, on_the_grid, preview_map), 2)
            for name, preview_map in maps.items()
        },
    }


async def measure(
    prompts: int, many_steps_prompts: int
) -> tuple[Record, dict[str, evaluate.TextToImageResult]]:
    """The report's numbers, and the default-steps results (for the strip)."""
    started = time.monotonic()
    chains = Chains(queue_size=max(prompts, many_steps_prompts))
    try:
        default = await _both_maps(chains, prompts, DEFAULT_STEPS)
        many = await _both_maps(chains, many_steps_prompts, MANY_STEPS)
    finally:
        await chains.aclose()
    report: Record = {
        "date": utc_now(),
        "machine": _machine(),
        "maps": MAPS,
        "guidance_scale": evaluate.GUIDANCE,
        "declared_map": _declared_map(),
        "default_steps": {
            "steps": DEFAULT_STEPS,
            "preview_every": preview_every(DEFAULT_STEPS),
            "prompts": prompts,
            "last_step": evaluate.last_preview_scores(default["fitted"]).step,
            "maps": {n: _stats(evaluate.last_preview_scores(r)) for n, r in default.items()},
            "forming": {n: _forming(r) for n, r in default.items()},
        },
        "many_steps": {
            "steps": MANY_STEPS,
            "preview_every": preview_every(MANY_STEPS),
            "prompts": many_steps_prompts,
            "last_step": evaluate.last_preview_scores(many["fitted"]).step,
            "maps": {n: _stats(evaluate.last_preview_scores(r)) for n, r in many.items()},
        },
        "decoder_fit": decoder_fit(DECODER_SCENES),
    }
    report["seconds"] = round(time.monotonic() - started, 1)
    return report, default


def _machine() -> str:
    host = cpu_and_memory()
    return f"{host['cpu_model']}, {host['usable_cpus']} CPUs, {host['memory_gib']} GiB"


def _declared_map() -> Record:
    declared = get_family("tiny").spec.preview_map
    assert declared is not None
    return {"matrix": [list(row) for row in declared.matrix], "bias": list(declared.bias)}
