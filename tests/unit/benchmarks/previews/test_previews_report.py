"""benchmarks.previews's report: the committed results re-render to themselves, and the
map they describe is the one tiny declares."""

import json
from pathlib import Path

from benchmarks.previews.report import render_markdown
from shared.families.tiny import TinyFamily

RESULTS = Path(__file__).resolve().parents[4] / "benchmarks" / "results"


def test_committed_previews_json_renders_the_committed_markdown() -> None:
    report = json.loads((RESULTS / "previews.json").read_text())
    assert render_markdown(report) == (RESULTS / "previews.md").read_text()


def test_the_committed_results_measured_the_declared_map() -> None:
    """A refit map needs the benchmark run again (`python -m benchmarks.previews`)."""
    declared = TinyFamily.spec.preview_map
    assert declared is not None
    measured = json.loads((RESULTS / "previews.json").read_text())["declared_map"]
    assert measured == {"matrix": [list(r) for r in declared.matrix], "bias": list(declared.bias)}
