"""What the sectioned benchmarks (`benchmarks.serving`, `benchmarks.jobs`) share: the
command line (--quick, --only, --skip, --out-dir, --fresh, --render-only), a run that
measures the chosen sections one by one into <name>.json, kept from the previous run's
other sections and saved with <name>.md after each one, and the report's common pieces
(number formatting, a section's heading and measuring conditions, a list of notes)."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shlex
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]

Record = dict[str, Any]


def log(message: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", file=sys.stderr, flush=True)


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


# --------------------------------------------------------------------------- command line


def section_parser(
    name: str, doc: str, sections: Sequence[str], *, quick_help: str, render_help: str
) -> argparse.ArgumentParser:
    """The parser of `python -m benchmarks.<name>` with the options every sectioned
    benchmark has; the caller adds its own and parses with `parse_section_args`."""
    parser = argparse.ArgumentParser(
        prog=f"python -m benchmarks.{name}", description=doc.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--only", default="", help="comma list of sections: " + ", ".join(sections))
    parser.add_argument(
        "--skip", default="", help="comma list of sections not to run (keeps old results)"
    )
    parser.add_argument("--out-dir", default="benchmarks/results", help=f"where {name}.* go")
    parser.add_argument(
        "--fresh", action="store_true", help=f"do not keep other sections from {name}.json"
    )
    parser.add_argument("--render-only", action="store_true", help=render_help)
    return parser


def parse_section_args(
    parser: argparse.ArgumentParser, sections: Sequence[str], argv: list[str] | None
) -> argparse.Namespace:
    """Parse, and set `args.sections` from --only and --skip (in the benchmark's order
    unless --only names another) and `args.mode` (quick or full)."""
    args = parser.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    for name in [*only, *skip]:
        if name not in sections:
            parser.error(f"unknown section {name!r}; expected one of {', '.join(sections)}")
    args.sections = [s for s in (only or sections) if s not in skip]
    args.mode = "quick" if args.quick else "full"
    return args


# --------------------------------------------------------------------------- files and runs


@dataclass
class Outputs:
    """<name>.json (what was measured) and <name>.md (rendered from it) in a folder."""

    name: str
    out_dir: Path
    render: Callable[[Record], str]

    @classmethod
    def at(cls, name: str, out_dir: str, render: Callable[[Record], str]) -> Outputs:
        """The folder from --out-dir (relative to the repository root), made if missing."""
        path = Path(out_dir)
        if not path.is_absolute():
            path = REPO_ROOT / path
        path.mkdir(parents=True, exist_ok=True)
        return cls(name, path, render)

    @property
    def json_path(self) -> Path:
        return self.out_dir / f"{self.name}.json"

    @property
    def md_path(self) -> Path:
        return self.out_dir / f"{self.name}.md"

    def load(self) -> Record:
        return json.loads(self.json_path.read_text())

    def previous(self, fresh: bool) -> Record:
        """The last run's report, or nothing with --fresh or where there is none."""
        if fresh or not self.json_path.exists():
            return {}
        with contextlib.suppress(ValueError):
            return self.load()
        return {}

    def write(self, report: Record) -> None:
        self.json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
        self.write_markdown(report)

    def write_markdown(self, report: Record) -> None:
        self.md_path.write_text(self.render(report))


class SectionRun:
    """One measuring invocation: the report, saved (with `derive` applied) after every
    section so that what is measured survives a later section dying."""

    def __init__(
        self,
        outputs: Outputs,
        args: argparse.Namespace,
        argv: list[str] | None,
        *,
        machine: Record,
        plan: Record,
        extra: Record | None = None,
        env: Sequence[str] = (),
        derive: Callable[[Record], None] | None = None,
    ) -> None:
        self.outputs = outputs
        self.mode: str = args.mode
        self.derive = derive
        self.started = time.perf_counter()
        previous = outputs.previous(args.fresh)
        shown_argv = sys.argv[1:] if argv is None else argv
        module = f"benchmarks.{outputs.name}"
        self.report: Record = {
            "command": shlex.join([*env, "python", "-m", module, *shown_argv]),
            "mode": self.mode,
            "machine": machine,
            "plan": plan,
            **(extra or {}),
            "sections_run": args.sections,
            "sections": dict(previous.get("sections", {})),
        }

    def save(self) -> None:
        report = self.report
        report["finished_utc"] = utc_now()
        report["total_seconds"] = round(time.perf_counter() - self.started, 1)
        report["load_average_at_end"] = load_average()
        if self.derive is not None:
            self.derive(report)
        self.outputs.write(report)

    def run(self, runners: Mapping[str, Callable[[], Record]]) -> None:
        """Measure each section in turn, a failure recorded as the section's `_error`."""
        for name, runner in runners.items():
            section_started = time.perf_counter()
            load_before = load_average()
            log(f"=== {name} (load {load_before})")
            try:
                section = runner()
            except Exception as exc:
                log(f"{name} failed: {exc!r}")
                section = {
                    "_error": f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-3000:]}"
                }
            section["_seconds"] = round(time.perf_counter() - section_started, 1)
            section["_load_before"] = load_before
            section["_load_after"] = load_average()
            section["_finished_utc"] = utc_now()
            section["_mode"] = self.mode
            # Sections kept from earlier runs were measured by other commands.
            section["_command"] = self.report["command"]
            self.report["sections"][name] = section
            self.save()
            log(f"=== {name} done in {section['_seconds']} s")


# --------------------------------------------------------------------------- report


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def notes_block(heading: str, what: str, compute: Callable[[], list[str]]) -> list[str]:
    """A `## heading` over a bullet list of notes; a note saying why if computing them
    fails (a report without them beats no report), nothing if there are none."""
    try:
        notes = compute()
    except Exception as exc:
        notes = [f"({what} could not be computed: {exc!r})"]
    if not notes:
        return []
    return [f"## {heading}", "", *(f"- {note}" for note in notes), ""]


def section_block(
    heading: str, section: Record, render: Callable[[Record], list[str]]
) -> list[str]:
    """A measured section: its heading, when and under what load it was measured, then
    its tables, or the error it failed with."""
    command = f" by `{section['_command']}`" if section.get("_command") else ""
    lines = [
        f"## {heading}",
        "",
        f"Measured {section.get('_finished_utc')}{command}, {section.get('_seconds')} s; load "
        f"average before {section.get('_load_before')}, after {section.get('_load_after')}.",
        "",
    ]
    if section.get("_error"):
        return [*lines, "**Failed:**", "", "```", section["_error"][-3000:], "```", ""]
    return [*lines, *render(section), ""]
