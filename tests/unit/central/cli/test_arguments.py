"""The shared argument types: a bad value is a usage error (exit 2) in every command."""

from __future__ import annotations

import pytest

from central.cli import main


@pytest.mark.parametrize(
    "argv",
    [
        ["up", "--topology", "mesh"],
        ["up", "--model", "sd-v9"],
        ["up", "--sizes", "64"],
        ["up", "--port", "70000"],
        ["up", "--ready-timeout", "-1"],
        ["up", "--replicas", "diffusion"],
        ["up", "--replicas", "unet=2"],
        ["up", "--replicas", "diffusion=0"],
        ["up", "--replicas", "diffusion=99"],
        ["generate"],
        ["generate", "x", "-n", "0"],
        ["generate", "x", "--size", "big"],
        ["generate", "x", "--steps", "many"],
    ],
)
def test_bad_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert "error:" in capsys.readouterr().err
