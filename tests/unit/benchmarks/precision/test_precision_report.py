"""benchmarks.precision: the committed results re-render to themselves, PSNR is 0-255
PSNR, and a bad --weights-dir is refused."""

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.precision.__main__ import main, psnr, render

RESULTS = Path(__file__).resolve().parents[4] / "benchmarks" / "results"


def test_committed_precision_json_renders_the_committed_markdown() -> None:
    report = json.loads((RESULTS / "precision.json").read_text())
    assert render(report) == (RESULTS / "precision.md").read_text()
    # tiny is measured on its trained weights, with the card's judge beside the PSNR.
    tiny = report["families"]["tiny"]
    assert tiny["weights"] == "embedded"
    assert set(tiny["precisions"]) == {"mixed_bfloat16", "mixed_float16"}
    assert "colour_and_shape" in tiny["precisions"]["mixed_float16"]


def test_psnr_of_8_bit_images() -> None:
    image = np.full((4, 4, 3), 100, np.uint8)
    assert psnr(image, image) == 99.0
    off_by_one = image + 1
    assert psnr(image, off_by_one) == pytest.approx(20 * np.log10(255), abs=1e-9)


def test_weights_dir_names_a_family() -> None:
    with pytest.raises(SystemExit):
        main(["--weights-dir", "sdxl=/tmp/x", "--render-only"])
    with pytest.raises(SystemExit):
        main(["--weights-dir", "sd-v1", "--render-only"])
