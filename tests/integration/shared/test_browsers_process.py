"""The address a real gateway binds decides the Host names it answers (shared.browsers):
loopback names only on 127.0.0.1 (whatever SDSERVE_HOST says: --host wins), any Host with
a warning in its log on 0.0.0.0; probes answer any Host, other sites' pages get 403."""

from __future__ import annotations

from pathlib import Path

import httpx

from shared.service_process import ServiceProcess

ENV = {"SDSERVE_WEIGHTS": "random", "SDSERVE_SIZES": "64x64", "SDSERVE_WARM_UP": "false"}


def test_the_bound_address_decides_the_hosts_answered(tmp_path: Path) -> None:
    # SDSERVE_HOST says all addresses, --host (what ServiceProcess passes) says loopback.
    loopback = ServiceProcess(
        "central",
        {**ENV, "SDSERVE_HOST": "0.0.0.0"},  # --host overrides it
        log_path=tmp_path / "loopback.log",
        ready_path="/healthz",
        wait_ready=False,
    )
    everywhere = ServiceProcess(
        "central",
        ENV,
        host="0.0.0.0",
        log_path=tmp_path / "everywhere.log",
        ready_path="/healthz",
        wait_ready=False,
    )
    with loopback, everywhere:  # both start at once; the second waits for itself
        loopback.wait_ready()
        everywhere.wait_ready()
        local = f"http://127.0.0.1:{loopback.port}"
        with httpx.Client(timeout=30) as client:
            rebound = client.get(f"{local}/v1/info", headers={"host": "evil.example"})
            assert rebound.status_code == 400, rebound.text
            assert rebound.json()["error"]["type"] == "invalid_host"
            assert client.get(f"http://localhost:{loopback.port}/v1/info").status_code == 200
            assert client.get(f"{local}/v1/info").status_code == 200
            probe = client.get(f"{local}/healthz", headers={"host": f"10.1.2.3:{loopback.port}"})
            assert probe.status_code == 200
            cross_site = client.post(
                f"{local}/v1/images/generations",
                headers={"origin": "http://evil.example"},
                json={"prompt": "x", "size": "64x64", "steps": 1},
            )
            assert cross_site.status_code == 403, cross_site.text
            assert cross_site.json()["error"]["type"] == "forbidden"

            anywhere = f"http://127.0.0.1:{everywhere.port}/v1/info"
            answered = client.get(anywhere, headers={"host": "sdserve-central.sdserve.svc"})
            assert answered.status_code == 200, answered.text
        assert "DNS rebinding" in everywhere.log_text()
        assert "DNS rebinding" not in loopback.log_text()
