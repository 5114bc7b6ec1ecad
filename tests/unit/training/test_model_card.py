"""The model card's score table, from the scores written to evaluation.json."""

from __future__ import annotations

from training.model_card import _score_rows


def _scores() -> dict:
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


def test_score_rows_split_each_shape_by_size():
    rows = _score_rows(_scores()).splitlines()
    assert "| text to image: shape, squares (small / large) | 70% (50% / 90%) |" in rows
    assert "| text to image: shape, triangles (small / large) | 80% (60% / 100%) |" in rows
    assert rows[0] == "| text to image: colour and shape | 80% |"
    assert "| inpainting: PSNR outside the mask, min / median | identical / identical |" in rows
    assert any(r.endswith("| 26.9 / 30.2 dB |") for r in rows)
