"""The `python -m <part>` entry point every part (the three stages, the gateway) shares."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from fastapi import FastAPI

from shared.config import EXIT_CONFIG, ConfigError, Settings, load_settings


def run_part(name: str, factory: Callable[[Settings], FastAPI], default_port: int) -> None:
    """Parse --host/--port, load settings (failing clearly, exit 78), and serve."""
    from shared.http import configure_logging, serve

    parser = argparse.ArgumentParser(prog=f"sdserve-{name}")
    parser.add_argument("--host", help="default: SDSERVE_HOST or 127.0.0.1")
    parser.add_argument("--port", type=int, help=f"default: SDSERVE_PORT or {default_port}")
    args = parser.parse_args()
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None
    if args.host:
        # The address it binds decides which Host names it answers (shared.browsers).
        settings = settings.model_copy(update={"host": args.host})
    configure_logging(name, json_lines=settings.log_format == "json")
    try:
        app = factory(settings)
    except ConfigError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None
    serve(app, settings.host, args.port or settings.port or default_port)
