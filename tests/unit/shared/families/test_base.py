"""Every family's spec: its defaults agree with its own constraints."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from shared.families import FAMILY_NAMES, get_family

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
