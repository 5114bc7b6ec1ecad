"""Every family's spec: its defaults agree with its own constraints."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from shared.families import FAMILY_NAMES, get_family
from shared.families.base import SD_VAE_PREVIEW

REPO_ROOT = Path(__file__).resolve().parents[4]


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_a_familys_default_sizes_are_multiples_of_its_size_multiple(name: str) -> None:
    spec = get_family(name).spec
    assert spec.name == name
    assert spec.default_sizes
    for width, height in spec.default_sizes:
        assert width % spec.size_multiple == 0 and height % spec.size_multiple == 0


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_a_familys_default_weights_exist_for_it(name: str) -> None:
    family = get_family(name)
    if family.spec.default_weights == "embedded":
        assert family.embedded_weights is not None and family.embedded_weights.is_dir()
    else:
        assert family.published_weights


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_a_familys_preview_map_has_a_row_per_latent_channel(name: str) -> None:
    spec = get_family(name).spec
    assert spec.preview_map is not None
    assert len(spec.preview_map.matrix) == spec.latent_channels
    assert all(len(row) == 3 for row in spec.preview_map.matrix)
    assert len(spec.preview_map.bias) == 3


def test_sd_families_keep_the_sd_vae_factors_and_tiny_has_its_own() -> None:
    assert get_family("sd-v1").spec.preview_map == SD_VAE_PREVIEW
    assert get_family("sd-v2").spec.preview_map == SD_VAE_PREVIEW
    assert get_family("tiny").spec.preview_map != SD_VAE_PREVIEW


def test_every_spec_and_the_settings_load_without_keras() -> None:
    """The gateway and the CLI read family facts; they must not pay for importing Keras."""
    code = (
        "import sys; from shared.config import load_settings; "
        "from shared.families import FAMILY_NAMES, get_family; "
        "[get_family(n).spec for n in FAMILY_NAMES]; load_settings(model='tiny'); "
        "print(sorted(m for m in ('keras', 'keras_cv', 'tensorflow') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(REPO_ROOT), "PATH": ""},
    )
    assert result.stdout.strip() == "[]"
