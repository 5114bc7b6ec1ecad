"""benchmarks.serving's report: the committed results re-render to themselves, and the
topology summary computes its ratios from typed request records."""

import json
from pathlib import Path

import pytest

from benchmarks.serving.records import TopologyRequest, as_json
from benchmarks.serving.report import render_markdown
from benchmarks.serving.targets import evaluate_targets
from benchmarks.serving.topologies import summarize_topologies

RESULTS = Path(__file__).resolve().parents[4] / "benchmarks" / "results"


def test_committed_serving_json_renders_the_committed_markdown() -> None:
    report = json.loads((RESULTS / "serving.json").read_text())
    assert evaluate_targets(report["sections"]) == report["targets"]
    assert render_markdown(report) == (RESULTS / "serving.md").read_text()


def _request(topology: str, round_: int, e2e_ms: float, compute_ms: float) -> TopologyRequest:
    timings = {
        "text_encoder": {"queue_ms": 0.0, "compute_ms": 0.0, "transfer_ms": 0.0},
        "diffusion": {"queue_ms": 1.0, "compute_ms": compute_ms, "transfer_ms": 2.0},
        "decoder": {"queue_ms": 0.0, "compute_ms": 0.0, "transfer_ms": 0.0},
    }
    return TopologyRequest(topology, round_, round_ == 0, e2e_ms, timings, "same", 1.0)


def test_summary_ratios_skip_warmup_and_compare_at_equal_compute() -> None:
    records = [
        _request("all-in-one", 0, 5000.0, 90.0),  # warm-up: not counted
        _request("all-in-one", 1, 100.0, 90.0),
        _request("three-endpoints", 1, 120.0, 100.0),
    ]
    summary = summarize_topologies(records)
    assert summary["all-in-one"]["e2e"]["n"] == 1
    assert summary["three-endpoints"]["ratio_to_all_in_one"] == pytest.approx(1.2)
    # all-in-one's 90 ms of compute plus each topology's overhead (10 vs 20 ms).
    assert summary["three-endpoints"]["ratio_at_equal_compute"] == pytest.approx(110 / 100)
    assert summary["three-endpoints"]["stages"]["diffusion"]["total_ms"] == 103.0
    assert summary["_identical_images"] is True
    assert as_json(records[0])["topology"] == "all-in-one"
