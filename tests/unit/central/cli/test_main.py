"""`sdserve` as a whole (central.cli.main, `python -m central.cli`): help, no command,
exit codes, and an import that stays light.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from central.cli import main

REPO = Path(__file__).resolve().parents[4]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_help_names_both_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "usage: sdserve" in out and "up" in out and "generate" in out


def test_no_command_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: sdserve" in capsys.readouterr().err


def test_cli_imports_nothing_heavy() -> None:
    code = (
        "import sys, central.cli; "
        "print([m for m in ('tensorflow', 'keras', 'numpy', 'pydantic', 'httpx') "
        "if m in sys.modules])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_the_console_command_exits_non_zero_on_errors(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = subprocess.run(
        [sys.executable, "-m", "central.cli", "generate", "x", "--url", url],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert result.returncode == 1
    assert "sdserve up" in result.stderr
    assert not (tmp_path / "out.png").exists()
