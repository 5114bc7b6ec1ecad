"""benchmarks.stages's report: the committed results re-render to themselves."""

import json
from pathlib import Path

from benchmarks.stages.report import render_markdown

RESULTS = Path(__file__).resolve().parents[4] / "benchmarks" / "results"


def test_committed_stages_json_renders_the_committed_markdown() -> None:
    report = json.loads((RESULTS / "stages.json").read_text())
    assert render_markdown(report) == (RESULTS / "stages.md").read_text()
