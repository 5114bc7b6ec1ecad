"""``sdserve convert``: a diffusers folder or a single-file SD checkpoint -> our weights."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

CONVERT_FAMILIES = ("sd-v1", "sd-v2")
COMPONENT_CHOICES = ("text_encoder", "diffusion_model", "decoder", "image_encoder")


def add_parser(commands: Any) -> None:
    """Add the command to ``commands`` (what ``add_subparsers`` returned)."""
    convert = commands.add_parser(
        "convert",
        help="convert a diffusers folder or single-file SD 1.x/2.x checkpoint",
        description=(
            "Convert SOURCE, a diffusers folder (unet/, text_encoder/, vae/ with "
            ".safetensors) or one original-layout (CompVis / A1111) .safetensors "
            "checkpoint, into the weights files sdserve's sd-v1 / sd-v2 families load, "
            "with a manifest (sdserve-weights.json). Serve them with "
            "`sdserve up --model FAMILY --weights OUT`. Pickle files (.ckpt, .bin, .pt) "
            "are refused: nothing is ever unpickled. Every tensor is checked before "
            "anything is written."
        ),
    )
    convert.set_defaults(handler=run)
    convert.add_argument("source", metavar="SOURCE", help="diffusers folder or .safetensors")
    convert.add_argument(
        "--family", required=True, choices=CONVERT_FAMILIES, help="SD 1.x: sd-v1, SD 2.x: sd-v2"
    )
    convert.add_argument("--out", required=True, metavar="DIR", help="directory to write")
    convert.add_argument(
        "--prediction-type",
        choices=("epsilon", "v_prediction"),
        default=None,
        help="what the UNet predicts (default: what the source says; sd-v1: epsilon; an "
        "SD 2.x single file must say it: 768x768 models v_prediction, 512x512 base epsilon)",
    )
    convert.add_argument(
        "--components",
        default=",".join(COMPONENT_CHOICES),
        metavar="LIST",
        help="comma-separated components to convert (default: all four; e.g. "
        "diffusion_model for a fine-tuned UNet served with SDSERVE_DIFFUSION_WEIGHTS)",
    )
    convert.add_argument("--overwrite", action="store_true", help="replace DIR if it is not empty")


def _components(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    bad = [name for name in names if name not in COMPONENT_CHOICES]
    if bad or not names:
        raise ValueError(f"--components: {bad or '(none)'}; choose from {COMPONENT_CHOICES}")
    return names


def run(args: argparse.Namespace) -> int:
    from shared.convert.convert import convert
    from shared.errors import WeightsError

    try:
        components = _components(args.components)
        manifest = convert(
            Path(args.source).expanduser(),
            args.family,
            Path(args.out).expanduser(),
            prediction_type=args.prediction_type,
            components=components,  # type: ignore[arg-type]
            overwrite=args.overwrite,
            progress=lambda message: print(f"sdserve convert: {message}", file=sys.stderr),
        )
    except (WeightsError, ValueError) as exc:
        print(f"sdserve convert: error: {exc}", file=sys.stderr)
        return 1
    converted = ", ".join(manifest["components"])
    print(
        f"converted {manifest['source']['name']} ({manifest['source']['layout']} layout) to "
        f"{args.out}: {converted}; {manifest['family']}, predicts "
        f"{manifest['prediction_type']}"
    )
    unused = manifest["not_converted"]["count"]
    if unused:
        print(f"{unused} source tensors were not needed (see sdserve-weights.json)")
    if set(manifest["components"]) == set(COMPONENT_CHOICES):
        print(f"serve it: sdserve up --model {manifest['family']} --weights {args.out}")
    return 0
