"""The `sdserve` command line: one module per command.

* ``sdserve up`` (:mod:`central.cli.up`) starts the stage services and the central
  gateway as processes on this machine (the same processes ``docker compose up`` runs),
  under :mod:`central.supervisor`, and prints how to call the gateway once it is ready.
* ``sdserve generate PROMPT`` (:mod:`central.cli.generate`) submits a job to a running
  gateway (``POST /v1/jobs``), shows a progress bar fed by the job's event stream, and
  saves the images as PNG files; Ctrl-C cancels the job on the gateway.
* ``sdserve export-savedmodel`` (:mod:`central.cli.export_savedmodel`) writes the three
  stages as TF Serving SavedModels.
* ``sdserve convert SOURCE --family sd-v1|sd-v2 --out DIR`` (:mod:`central.cli.convert`)
  converts a diffusers folder or a single-file SD checkpoint into weights the families
  load (:mod:`shared.convert`).

The parser is in :mod:`central.cli.parser`, the shared argument types in
:mod:`central.cli.arguments`. Nothing heavy is imported at import time (no TensorFlow,
Keras, pydantic or httpx): ``sdserve --help`` answers at once, and each command imports
what it needs when it runs.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from central.cli.parser import build_parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `sdserve` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    status: int = args.handler(args)
    return status
