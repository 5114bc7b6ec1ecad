"""Argument types and settings shared by the `sdserve` commands.

Each type turns a command-line string into a value or raises
:class:`argparse.ArgumentTypeError`, which argparse reports as a usage error (exit 2).
"""

from __future__ import annotations

import argparse
import re

from shared.families import FAMILY_NAMES

MODELS = FAMILY_NAMES
STAGE_NAMES = ("text-encoder", "diffusion", "decoder")
MAX_REPLICAS = 8
DEFAULT_URL = "http://127.0.0.1:8000"

_SIZE_RE = re.compile(r"^\s*(\d{1,5})\s*[xX]\s*(\d{1,5})\s*$")


def size(text: str) -> str:
    """One image size, normalised: ``" 512X512"`` → ``"512x512"``."""
    match = _SIZE_RE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 512x512")
    return f"{int(match.group(1))}x{int(match.group(2))}"


def sizes(text: str) -> str:
    """A comma-separated list of sizes, normalised: ``"64x64, 128X128"`` → ``"64x64,128x128"``."""
    parts = [p for p in text.split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError("give at least one size, like 64x64,128x128")
    return ",".join(size(p) for p in parts)


def port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port number (1-65535)")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must not be negative")
    return value


def replicas(text: str) -> dict[str, int]:
    """``diffusion=2,decoder=2`` -> {"diffusion": 2, "decoder": 2}."""
    counts: dict[str, int] = {}
    for item in (part.strip() for part in text.split(",")):
        name, sep, count = item.partition("=")
        if not sep or name.strip() not in STAGE_NAMES or not count.strip().isdigit():
            raise argparse.ArgumentTypeError(
                f"{item!r} is not STAGE=COUNT with STAGE one of {', '.join(STAGE_NAMES)}"
            )
        number = int(count)
        if not 1 <= number <= MAX_REPLICAS:
            raise argparse.ArgumentTypeError(f"{name}: between 1 and {MAX_REPLICAS} replicas")
        counts[name.strip()] = number
    return counts
