"""``sdserve export-savedmodel``: write the three stages as TF Serving SavedModels."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from central.cli import arguments


def add_parser(commands: Any) -> None:
    """Add the command to ``commands`` (what ``add_subparsers`` returned)."""
    export = commands.add_parser(
        "export-savedmodel",
        help="export the three stages as TF Serving SavedModels",
        description=(
            "Write the text encoder, diffusion (the whole DDIM loop) and decoder as "
            "versioned TensorFlow SavedModels: OUT/<stage>/<version>/, with "
            "OUT/<stage>/export.json describing them. Point TF Serving's "
            "--model_base_path at OUT/<stage>. Settings not given as flags come from "
            "SDSERVE_* variables. See shared/export.py for the signatures."
        ),
    )
    export.set_defaults(handler=run)
    export.add_argument("--out", required=True, metavar="DIR", help="where to write")
    export.add_argument(
        "--model",
        choices=arguments.MODELS,
        default=None,
        help="model family (default: SDSERVE_MODEL)",
    )
    export.add_argument(
        "--weights",
        default=None,
        metavar="embedded|pretrained|random|DIR",
        help="weights to export (default: SDSERVE_WEIGHTS, else the family's default)",
    )
    export.add_argument(
        "--size",
        type=arguments.size,
        default=None,
        metavar="WxH",
        help="the image size the SavedModels serve (default: the first of SDSERVE_SIZES "
        "or of the family's sizes)",
    )
    export.add_argument(
        "--version",
        type=arguments.positive_int,
        default=1,
        help="model version to write (default: 1)",
    )
    export.add_argument(
        "--overwrite", action="store_true", help="replace that version if it exists"
    )


def run(args: argparse.Namespace) -> int:
    from shared.config import ConfigError, load_settings
    from shared.errors import SdserveError

    overrides = {
        key: value
        for key, value in (("model", args.model), ("weights", args.weights), ("sizes", args.size))
        if value is not None
    }
    try:
        settings = load_settings(**overrides)
    except ConfigError as exc:
        print(f"sdserve export-savedmodel: {exc}", file=sys.stderr)
        return 2
    if settings.weights == "random":
        print(
            "!!! WEIGHTS ARE RANDOM: the exported models are untrained and make noise. "
            "For real ones: --model sd-v1 --weights pretrained",
            file=sys.stderr,
        )
    from shared.export import export_savedmodels

    try:
        paths = export_savedmodels(settings, Path(args.out), args.version, overwrite=args.overwrite)
    except (FileExistsError, ValueError, SdserveError) as exc:
        print(f"sdserve export-savedmodel: error: {exc}", file=sys.stderr)
        return 1
    for stage, path in paths.items():
        print(f"{stage}: {path}")
    return 0
