"""Make `tests.utils` importable however pytest is invoked (`pytest` or `python -m pytest`),
and share between test modules what is costly to make: the default tiny stack (for the
modules that only send it requests) and a converted sd-v1 checkpoint."""

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from shared.service_process import ServiceProcess, run_services  # noqa: E402
from tests.utils.redis_server import RedisServer, start_redis  # noqa: E402
from tests.utils.tiny_stack import STAGE_NAMES, TINY_STACK_ENV  # noqa: E402


@pytest.fixture(scope="session")
def tiny_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ServiceProcess]]:
    """Real processes, started once per session: the three stage services (keyed by
    stage name) and a gateway per topology over them ("all-in-one", "three-endpoints",
    "hybrid" with only the diffusion stage remote).

    Tests that use it must leave it as they found it: no killing, pausing or
    reconfiguring (those tests start their own processes), and counters read as deltas.
    Bytes compared with another process are only equal while both have traced the same
    shapes in the same order (warm-up is off), so such comparisons run first or elsewhere.
    """
    logs = tmp_path_factory.mktemp("tiny-stack")
    stages = {
        name: ServiceProcess(f"services.{name}", TINY_STACK_ENV, log_path=logs / f"{name}.log")
        for name in STAGE_NAMES
    }
    with run_services(*stages.values()):
        urls = {f"SDSERVE_{name.upper()}_URL": svc.url for name, svc in stages.items()}
        gateways = {
            "all-in-one": ServiceProcess(
                "central", TINY_STACK_ENV, log_path=logs / "all-in-one.log"
            ),
            "three-endpoints": ServiceProcess(
                "central", {**TINY_STACK_ENV, **urls}, log_path=logs / "three-endpoints.log"
            ),
            "hybrid": ServiceProcess(
                "central",
                {**TINY_STACK_ENV, "SDSERVE_DIFFUSION_URL": urls["SDSERVE_DIFFUSION_URL"]},
                log_path=logs / "hybrid.log",
            ),
        }
        with run_services(*gateways.values()):
            yield {**stages, **gateways}


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server for the session (skipped where it is not installed). Tests
    that use it flush what they need; tests that stop it start it again."""
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def sd_v1_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """SD 1.5's real architecture with seeded random weights as a diffusers folder
    (float16, as published; an epsilon scheduler, as SD 1.5's), and the folder converted
    by `sdserve convert`: `folder`, `out` (the converted directory), `manifest`.

    Made once (half a minute) for the sd-v1 services that serve it and the reference
    tests that prove its conversion; 4 GB on disk, removed at the end of the session.
    """
    from shared.convert.convert import convert
    from tests.utils import sd_reference

    root = tmp_path_factory.mktemp("sd-v1-checkpoint")
    folder = root / "sd15-diffusers"
    for part, seed in (("unet", 1), ("vae", 2), ("text_encoder", 3)):
        config, weights = sd_reference.random_state(part, "sd-v1", seed)
        sd_reference.write_part(folder, part, weights, config)
        del weights
    sd_reference.write_scheduler(folder, "epsilon")
    out = root / "converted"
    manifest = convert(folder, "sd-v1", out)
    yield SimpleNamespace(folder=folder, out=out, manifest=manifest)
    shutil.rmtree(root, ignore_errors=True)  # gigabytes; pytest keeps old temp dirs
