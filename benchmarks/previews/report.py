"""previews.md from previews.json, and previews.png: previews step by step beside the image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from benchmarks.harness import Record
from training.evaluate import TextToImageResult, box_downscale
from training.scenes import IMAGE_SIZE

TILE = 128
LABEL_WIDTH = 150
CAPTION_HEIGHT = 18
TILE_LABEL_HEIGHT = 14


def _row(name: str, maps: Record) -> str:
    stats = maps[name]
    psnr, mae = stats["psnr_db"], stats["mean_abs_error"]
    return (
        f"| {name} | {psnr['median']:.1f} | {psnr['min']:.1f} / {psnr['max']:.1f} | "
        f"{mae['median']:.1f} | {mae['max']:.1f} |"
    )


def _table(section: Record, names: list[str]) -> str:
    header = (
        "| map | PSNR median (dB) | PSNR min / max (dB) | mean abs. error median (levels) "
        "| mean abs. error max |\n|---|---|---|---|---|"
    )
    return "\n".join([header, *(_row(name, section["maps"]) for name in names)])


def render_markdown(report: Record) -> str:
    names = list(report["maps"])
    default, many, fit = report["default_steps"], report["many_steps"], report["decoder_fit"]
    steps = list(default["forming"][names[0]])
    forming_header = "| map | " + " | ".join(steps) + " |"
    forming_rule = "|---|" + "---|" * len(steps)
    forming_rows = [
        f"| {name} | " + " | ".join(f"{default['forming'][name][s]:.1f}" for s in steps) + " |"
        for name in names
    ]
    fitted, old = default["maps"]["fitted"], default["maps"]["sd-vae"]
    declared = report["declared_map"]
    matrix = "\n".join(f"    {row}" for row in declared["matrix"])
    return f"""# Live previews: how close the last one is to the image

`python -m benchmarks.previews` (see `benchmarks/previews/__init__.py`), {report["date"]}, \
{report["machine"]}. `tiny` with its embedded weights, 64x64, guidance \
{report["guidance_scale"]}. A preview is one pixel per latent cell (16x16); it is compared \
with the final image box-downscaled to 16x16 (each pixel the mean of a 4x4 block). Both \
maps draw the very same latents: the final images of the two runs are identical. Maps:

- **fitted**: {report["maps"]["fitted"]}, what tiny declares
  (`shared/families/tiny.py`, `FamilySpec.preview_map`);
- **sd-vae**: {report["maps"]["sd-vae"]}, what every 4-channel family's previews used
  before families declared their own (sd-v1 and sd-v2 keep them: their VAE is the one
  they were made for).

## The last preview at the default {default["steps"]} steps

A job of {default["steps"]} steps streams a preview every {default["preview_every"]} steps; \
the last is step {default["last_step"]}. All {default["prompts"]} held-out prompts with a plain \
background (`training.evaluate`: the model card's prompts and seeds):

{_table(default, names)}

**Reading**: with the fitted map, the last preview is {fitted["psnr_db"]["median"]:.1f} dB \
(median) from the image at its own size, {fitted["mean_abs_error"]["median"]:.0f} levels of \
255 off on average: the same picture, a little soft. With the SD VAE's factors it was \
{old["psnr_db"]["median"]:.1f} dB, {old["mean_abs_error"]["median"]:.0f} levels off: a mosaic \
of colours unrelated to the image, since tiny's latent channels mean something else.

## The picture forming: every preview of those jobs

Median PSNR (dB) of the preview at each step against the final image. The preview draws \
the current latent, noise included, so the shape and its colours show from the middle \
steps on and the noise fades only in the last few:

{forming_header}
{forming_rule}
{chr(10).join(forming_rows)}

![previews step by step](previews.png)

`previews.png`: the first held-out prompts; each row the previews at steps \
{", ".join(steps)}, then the final image downscaled to the preview's size, then the \
final image.

## The last preview at {many["steps"]} steps

A preview every {many["preview_every"]} steps; the last is step {many["last_step"]}, \
{many["steps"] - many["last_step"]} steps before the end, while the latent still holds \
noise. {many["prompts"]} held-out prompts. This is the browser test's job \
(`tests/e2e/test_web_page.py` holds its last preview's PSNR against the result above a \
threshold between the two maps):

{_table(many, names)}

## The map against the decoder

Each map's previews of {fit["scenes"]} encoded held-out scenes (plain and two-tone \
backgrounds) against the decoder's output on the latent grid: what \
`python -m training.fit_preview` prints, and `tests/unit/training/test_fit_preview.py` \
holds the declared map to:

| map | PSNR (dB) |
|---|---|
{chr(10).join(f"| {name} | {fit['psnr_db'][name]:.1f} |" for name in names)}

The declared map (rows: latent channels; columns: r, g, b; into the decoder's [-1, 1]):

```
matrix:
{matrix}
bias: {declared["bias"]}
```

Measured in {report["seconds"]:.0f} s{_conditions(report)}.
"""


def _conditions(report: Record) -> str:
    """What else the machine was doing, when the json says (a duration is all it moves)."""
    return f" ({report['conditions']})" if report.get("conditions") else ""


def write_strip(results: dict[str, TextToImageResult], count: int, path: Path) -> None:
    """previews.png: for the first `count` prompts, a row of previews per map, then the
    final image at the previews' size and at its own."""
    names = list(results)
    first = results[names[0]]
    steps = sorted(first.previews[0])
    columns = len(steps) + 2
    row_height = TILE + TILE_LABEL_HEIGHT
    block = CAPTION_HEIGHT + len(names) * row_height
    strip = Image.new("RGB", (LABEL_WIDTH + columns * TILE, count * block + 4), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    for i in range(count):
        top = i * block
        draw.text((4, top + 3), f'"{first.scenes[i].caption()}"', fill=(0, 0, 0))
        final = first.images[i]
        factor = IMAGE_SIZE // first.previews[i][steps[0]].shape[0]
        for r, name in enumerate(names):
            y = top + CAPTION_HEIGHT + r * row_height
            draw.text((4, y + TILE // 2 - 6), name, fill=(0, 0, 0))
            tiles = [
                *(results[name].previews[i][step] for step in steps),
                box_downscale(final, factor),
                final,
            ]
            labels = [f"step {s}" for s in steps] + ["final, 16x16", "final"]
            for c, (tile, label) in enumerate(zip(tiles, labels, strict=True)):
                x = LABEL_WIDTH + c * TILE
                image = Image.fromarray(np.asarray(tile, dtype=np.uint8))
                strip.paste(image.resize((TILE, TILE), Image.Resampling.NEAREST), (x, y))
                draw.text((x + 2, y + TILE), label, fill=(60, 60, 60))
    strip.save(path, optimize=True)
