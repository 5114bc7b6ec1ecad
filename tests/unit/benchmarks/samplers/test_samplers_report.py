"""benchmarks.samplers: the committed results re-render to themselves, the verdict is the
fewest measured steps within 2 points of DDIM at 25, a sample is marked preliminary, the
chart is drawn, and the options are checked."""

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks.samplers.__main__ import parse_args
from benchmarks.samplers.report import (
    card_verdicts,
    derive,
    reading,
    render_markdown,
    write_chart,
)

RESULTS = Path(__file__).resolve().parents[4] / "benchmarks" / "results"


def test_committed_samplers_json_renders_the_committed_markdown() -> None:
    report = json.loads((RESULTS / "samplers.json").read_text())
    assert render_markdown(report) == (RESULTS / "samplers.md").read_text()
    assert (RESULTS / "samplers.png").is_file()


def _report(scores: dict[str, dict[int, float]], prompts: int = 284) -> dict[str, Any]:
    return {
        "command": "python -m benchmarks.samplers",
        "weights": {"label": "embedded", "held_out_prompts": 284},
        "note": "",
        "sections": {
            name: {
                "by_steps": {
                    str(steps): {
                        "colour_and_shape": value,
                        "colour": 100.0,
                        "shape": value,
                        "place": 100.0,
                        "size": 100.0,
                        "prompts": prompts,
                        "seconds": 1.0,
                    }
                    for steps, value in by_steps.items()
                }
            }
            for name, by_steps in scores.items()
        },
    }


def test_the_verdict_is_the_fewest_steps_within_two_points_of_ddim_at_25() -> None:
    report = _report(
        {
            "ddim": {5: 70.0, 10: 90.0, 15: 93.0, 25: 94.0},
            "dpmpp_2m": {5: 20.0, 10: 92.0, 15: 95.0, 25: 94.0},  # 92.0 is exactly 2 below
            "dpmpp_2m_karras": {5: 91.9, 10: 93.0, 15: 94.0, 25: 94.0},  # 91.9: not within
            "euler_ancestral": {5: 10.0, 10: 50.0, 15: 80.0, 25: 91.0},  # never
        }
    )
    derive(report)
    assert report["reference"]["colour_and_shape"] == 94.0
    assert {n: v["fewest_steps_within"] for n, v in report["verdicts"].items()} == {
        "ddim": 15,
        "dpmpp_2m": 10,
        "dpmpp_2m_karras": 10,
        "euler_ancestral": None,
    }
    assert report["preliminary"] is False  # every held-out prompt, no note
    assert "DPM++ 2M and DPM++ 2M Karras at 10 steps, DDIM itself at 15" in str(reading(report))
    text = render_markdown({**report, "mode": "full", "machine": {}})
    assert "| Euler a | none of the measured | — | — |" in text
    assert "| DPM++ 2M | **10** | 92.0 | 0.40x |" in text
    assert "Preliminary" not in text


def test_a_sample_of_the_prompts_or_a_note_is_preliminary(tmp_path: Path) -> None:
    sample = _report({"ddim": {10: 90.0, 25: 94.0}}, prompts=32)
    derive(sample)
    assert sample["preliminary"] is True
    text = render_markdown({**sample, "mode": "quick", "machine": {}})
    assert "**Preliminary.** Measured on 32 of tiny's 284" in text
    noted = copy.deepcopy(_report({"ddim": {25: 94.0}}))
    noted["note"] = "weights being retrained"
    derive(noted)
    assert noted["preliminary"] is True
    assert "weights being retrained" in render_markdown({**noted, "mode": "full", "machine": {}})
    path = write_chart(sample, tmp_path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_options() -> None:
    args = parse_args(["--quick", "--only", "ddim,euler_ancestral", "--steps", "25,5"])
    assert args.prompts == 32 and args.steps == [5, 25]
    assert args.sections == ["ddim", "euler_ancestral"]
    assert parse_args([]).prompts == 284
    with pytest.raises(SystemExit):
        parse_args(["--only", "plms"])
    with pytest.raises(SystemExit):
        parse_args(["--steps", "0,5"])
    with pytest.raises(SystemExit):
        parse_args(["--prompts", "1000"])
    card = parse_args(["--only", "card", "--card-settings", "DDIM:8, Euler a:12"])
    assert card.sections == ["card"]
    assert card.card_settings == [("ddim", 8), ("euler_ancestral", 12)]
    for wrong in ("ddim", "ddim:0", "plms:10", ""):
        with pytest.raises(SystemExit):
            parse_args(["--card-settings", wrong])


def _card_scores(accuracy: float, inpainting: float, img2img: float) -> dict[str, Any]:
    accuracies = {"colour_and_shape": accuracy, "place": 100.0, "colour": 99.0, "shape": accuracy}
    return {
        "text_to_image": accuracies,
        "held_out_phrasings": accuracies,
        "inpainting_colour_and_shape_inside": inpainting,
        "img2img_psnr_db_min": img2img,
        "img2img_psnr_db_median": img2img + 3,
        "last_preview_psnr_db_median": 5.0,  # shown, never judged
        "seconds": 10.0,
    }


def test_the_cards_scores_hold_unless_a_measure_falls_further_than_allowed() -> None:
    section = {
        "reference": "ddim:25",
        "settings": {
            "ddim:25": _card_scores(96.0, 95.8, 27.0),
            "ddim:10": _card_scores(94.0, 91.7, 26.0),  # each exactly at its limit
            "ddim:8": _card_scores(93.9, 87.5, 25.9),  # each just past it
        },
    }
    failing = card_verdicts(section)
    assert failing["ddim:10"] == []
    assert "held-out prompts, colour + shape" in failing["ddim:8"]
    assert "inpainting, colour + shape inside" in failing["ddim:8"]
    assert "image to image at 0.2, PSNR min" in failing["ddim:8"]
    assert "image to image at 0.2, PSNR median" in failing["ddim:8"]
    report = {**_report({"ddim": {25: 96.0}}), "mode": "full", "machine": {}}
    report["sections"]["card"] = {**section, "_finished_utc": "now", "_seconds": 1}
    derive(report)
    assert report["card_verdicts"] == failing
    text = render_markdown(report)
    assert "At `ddim:10` the card's scores **hold**." in text
    assert "| `ddim:25` (card) | `ddim:10` | `ddim:8` |" in text
