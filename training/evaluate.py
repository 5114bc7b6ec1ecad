"""Held-out evaluation of a tiny model through the serving chain (used by tests and card).

Three checks, each on held-out combinations with fixed seeds:

- text to image: does the image show the prompt's colour and shape (and place, size)?
- inpainting: a new shape is asked for inside a square mask on a rendered scene; is it
  there, and is everything outside the mask within PSNR of the input?
- image to image at low strength: is the output within PSNR of the input?
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from shared.families import get_family
from shared.pipeline.chain import Chain, overlay_unmasked
from shared.pipeline.stage import Progress
from shared.pipeline.types import DenoiseParams, EditInputs, GenerationParams
from shared.progress import preview_every
from shared.sampler_names import DEFAULT_SAMPLER, SamplerName
from training.judge import Verdict, judge
from training.phrasing import held_out_phrasings
from training.scenes import COLOURS, IMAGE_SIZE, PLACES, SHAPES, Scene, held_out_scenes, render

# What a request that names no steps gets, so the scores are the default's (the shipped
# card was scored at 25, its default then; benchmarks.samplers compares the two).
STEPS = get_family("tiny").spec.default_steps
# What a request that names no guidance_scale gets, so the scores are the default's.
GUIDANCE = get_family("tiny").spec.default_guidance_scale
IMG2IMG_STRENGTH = 0.2
# Square mask around the inpainted shape's cell, in pixels (a third of the image + margin).
_MASK_MARGIN = 3


def psnr(a: np.ndarray, b: np.ndarray, where: np.ndarray | None = None) -> float:
    """PSNR in dB of two uint8 images, over the pixels where `where` is True (all if None)."""
    diff = a.astype(np.float64) - b.astype(np.float64)
    if where is not None:
        diff = diff[where]
    mse = float(np.mean(diff**2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def box_downscale(image: np.ndarray, factor: int) -> np.ndarray:
    """A uint8 (H, W, 3) image averaged over factor x factor blocks, rounded: the final
    image at the size of a preview (the latent grid)."""
    height, width, channels = image.shape
    blocks = image.astype(np.float64).reshape(
        height // factor, factor, width // factor, factor, channels
    )
    return np.asarray(blocks.mean(axis=(1, 3)).round(), dtype=np.uint8)


def mean_abs_error(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two uint8 images, in 0-255 levels."""
    return float(np.mean(np.abs(a.astype(np.float64) - b.astype(np.float64))))


# Previews, step -> the (h, w, 3) uint8 preview of one image at that step.
Previews = dict[int, np.ndarray]


async def _generate(
    chain: Chain,
    prompts: Sequence[str],
    seeds: Sequence[int],
    edits: Sequence[EditInputs | None],
    strength: float = 1.0,
    *,
    steps: int = STEPS,
    preview_every: int = 0,
    sampler: SamplerName = DEFAULT_SAMPLER,
) -> tuple[list[np.ndarray], list[Previews]]:
    """The images, and each one's previews every `preview_every` steps (0: none)."""

    async def one(prompt: str, seed: int, edit: EditInputs | None) -> tuple[np.ndarray, Previews]:
        params = GenerationParams(
            prompt=prompt,
            negative_prompt=None,
            denoise=DenoiseParams(
                width=IMAGE_SIZE,
                height=IMAGE_SIZE,
                steps=steps,
                guidance_scale=GUIDANCE,
                seed=seed,
                n=1,
                strength=strength,
                sampler=sampler,
            ),
        )
        previews: Previews = {}

        def on_preview(step: int, _total: int, preview: np.ndarray) -> None:
            previews[step] = preview[0]

        progress = Progress(on_preview=on_preview, preview_every=preview_every)
        result = await chain.generate(params, edit, progress=progress if preview_every else None)
        return np.asarray(result.images[0]), previews

    # Concurrent requests: the diffusion stage batches their rows step by step.
    done = await asyncio.gather(
        *(one(p, s, e) for p, s, e in zip(prompts, seeds, edits, strict=True))
    )
    return [image for image, _ in done], [previews for _, previews in done]


