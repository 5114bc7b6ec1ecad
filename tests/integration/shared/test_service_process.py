"""shared.service_process itself: ports, environment, failing fast with the log tail."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from shared.service_process import ServiceProcess, ServiceStartError, free_port, service_env


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))


def test_service_env_scrubs_inherited_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SDSERVE_INTERNAL_TOKEN", "from-the-shell")
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    env = service_env({"SDSERVE_MODEL": "tiny"})
    assert "SDSERVE_INTERNAL_TOKEN" not in env
    assert env["SDSERVE_MODEL"] == "tiny"
    assert env["KERAS_BACKEND"] == "tensorflow"
    assert service_env(scrub_prefixes=())["SDSERVE_INTERNAL_TOKEN"] == "from-the-shell"


def test_start_fails_fast_with_log_tail(tmp_path: Path) -> None:
    proc = ServiceProcess(
        "services.decoder", {"SDSERVE_SIZES": "100x100"}, log_path=tmp_path / "x.log"
    )
    started = time.monotonic()
    with pytest.raises(ServiceStartError) as info, proc:
        pass
    assert time.monotonic() - started < 30
    message = str(info.value)
    assert f"exited with code {proc.returncode}" in message
    assert "SDSERVE_SIZES" in message
    assert proc.returncode not in (None, 0)
    assert "SDSERVE_SIZES" in proc.log_tail()
