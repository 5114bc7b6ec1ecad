"""The `sdserve` argument parser: the top level, and one sub-parser per command module."""

from __future__ import annotations

import argparse

from central.cli import convert, export_savedmodel, generate, up


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sdserve")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    """The whole parser; each command's sub-parser sets ``handler``, the function to run."""
    parser = argparse.ArgumentParser(
        prog="sdserve",
        description="Stable Diffusion as three model services and a central gateway.",
        epilog="Run `sdserve COMMAND --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"sdserve {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    up.add_parser(commands)
    generate.add_parser(commands)
    export_savedmodel.add_parser(commands)
    convert.add_parser(commands)
    return parser