@dataclass(frozen=True)
class TextToImageResult:
    scenes: list[Scene]
    images: list[np.ndarray]
    verdicts: list[Verdict]
    prompts: list[str]
    # Each image's live previews, every shared.progress.preview_every(steps) steps, as a
    # job's event stream carries them to the web page.
    previews: list[Previews] = field(default_factory=list)

    def rate(self, attribute: str, shape: str | None = None, size: str | None = None) -> float:
        """Share of verdicts with `attribute` right, over every prompt or those of one
        shape and/or size."""
        picked = [
            v
            for s, v in zip(self.scenes, self.verdicts, strict=True)
            if shape in (None, s.shape) and size in (None, s.size)
        ]
        return float(np.mean([getattr(v, attribute) for v in picked]))


async def text_to_image(
    chain: Chain,
    count: int,
    seed: int = 0,
    *,
    steps: int = STEPS,
    sampler: SamplerName = DEFAULT_SAMPLER,
) -> TextToImageResult:
    """Held-out combinations, captioned in the training captions' grammar, with the
    previews a job of `steps` steps streams (the card's settings unless `steps` or
    `sampler` say otherwise: benchmarks.samplers)."""
    scenes = held_out_scenes(count, seed)
    return await _judged(chain, scenes, [s.caption() for s in scenes], seed, steps, sampler)


async def phrasings_to_image(
    chain: Chain,
    count: int,
    seed: int = 0,
    *,
    steps: int = STEPS,
    sampler: SamplerName = DEFAULT_SAMPLER,
) -> TextToImageResult:
    """Held-out combinations, captioned in held-out phrasings (training.phrasing)."""
    phrased = held_out_phrasings(count, seed)
    return await _judged(
        chain, [p.scene for p in phrased], [p.prompt for p in phrased], seed, steps, sampler
    )


async def _judged(
    chain: Chain,
    scenes: list[Scene],
    prompts: list[str],
    seed: int,
    steps: int,
    sampler: SamplerName = DEFAULT_SAMPLER,
) -> TextToImageResult:
    images, previews = await _generate(
        chain,
        prompts,
        [seed * 1000 + i for i in range(len(prompts))],
        [None] * len(prompts),
        steps=steps,
        preview_every=preview_every(steps),
        sampler=sampler,
    )
    verdicts = [judge(i, s) for i, s in zip(images, scenes, strict=True)]
    return TextToImageResult(scenes, images, verdicts, prompts, previews)


@dataclass(frozen=True)
class PreviewScores:
    """How close each image's last preview is to the image itself, on the latent grid."""

    step: int  # the last previewed step
    psnr: list[float]  # dB, preview against the image box-downscaled to the preview's size
    mean_abs_error: list[float]  # the same pair, 0-255 levels


def last_preview_scores(result: TextToImageResult) -> PreviewScores:
    step = max(result.previews[0])
    factor = IMAGE_SIZE // result.previews[0][step].shape[0]
    pairs = [
        (previews[step], box_downscale(image, factor))
        for image, previews in zip(result.images, result.previews, strict=True)
    ]
    return PreviewScores(
        step,
        [psnr(preview, final) for preview, final in pairs],
        [mean_abs_error(preview, final) for preview, final in pairs],
    )


def _grid_distance(a: str, b: str) -> int:
    (ra, ca), (rb, cb) = divmod(PLACES.index(a), 3), divmod(PLACES.index(b), 3)
    return max(abs(ra - rb), abs(ca - cb))


@dataclass(frozen=True)
class InpaintCase:
    base: Scene  # what the input image shows
    target: Scene  # the shape the prompt asks for inside the mask
    mask: np.ndarray  # (H, W) bool, True = repaint


