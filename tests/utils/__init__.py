"""Helpers shared by the integration and end-to-end tests."""

from tests.utils.servers import (
    ServiceProcess,
    ServiceStartError,
    free_port,
    run_services,
    service_env,
)

__all__ = ["ServiceProcess", "ServiceStartError", "free_port", "run_services", "service_env"]
