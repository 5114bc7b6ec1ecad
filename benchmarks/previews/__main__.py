"""Measure tiny's live previews against the final images and write the report.

python -m benchmarks.previews                    # all held-out prompts (a few minutes)
python -m benchmarks.previews --prompts 32 --many-steps-prompts 8 --out-dir /tmp/p
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Sequence
from pathlib import Path

from benchmarks.harness import log
from benchmarks.previews.measure import MANY_STEPS_PROMPTS, PROMPTS, measure
from benchmarks.previews.report import render_markdown, write_strip

STRIP_PROMPTS = 3


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.previews", description=__doc__)
    parser.add_argument("--prompts", type=int, default=PROMPTS, help="held-out prompts, 25 steps")
    parser.add_argument("--many-steps-prompts", type=int, default=MANY_STEPS_PROMPTS)
    parser.add_argument("--out-dir", type=Path, default=Path("benchmarks/results"))
    parser.add_argument(
        "--render-only", action="store_true", help="rewrite previews.md from previews.json"
    )
    args = parser.parse_args(argv)
    out: Path = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    if not args.render_only:
        report, results = asyncio.run(measure(args.prompts, args.many_steps_prompts))
        (out / "previews.json").write_text(json.dumps(report, indent=2) + "\n")
        write_strip(results, min(STRIP_PROMPTS, args.prompts), out / "previews.png")
    report = json.loads((out / "previews.json").read_text())
    (out / "previews.md").write_text(render_markdown(report))
    log(f"wrote {out / 'previews.md'}")


if __name__ == "__main__":
    main()
