"""The embedded tiny weights follow their prompt (issue: a default that draws what it is asked).

Held-out prompts (attribute combinations training never saw), fixed seeds, judged by
`training.judge`; the same evaluation the model card reports, on fewer prompts. The
control with random weights shows the checks can fail. The issue's targets are asserted
as it states them; the other thresholds sit a little under what the committed weights
measure (model card: shared/families/tiny_weights/README.md).
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

from shared.config import load_settings
from shared.pipeline.chain import Chain
from shared.progress import preview_every
from shared.service_process import ServiceProcess
from training import evaluate
from training.judge import judge, palette_labels
from training.scenes import COLOURS, Scene

PROMPTS = 40
PHRASED_PROMPTS = 40
EDIT_CASES = 12


def _chain(weights: str) -> Chain:
    # Default settings but a larger running batch: the prompts are sent all at once.
    chain = Chain(load_settings(model="tiny", weights=weights, sizes="64x64", max_batch=64))
    chain.load()
    return chain


@pytest.fixture(scope="module")
def trained() -> Iterator[Chain]:
    chain = _chain("embedded")
    yield chain
    asyncio.run(chain.aclose())


@pytest.fixture(scope="module")
def text_to_image(trained: Chain) -> evaluate.TextToImageResult:
    return asyncio.run(evaluate.text_to_image(trained, PROMPTS))


def test_the_default_weights_are_the_embedded_ones():
    assert load_settings().weights == "embedded"


def test_text_to_image_draws_the_asked_colours_on_held_out_prompts(text_to_image):
    misses = [
        s.caption()
        for s, v in zip(text_to_image.scenes, text_to_image.verdicts, strict=True)
        if not v.colour
    ]
    assert text_to_image.rate("colour") >= 0.75, misses
    # The background: the most common palette colour is the one the prompt names.
    backgrounds = 0
    for scene, image in zip(text_to_image.scenes, text_to_image.images, strict=True):
        labels = palette_labels(image)
        counts = np.bincount(labels[labels >= 0], minlength=len(COLOURS))
        backgrounds += list(COLOURS)[int(counts.argmax())] == scene.background[0]
    assert backgrounds / len(text_to_image.scenes) >= 0.8


def test_text_to_image_puts_the_shape_where_the_prompt_says(text_to_image):
    # The layout prior's job; measured 100 % on 284 prompts (chance is 1 in 9).
    assert text_to_image.rate("place") >= 0.85


def test_text_to_image_draws_the_asked_shape_well_above_chance(text_to_image):
    # The judge sees one of three shapes; weights trained without the layout mask loss
    # drew round blobs for every shape word and scored 34 %, chance level.
    seen = [
        (s.shape, v.seen_shape)
        for s, v in zip(text_to_image.scenes, text_to_image.verdicts, strict=True)
    ]
    assert text_to_image.rate("shape") >= 0.5, seen
    # Triangles, the shape furthest from a blob, come out as asked most of the time.
    triangles = [seen_shape == "triangle" for shape, seen_shape in seen if shape == "triangle"]
    assert np.mean(triangles) >= 0.6, seen


def test_text_to_image_follows_colour_and_shape_on_90_percent_of_held_out_prompts(
    text_to_image,
):
    # 96.5 % on all 284 held-out prompts at the default 8 steps (97.2 % at 25:
    # benchmarks/results/samplers.md).
    misses = [
        (s.caption(), v.seen_shape, round(v.fill, 2))
        for s, v in zip(text_to_image.scenes, text_to_image.verdicts, strict=True)
        if not v.colour_and_shape
    ]
    assert text_to_image.rate("colour_and_shape") >= 0.9, misses


def test_the_last_live_preview_looks_like_the_image(text_to_image):
    """The previews a job streams are drawn with tiny's fitted map: the last one, a step
    before the end, is the image at the latent grid's size, a little soft. On all 284
    held-out prompts: 23.3 dB median at 8 steps and at 25 (benchmarks/results/samplers.md),
    19.8 dB min at 25 (previews.md); the SD VAE factors tiny's previews used before, 6.2 dB
    median."""
    scores = evaluate.last_preview_scores(text_to_image)
    every = preview_every(evaluate.STEPS)
    assert scores.step == (evaluate.STEPS - 1) // every * every
    assert np.median(scores.psnr) >= 20.0, scores.psnr
    assert min(scores.psnr) >= 16.0, scores.psnr


@pytest.fixture(scope="module")
def phrased(trained: Chain) -> evaluate.TextToImageResult:
    """The same held-out combinations, worded in held-out phrasings (training.phrasing)."""
    return asyncio.run(evaluate.phrasings_to_image(trained, PHRASED_PROMPTS))


def test_held_out_phrasings_get_the_asked_colour_and_shape_90_percent_of_the_time(phrased):
    # The target, the model card's figure on all 284 held-out combinations.
    misses = [
        (prompt, v.colour, v.seen_shape)
        for prompt, v in zip(phrased.prompts, phrased.verdicts, strict=True)
        if not v.colour_and_shape
    ]
    assert phrased.rate("colour") >= 0.9, misses
    assert phrased.rate("shape") >= 0.9, misses


def test_held_out_phrasings_put_the_shape_on_the_asked_background(phrased):
    assert phrased.rate("background") >= 0.9
    assert phrased.rate("place") >= 0.85


@pytest.fixture(scope="module")
def inpainted(trained: Chain) -> evaluate.InpaintResult:
    return asyncio.run(evaluate.inpaint(trained, EDIT_CASES))


def test_inpainting_keeps_the_outside_of_the_mask(inpainted):
    assert min(inpainted.outside_psnr) >= 30.0, inpainted.outside_psnr
    # The model alone (no overlay of the input's pixels) stays close too, on most cases.
    assert np.median(inpainted.raw_outside_psnr) >= 28.0, inpainted.raw_outside_psnr


def test_inpainting_paints_the_asked_colour_inside_the_mask(inpainted):
    # Measured 24 of 24 cases in the model card.
    assert np.mean([v.colour for v in inpainted.verdicts]) >= 0.8


def test_inpainting_repaints_the_mask_as_prompted(inpainted):
    # The model card measures 23 of 24 cases.
    misses = [
        (c.target.caption(), v.seen_shape, round(v.fill, 2))
        for c, v in zip(inpainted.cases, inpainted.verdicts, strict=True)
        if not v.colour_and_shape
    ]
    assert np.mean([v.colour_and_shape for v in inpainted.verdicts]) >= 0.9, misses


def test_img2img_at_low_strength_stays_close_to_the_input(trained):
    result = asyncio.run(evaluate.img2img(trained, EDIT_CASES))
    # The target: >= 25 dB on every case (model card, 24 cases: min 27.3, median
    # 31.9; on earlier weights 23.1 / 27.5 before tiny stopped guiding the last steps).
    assert min(result.psnr) >= 25.0, result.psnr


# Fewer prompts and steps than the card: a cheap check that each sampler draws what it is
# asked, on the embedded weights (benchmarks/results/samplers.md has the full measure).
SAMPLER_PROMPTS = 16
SAMPLER_STEPS = 15


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "dpmpp_2m_karras", "euler_ancestral"])
def test_every_sampler_follows_the_prompt(trained, sampler):
    result = asyncio.run(
        evaluate.text_to_image(trained, SAMPLER_PROMPTS, steps=SAMPLER_STEPS, sampler=sampler)
    )
    misses = [
        (s.caption(), v.seen_shape)
        for s, v in zip(result.scenes, result.verdicts, strict=True)
        if not v.colour_and_shape
    ]
    assert result.rate("colour") >= 0.8, misses
    assert result.rate("place") >= 0.8
    assert result.rate("colour_and_shape") >= 0.7, misses


def test_random_weights_fail_the_same_checks():
    chain = _chain("random")
    try:
        result = asyncio.run(evaluate.text_to_image(chain, 10))
    finally:
        asyncio.run(chain.aclose())
    assert result.rate("colour") <= 0.3


def test_the_gateway_draws_red_on_white_for_a_red_square_on_a_white_background(tmp_path):
    # What a new user does after `sdserve up`: default settings, one prompt, over HTTP.
    env = {"SDSERVE_SIZES": "64x64"}
    with ServiceProcess("central", env, log_path=tmp_path / "central.log") as central:
        response = httpx.post(
            f"{central.url}/",
            json={"inputs": "a red square on a white background", "parameters": {"seed": 3}},
            timeout=120,
        )
    assert response.status_code == 200, response.text
    image = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))
    verdict = judge(image, Scene("square", "red", "small", "center", ("white",)))
    # A prompt that names no place means the centre, and one shape, not red patches.
    assert verdict.colour and verdict.place
    labels = palette_labels(image)
    assert verdict.blob_pixels >= 0.9 * (labels == list(COLOURS).index("red")).sum()
    assert (labels == list(COLOURS).index("white")).mean() > 0.5  # a white background
