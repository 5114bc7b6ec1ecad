"""What every stage service must do, whatever its stage: a base class for test classes.

A subclass sets the class attributes and implements `good_request` / `oversize_request`
(httpx keyword arguments for one valid call, and one valid-looking call over
SMALL_BODY_BYTES). It needs the `service`, `restricted` and `client` fixtures from
conftest.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest

from shared.service_process import ServiceProcess
from tests.utils.wire import assert_error

from .common import AUTH, SMALL_BODY_BYTES, TINY_ENV, TOKEN

SETTINGS_FAILURE_TIMEOUT_S = 30.0
LOAD_FAILURE_TIMEOUT_S = 120.0


class StageContract:
    module: ClassVar[str]  # "services.diffusion"
    route: ClassVar[str]  # "/v1/denoise"
    service_name: ClassVar[str]  # what /v1/info calls it
    component: ClassVar[str]  # the model component it loads

    def good_request(self) -> dict[str, Any]:
        raise NotImplementedError

    def oversize_request(self) -> dict[str, Any]:
        raise NotImplementedError

    def post(self, client: httpx.Client, svc: ServiceProcess, **kwargs: Any) -> httpx.Response:
        return client.post(f"{svc.url}{self.route}", **kwargs)

    def with_auth(self, request: dict[str, Any], auth: dict[str, str]) -> dict[str, Any]:
        return {**request, "headers": {**request.get("headers", {}), **auth}}

    # --- health, info, schema --------------------------------------------------------

    def test_healthz(self, client: httpx.Client, service: ServiceProcess) -> None:
        response = client.get(f"{service.url}/healthz")
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}

    def test_readyz_once_up(self, client: httpx.Client, service: ServiceProcess) -> None:
        response = client.get(f"{service.url}/readyz")
        assert response.status_code == 200
        assert response.json() == {"status": "ready"}

    def test_info(self, client: httpx.Client, service: ServiceProcess) -> None:
        response = client.get(f"{service.url}/v1/info")
        assert response.status_code == 200
        info = response.json()
        assert info["service"] == self.service_name
        assert info["ready"] is True
        assert info["family"] == "tiny"
        assert info["random_weights"] is False
        assert self.component in info["weights"]  # the decoder also has the image encoder
        assert all(label.startswith("embedded:") for label in info["weights"].values())
        assert info["sizes"] == ["64x64", "128x128"]
        execution = info["execution"]
        assert {"xla", "batched_cfg", "precision", "device"} <= set(execution)
        assert execution["device"] in ("cpu", "gpu")
        assert isinstance(execution["xla"], bool)
        assert isinstance(execution["batched_cfg"], bool)
        assert isinstance(execution["precision"], str)

    def test_openapi_lists_route(self, client: httpx.Client, service: ServiceProcess) -> None:
        response = client.get(f"{service.url}/openapi.json")
        assert response.status_code == 200
        paths = response.json()["paths"]
        assert "post" in paths[self.route]
        for path in ("/healthz", "/readyz", "/v1/info"):
            assert "get" in paths[path]

    def test_good_call_has_timing_headers(
        self, client: httpx.Client, service: ServiceProcess
    ) -> None:
        response = self.post(client, service, **self.good_request())
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/x-npz"
        for header in ("x-queue-ms", "x-compute-ms"):
            assert float(response.headers[header]) >= 0.0
        assert float(response.headers["x-compute-ms"]) > 0.0

    def test_unknown_route_is_error_body(
        self, client: httpx.Client, service: ServiceProcess
    ) -> None:
        assert_error(client.get(f"{service.url}/v1/nope"), 404, error_type="not_found")

    def test_wrong_method_is_error_body(
        self, client: httpx.Client, service: ServiceProcess
    ) -> None:
        response = client.get(f"{service.url}{self.route}")
        assert_error(response, 405, error_type="method_not_allowed")

    # --- internal token --------------------------------------------------------------

    def test_token_missing_is_401(self, client: httpx.Client, restricted: ServiceProcess) -> None:
        response = self.post(client, restricted, **self.good_request())
        assert_error(response, 401, error_type="unauthorized")
        assert response.headers.get("www-authenticate") == "Bearer"

    @pytest.mark.parametrize("header", ["Basic c2VjcmV0", "Bearer", "secret"])
    def test_token_malformed_is_401(
        self, client: httpx.Client, restricted: ServiceProcess, header: str
    ) -> None:
        request = self.with_auth(self.good_request(), {"authorization": header})
        assert_error(self.post(client, restricted, **request), 401, error_type="unauthorized")

    def test_token_wrong_is_403(self, client: httpx.Client, restricted: ServiceProcess) -> None:
        request = self.with_auth(self.good_request(), {"authorization": "Bearer not-the-secret"})
        assert_error(self.post(client, restricted, **request), 403, error_type="forbidden")

    def test_token_right_is_200(self, client: httpx.Client, restricted: ServiceProcess) -> None:
        response = self.post(client, restricted, **self.with_auth(self.good_request(), AUTH))
        assert response.status_code == 200, response.text

    def test_token_scheme_is_case_insensitive(
        self, client: httpx.Client, restricted: ServiceProcess
    ) -> None:
        auth = {"authorization": f"bearer {TOKEN}"}
        response = self.post(client, restricted, **self.with_auth(self.good_request(), auth))
        assert response.status_code == 200, response.text

    def test_health_needs_no_token(self, client: httpx.Client, restricted: ServiceProcess) -> None:
        assert client.get(f"{restricted.url}/healthz").status_code == 200
        assert client.get(f"{restricted.url}/readyz").status_code == 200

    # --- body size limit -------------------------------------------------------------

    def test_oversize_body_is_413(self, client: httpx.Client, restricted: ServiceProcess) -> None:
        request = self.with_auth(self.oversize_request(), AUTH)
        size = len(request.get("content") or b"")
        assert size > SMALL_BODY_BYTES
        assert_error(self.post(client, restricted, **request), 413, param="body")

    def test_oversize_streamed_body_is_413(
        self, client: httpx.Client, restricted: ServiceProcess
    ) -> None:
        """No Content-Length (chunked): the cap must hold while the body is read."""
        request = self.with_auth(self.oversize_request(), AUTH)
        body = request.pop("content")
        chunks = [body[i : i + 16384] for i in range(0, len(body), 16384)]
        response = self.post(client, restricted, content=iter(chunks), **request)
        assert_error(response, 413, param="body")

    def test_body_under_cap_is_fine(self, client: httpx.Client, restricted: ServiceProcess) -> None:
        request = self.with_auth(self.good_request(), AUTH)
        assert len(request.get("content") or b"") < SMALL_BODY_BYTES
        assert self.post(client, restricted, **request).status_code == 200

    # --- start-up failures -----------------------------------------------------------

    @pytest.mark.parametrize(
        ("variable", "value"),
        [("SDSERVE_SIZES", "100x100"), ("SDSERVE_MODEL", "nope"), ("SDSERVE_MAX_STEPS", "0")],
    )
    def test_invalid_setting_fails_at_start(
        self, tmp_path: Path, variable: str, value: str
    ) -> None:
        proc = ServiceProcess(
            self.module,
            {**TINY_ENV, variable: value},
            log_path=tmp_path / "bad.log",
            wait_ready=False,
        )
        started = time.monotonic()
        try:
            proc.start()
            code = proc.wait_exit(SETTINGS_FAILURE_TIMEOUT_S)
        finally:
            proc.stop()
        assert code > 0, f"exit status {code} (negative: killed by signal {-code})"
        assert time.monotonic() - started < SETTINGS_FAILURE_TIMEOUT_S
        assert variable in proc.log_text(), proc.log_tail()

    @pytest.fixture(scope="class")
    def failed_load(self, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
        """The service started on an empty weights directory, after it exited."""
        weights = tmp_path_factory.mktemp("empty-weights")
        logs = tmp_path_factory.mktemp("failed-load")
        proc = ServiceProcess(
            self.module,
            {**TINY_ENV, "SDSERVE_WEIGHTS": str(weights)},
            log_path=logs / "service.log",
            wait_ready=False,
        )
        try:
            proc.start()
            proc.wait_exit(LOAD_FAILURE_TIMEOUT_S)
            yield proc
        finally:
            proc.stop()

    def test_empty_weights_dir_fails_at_start(self, failed_load: ServiceProcess) -> None:
        assert failed_load.returncode not in (None, 0)
        log = failed_load.log_text()
        assert f"{self.component}.weights.h5" in log, failed_load.log_tail()
        assert "SHA256SUMS" in log

    def test_empty_weights_dir_exits_with_a_status(self, failed_load: ServiceProcess) -> None:
        """An exit status (serve's sys.exit(1)), not death by SIGTERM: systemd counts a
        SIGTERM death as a clean stop and does not restart on-failure."""
        assert failed_load.returncode is not None
        assert failed_load.returncode > 0, f"returncode {failed_load.returncode}"