def inpaint_cases(count: int, seed: int = 0) -> list[InpaintCase]:
    """A rendered scene plus a held-out shape asked for in another, masked cell."""
    rng = np.random.default_rng([seed, 7])
    cases: list[InpaintCase] = []
    for target in held_out_scenes(count, seed + 1):
        # The existing shape goes as far from the masked cell as the grid allows.
        distance = {p: _grid_distance(p, target.place) for p in PLACES}
        free = [p for p in PLACES if distance[p] == max(distance.values())]
        colours = [c for c in COLOURS if c not in (target.colour, *target.background)]
        base = Scene(
            shape=SHAPES[rng.integers(len(SHAPES))],
            colour=colours[rng.integers(len(colours))],
            size="small",
            place=free[rng.integers(len(free))],
            background=target.background,
        )
        row, col = divmod(PLACES.index(target.place), 3)
        cell = IMAGE_SIZE / 3
        y0, x0 = int(row * cell) - _MASK_MARGIN, int(col * cell) - _MASK_MARGIN
        y1, x1 = int((row + 1) * cell) + _MASK_MARGIN, int((col + 1) * cell) + _MASK_MARGIN
        if target.size == "large":  # a large shape may be pushed inwards from the edge
            y0, x0, y1, x1 = y0 - 4, x0 - 4, y1 + 4, x1 + 4
        mask = np.zeros((IMAGE_SIZE, IMAGE_SIZE), bool)
        mask[max(y0, 0) : y1, max(x0, 0) : x1] = True
        cases.append(InpaintCase(base, target, mask))
    return cases


@dataclass(frozen=True)
class InpaintResult:
    cases: list[InpaintCase]
    images: list[np.ndarray]  # as served by default: the input's pixels outside the mask
    verdicts: list[Verdict]
    outside_psnr: list[float]
    raw_outside_psnr: list[float]  # the model alone, before that overlay


async def inpaint(
    chain: Chain,
    count: int,
    seed: int = 0,
    *,
    steps: int = STEPS,
    sampler: SamplerName = DEFAULT_SAMPLER,
) -> InpaintResult:
    """One generation per case, measured as served and as the model alone.

    The default overlay (`keep_unmasked`) is pure post-processing of the decoded image,
    so it is applied here to the raw result instead of generating everything twice.
    """
    cases = inpaint_cases(count, seed)
    inputs = [render(c.base) for c in cases]
    masks = [c.mask.astype(np.float32) for c in cases]
    edits = [
        EditInputs(image=image, mask=mask, keep_unmasked=False)
        for image, mask in zip(inputs, masks, strict=True)
    ]
    raw, _ = await _generate(
        chain,
        [c.target.caption() for c in cases],
        [seed * 1000 + i for i in range(count)],
        edits,
        steps=steps,
        sampler=sampler,
    )
    # The same call, on the same inputs, that the chain makes when keep_unmasked is on.
    images = [
        overlay_unmasked(r[None], image, mask)[0]
        for r, image, mask in zip(raw, inputs, masks, strict=True)
    ]
    return InpaintResult(
        cases,
        images,
        [judge(image, c.target) for image, c in zip(images, cases, strict=True)],
        [psnr(o, i, ~c.mask) for o, i, c in zip(images, inputs, cases, strict=True)],
        [psnr(o, i, ~c.mask) for o, i, c in zip(raw, inputs, cases, strict=True)],
    )


@dataclass(frozen=True)
class Img2ImgResult:
    scenes: list[Scene]
    inputs: list[np.ndarray]
    images: list[np.ndarray]
    psnr: list[float]


async def img2img(
    chain: Chain,
    count: int,
    seed: int = 0,
    *,
    steps: int = STEPS,
    sampler: SamplerName = DEFAULT_SAMPLER,
) -> Img2ImgResult:
    scenes = held_out_scenes(count, seed + 2)
    inputs = [render(s) for s in scenes]
    images, _ = await _generate(
        chain,
        [s.caption() for s in scenes],
        [seed * 1000 + i for i in range(count)],
        [EditInputs(image=i) for i in inputs],
        strength=IMG2IMG_STRENGTH,
        steps=steps,
        sampler=sampler,
    )
    return Img2ImgResult(
        scenes, inputs, images, [psnr(o, i) for o, i in zip(images, inputs, strict=True)]
    )
