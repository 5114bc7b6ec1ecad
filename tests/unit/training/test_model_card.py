"""The model card's score table and previews section, from the scores in evaluation.json."""

from __future__ import annotations

import json
from typing import Any

from shared.families.tiny import TinyFamily
from training.evaluate import PreviewScores
from training.model_card import _score_rows, preview_scores, previews_section

TINY_WEIGHTS = TinyFamily.embedded_weights


def _scores() -> dict[str, Any]:
    return {
        "text_to_image": {
            "colour_and_shape": 0.8,
            "colour": 1.0,
            "shape": 0.8,
            "place": 1.0,
            "size": 0.99,
            "shape_by_kind": {"circle": 0.9, "square": 0.7, "triangle": 0.8},
            "shape_by_kind_and_size": {
                "circle": {"small": 0.85, "large": 0.95},
                "square": {"small": 0.5, "large": 0.9},
                "triangle": {"small": 0.6, "large": 1.0},
            },
        },
        "inpainting": {
            "cases": 24,
            "colour_inside": 0.96,
            "colour_and_shape_inside": 0.75,
            "outside_psnr_db_min": "identical",
            "outside_psnr_db_median": "identical",
            "without_overlay_outside_psnr_db_min": 24.84,
            "without_overlay_outside_psnr_db_median": 31.2,
        },
        "img2img": {"strength": 0.2, "psnr_db_min": 26.9, "psnr_db_median": 30.25},
    }


def test_score_rows_split_each_shape_by_size() -> None:
    rows = _score_rows(_scores()).splitlines()
    assert "| text to image: shape, squares (small / large) | 70% (50% / 90%) |" in rows
    assert "| text to image: shape, triangles (small / large) | 80% (60% / 100%) |" in rows
    assert rows[0] == "| text to image: colour and shape | 80% |"
    assert "| inpainting: PSNR outside the mask, min / median | identical / identical |" in rows
    assert any(r.endswith("| 26.9 / 30.2 dB |") for r in rows)


def test_the_preview_scores_are_the_last_previews_rounded() -> None:
    last = PreviewScores(step=24, psnr=[20.123, 25.0, 23.456], mean_abs_error=[10.0, 20.555, 15.0])
    assert preview_scores(last) == {
        "step": 24,
        "psnr_db_median": 23.46,
        "psnr_db_min": 20.12,
        "mean_abs_error_median": 15.0,
        "mean_abs_error_max": 20.55,
    }


def test_the_committed_card_has_the_previews_section_of_its_scores() -> None:
    """The card's previews section is generated (a retrain rewrites the card): the
    committed card holds the one its evaluation.json gives."""
    scores = json.loads((TINY_WEIGHTS / "evaluation.json").read_text())
    section = previews_section(scores)
    median = scores["previews"]["psnr_db_median"]
    assert f"(step {scores['previews']['step']} of" in section and f"{median:.1f} dB" in section
    assert section in (TINY_WEIGHTS / "README.md").read_text()
