"""Stage services as real processes: one normal and one restricted instance per module.

A test module sets `SERVICE_MODULE` (e.g. "services.diffusion"); the `service` and
`restricted` fixtures then start that module once for the whole test module, both at
once. `restricted` requires an internal token and caps bodies at SMALL_BODY_BYTES.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from shared.service_process import ServiceProcess, run_services

from .common import SMALL_BODY_BYTES, TINY_ENV, TOKEN


@pytest.fixture(scope="module")
def stage_services(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServiceProcess, ServiceProcess]]:
    module = request.module.SERVICE_MODULE
    logs = tmp_path_factory.mktemp(module.replace(".", "-"))
    main = ServiceProcess(module, TINY_ENV, log_path=logs / "service.log")
    restricted = ServiceProcess(
        module,
        {
            **TINY_ENV,
            "SDSERVE_INTERNAL_TOKEN": TOKEN,
            "SDSERVE_MAX_BODY_BYTES": str(SMALL_BODY_BYTES),
        },
        log_path=logs / "restricted.log",
    )
    with run_services(main, restricted):
        yield main, restricted


@pytest.fixture(scope="module")
def service(stage_services: tuple[ServiceProcess, ServiceProcess]) -> ServiceProcess:
    return stage_services[0]


@pytest.fixture(scope="module")
def restricted(stage_services: tuple[ServiceProcess, ServiceProcess]) -> ServiceProcess:
    return stage_services[1]


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=120.0) as c:
        yield c


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """On failure, show the tail of every service process log the test used."""
    report = yield
    if report.failed:
        for name, value in getattr(item, "funcargs", {}).items():
            if isinstance(value, ServiceProcess):
                report.sections.append((f"{name}: {value.log_path}", value.log_tail(40)))
    return report
