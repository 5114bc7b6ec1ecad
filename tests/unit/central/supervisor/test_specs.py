"""central.supervisor.specs: how a child's exit is described."""

from __future__ import annotations

from central.supervisor.specs import describe_exit


def test_describe_exit() -> None:
    assert describe_exit(0) == "exited with code 0"
    assert describe_exit(3) == "exited with code 3"
    assert describe_exit(-9) == "was killed by SIGKILL (9)"
    assert describe_exit(-15) == "was killed by SIGTERM (15)"
