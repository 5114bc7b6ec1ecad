"""Fit tiny's latent preview map against its decoder, and print the constants to paste.

    python -m training.fit_preview [--weights embedded|DIR] [--scenes 2048] [--seed 0]

A streamed preview (shared.progress.latent_preview) draws each latent cell with one linear
map, `rgb = latent @ matrix + bias`, instead of running the decoder. This script fits that
map for the weights given: training scenes (training.scenes) are encoded with the image
encoder, decoded with the decoder, each decoded image is averaged over the
downsampling-factor blocks (one pixel per latent cell), and the map is the least-squares
fit from a cell's latent to that average colour, in the decoder's [-1, 1]. It then says
how close the map comes to the decoder on held-out scenes (PSNR of the preview against
the decoded image box-downscaled to the latent grid), beside the map the family declares
now and the SD VAE's factors.

Run it again after the VAE (encoder or decoder) is retrained, and paste what it prints
into `TinyFamily.spec.preview_map` (shared/families/tiny.py); a unit test
(tests/unit/training/test_fit_preview.py) fails while the declared map no longer fits.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import numpy as np

from shared.families.base import SD_VAE_PREVIEW, LatentPreviewMap
from shared.progress import latent_preview
from training.evaluate import box_downscale, psnr
from training.scenes import IMAGE_SIZE, Scene, held_out_scenes, random_scene, render

DEFAULT_SCENES = 2048
# Held-out scenes the printed check runs on (two-tone backgrounds included).
CHECK_SCENES = 256
_BATCH = 256


def training_scenes(count: int, seed: int = 0) -> list[Scene]:
    rng = np.random.default_rng([seed, 23])
    return [random_scene(rng) for _ in range(count)]


def check_scenes(count: int, seed: int = 0) -> list[Scene]:
    """Held-out scenes with plain and two-tone backgrounds: none of the fit's."""
    return held_out_scenes(count, seed, plain_background=False)


def vae_models(weights: str = "embedded") -> tuple[Any, Any]:
    """tiny's image encoder and decoder with `weights` ("embedded" or a directory)."""
    from shared.config import load_settings
    from shared.families.tiny import TinyFamily
    from shared.models import build_component

    size = (IMAGE_SIZE, IMAGE_SIZE)
    settings = load_settings(model="tiny", weights=weights, sizes=f"{size[0]}x{size[1]}")
    family = TinyFamily()
    encoder, _ = build_component(family, "image_encoder", size, settings, "float32")
    decoder, _ = build_component(family, "decoder", size, settings, "float32")
    return encoder, decoder


def encode_and_decode(
    encoder: Any, decoder: Any, scenes: Sequence[Scene]
) -> tuple[np.ndarray, np.ndarray]:
    """(latents (n, h, w, c), decoded images (n, H, W, 3) in [-1, 1]) of the scenes."""
    latents, decoded = [], []
    for start in range(0, len(scenes), _BATCH):
        images = np.stack([render(s) for s in scenes[start : start + _BATCH]])
        latent = np.asarray(encoder(images.astype(np.float32) / 127.5 - 1.0), dtype=np.float32)
        latents.append(latent)
        decoded.append(np.asarray(decoder(latent), dtype=np.float32))
    return np.concatenate(latents), np.concatenate(decoded)


def block_means(images: np.ndarray, factor: int) -> np.ndarray:
    """(n, H, W, 3) floats averaged over factor x factor blocks: (n, H/f, W/f, 3)."""
    n, height, width, channels = images.shape
    blocks = images.reshape(n, height // factor, factor, width // factor, factor, channels)
    return blocks.mean(axis=(2, 4))


def fit_map(latents: np.ndarray, targets: np.ndarray) -> LatentPreviewMap:
    """Least squares, per latent cell: targets (n, h, w, 3) ~ latents (n, h, w, c) @ M + b."""
    channels = latents.shape[-1]
    inputs = latents.reshape(-1, channels).astype(np.float64)
    design = np.concatenate([inputs, np.ones((len(inputs), 1))], axis=1)
    solution, *_ = np.linalg.lstsq(design, targets.reshape(-1, 3).astype(np.float64), rcond=None)

    def rgb(row: np.ndarray) -> tuple[float, float, float]:
        red, green, blue = (round(float(v), 4) for v in row)
        return red, green, blue

    return LatentPreviewMap(
        matrix=tuple(rgb(row) for row in solution[:channels]), bias=rgb(solution[channels])
    )


def decoded_on_the_grid(decoded: np.ndarray, factor: int) -> np.ndarray:
    """Decoded images as the service serves them (uint8), box-downscaled to the latent grid."""
    from shared.pipeline.local.decoder import latent_to_images

    return np.stack([box_downscale(image, factor) for image in latent_to_images(decoded)])


def map_psnr(latents: np.ndarray, on_the_grid: np.ndarray, preview_map: LatentPreviewMap) -> float:
    """PSNR (dB) of the map's previews against the decoded images on the latent grid, over
    every pixel of every image."""
    return psnr(latent_preview(latents, preview_map), on_the_grid)


def format_map(preview_map: LatentPreviewMap) -> str:
    """The map as Python to paste into a FamilySpec."""

    def numbers(values: Sequence[float]) -> str:
        return ", ".join(f"{v:.4f}" for v in values)

    pad = " " * 8
    return "\n".join(
        [
            f"{pad}preview_map=LatentPreviewMap(",
            f"{pad}    matrix=(",
            *(f"{pad}        ({numbers(row)})," for row in preview_map.matrix),
            f"{pad}    ),",
            f"{pad}    bias=({numbers(preview_map.bias)}),",
            f"{pad}),",
        ]
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", default="embedded", help="embedded, or a weights directory")
    parser.add_argument("--scenes", type=int, default=DEFAULT_SCENES, help="training scenes fitted")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from shared.families.tiny import TinyFamily

    spec = TinyFamily.spec
    factor = spec.downsampling_factor
    encoder, decoder = vae_models(args.weights)
    latents, decoded = encode_and_decode(encoder, decoder, training_scenes(args.scenes, args.seed))
    fitted = fit_map(latents, block_means(decoded, factor))
    check_latents, check_decoded = encode_and_decode(
        encoder, decoder, check_scenes(CHECK_SCENES, args.seed)
    )
    on_the_grid = decoded_on_the_grid(check_decoded, factor)
    print(f"fitted on {args.scenes} training scenes ({args.weights} weights):\n")
    print(format_map(fitted))
    print(f"\nPSNR against the decoder, {CHECK_SCENES} held-out scenes on the latent grid:")
    candidates = {"fitted now": fitted, "declared": spec.preview_map, "SD VAE": SD_VAE_PREVIEW}
    for name, candidate in candidates.items():
        if candidate is not None:
            print(f"  {name:>10}: {map_psnr(check_latents, on_the_grid, candidate):.2f} dB")


if __name__ == "__main__":
    main()
