"""central.supervisor.runner with real child processes (small `python -c` programs)."""

from __future__ import annotations

import asyncio
import io
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from central.supervisor.runner import NotReadyError, Supervisor
from central.supervisor.specs import EX_CONFIG, ChildSpec, RestartPolicy
from tests.utils.child_processes import FAST, py, run, until

REPO = Path(__file__).resolve().parents[4]

# Serves GET /readyz on 127.0.0.1:PORT: 503 until DELAY seconds have passed, then 200.
READY_SERVER = """
import http.server, sys, time
port, delay = int(sys.argv[1]), float(sys.argv[2])
ready_at = time.monotonic() + delay
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ok = self.path == "/readyz" and time.monotonic() >= ready_at
        body = b'{"status": "ready"}' if ok else b'{"status": "loading"}'
        self.send_response(200 if ok else 503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
print("listening on", port, flush=True)
http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ready_server(name: str, delay: float) -> ChildSpec:
    port = free_port()
    return ChildSpec(
        name,
        py(READY_SERVER, str(port), str(delay)),
        ready_url=f"http://127.0.0.1:{port}/readyz",
    )


def gone(pid: int) -> bool:
    """The process no longer runs (a zombie waiting for init counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def test_names_must_be_unique() -> None:
    with pytest.raises(ValueError, match="unique"):
        Supervisor([ChildSpec("a", ["true"]), ChildSpec("a", ["true"])])


# ------------------------------------------------------------------------ readiness


def test_wait_ready_waits_for_every_readyz() -> None:
    out = io.StringIO()
    specs = [ready_server("quick", 0.0), ready_server("slow", 1.0)]
    sup = Supervisor(specs, color=False, out=out, policy=FAST, poll_interval_s=0.05)

    async def scenario() -> None:
        await sup.start()
        try:
            started = time.monotonic()
            assert await sup.wait_ready(timeout_s=30)
            assert time.monotonic() - started >= 0.9
            assert sup.is_ready("quick") and sup.is_ready("slow")
        finally:
            await sup.stop()

    run(scenario)
    text = out.getvalue()
    assert "quick is ready (" in text and "slow is ready (" in text


def test_wait_ready_times_out_naming_what_is_not_ready() -> None:
    out = io.StringIO()
    specs = [
        ready_server("fine", 0.0),
        ready_server("loading", float("inf")),
        ChildSpec(
            "deaf",
            py("import time; time.sleep(60)"),
            ready_url=f"http://127.0.0.1:{free_port()}/readyz",
        ),
    ]
    sup = Supervisor(specs, color=False, out=out, policy=FAST, poll_interval_s=0.05)

    async def scenario() -> None:
        await sup.start()
        try:
            with pytest.raises(NotReadyError) as caught:
                await sup.wait_ready(timeout_s=2.0)
        finally:
            await sup.stop()
        assert caught.value.names == ["loading", "deaf"]
        message = str(caught.value)
        assert message.startswith("not ready after 2 s: 2 parts are not ready")
        assert re.search(r"loading \(http://127\.0\.0\.1:\d+/readyz answered 503 ", message)
        assert '{"status": "loading"}' in message
        assert re.search(r"deaf \(http://127\.0\.0\.1:\d+/readyz: connection refused", message)
        assert "fine" not in message

    run(scenario)


def test_run_gives_up_when_not_ready_in_time_and_stops_everything() -> None:
    out = io.StringIO()
    sup = Supervisor([ready_server("never", float("inf"))], color=False, out=out)

    async def scenario() -> None:
        code = await sup.run(ready_timeout_s=1.0, handle_signals=False)
        assert code == 1

    run(scenario)
    assert "not ready after 1 s: 1 part is not ready: never (" in out.getvalue()
    assert all(gone(pid) for pid in sup.spawned_pids("never"))


# ------------------------------------------------------------------------- restarts


def restart_delays(text: str, name: str) -> list[str]:
    return re.findall(rf"{name} .* restarting in ([\d.]+) s", text)


def test_a_dying_child_is_restarted_with_exponential_backoff() -> None:
    out = io.StringIO()
    policy = RestartPolicy(
        initial_backoff_s=0.1, max_backoff_s=0.4, early_exit_s=0.2, healthy_after_s=100
    )
    specs = [
        ChildSpec("flaky", py("import time, sys; time.sleep(0.5); sys.exit(3)")),
        ChildSpec("steady", py("import time; time.sleep(60)")),
    ]
    sup = Supervisor(specs, color=False, out=out, policy=policy)

    async def scenario() -> None:
        await sup.start()
        try:
            await until(lambda: sup.restart_count("flaky") >= 4, timeout=20)
            assert sup.restart_count("steady") == 0
            assert sup.fatal is None
        finally:
            await sup.stop()

    run(scenario)
    text = out.getvalue()
    assert restart_delays(text, "flaky")[:4] == ["0.1", "0.2", "0.4", "0.4"]
    assert re.search(r"flaky exited with code 3 after 0\.\d s; restarting in 0\.1 s", text)
    pids = sup.spawned_pids("flaky")
    assert len(pids) >= 5 and len(set(pids)) == len(pids)
    assert all(gone(pid) for pid in pids)


def test_backoff_resets_after_a_healthy_run_and_signals_are_named() -> None:
    out = io.StringIO()
    policy = RestartPolicy(
        initial_backoff_s=0.1, max_backoff_s=5.0, early_exit_s=0.1, healthy_after_s=0.3
    )
    code = "import os, signal, time; time.sleep(0.5); os.kill(os.getpid(), signal.SIGKILL)"
    sup = Supervisor([ChildSpec("victim", py(code))], color=False, out=out, policy=policy)

    async def scenario() -> None:
        await sup.start()
        try:
            await until(lambda: sup.restart_count("victim") >= 3, timeout=20)
        finally:
            await sup.stop()

    run(scenario)
    text = out.getvalue()
    assert "victim was killed by SIGKILL (9) after 0." in text
    # each run lasted longer than healthy_after_s, so the delay never grows
    assert set(restart_delays(text, "victim")) == {"0.1"}


def test_early_exits_with_different_codes_are_not_fatal(tmp_path: Path) -> None:
    counter = tmp_path / "count"
    code = """
    import pathlib, sys, time
    path = pathlib.Path(sys.argv[1])
    n = int(path.read_text()) if path.exists() else 0
    path.write_text(str(n + 1))
    if n < 4:
        sys.exit(1 + n % 2)  # 1, 2, 1, 2: quick, but never the same code twice in a row
    time.sleep(60)
    """
    out = io.StringIO()
    sup = Supervisor(
        [ChildSpec("wobbly", py(code, str(counter)))], color=False, out=out, policy=FAST
    )

    async def scenario() -> None:
        await sup.start()
        try:
            await until(lambda: len(sup.spawned_pids("wobbly")) == 5, timeout=20)
            await asyncio.sleep(0.3)
            assert sup.fatal is None
            assert sup.pids()["wobbly"] is not None
        finally:
            await sup.stop()

    run(scenario)


# ---------------------------------------------------------------------------- fatal


def test_a_child_failing_at_start_up_three_times_is_fatal() -> None:
    out = io.StringIO()
    bad = ChildSpec(
        "bad", py("import sys; sys.exit('bad: invalid settings: SDSERVE_MODEL: no such family')")
    )
    good = ChildSpec("good", py("import time; time.sleep(60)"))
    sup = Supervisor([bad, good], color=False, out=out, policy=FAST)

    async def scenario() -> None:
        started = time.monotonic()
        assert await sup.run(ready_timeout_s=30, handle_signals=False) == 1
        assert time.monotonic() - started < 10

    run(scenario)
    assert sup.fatal is not None
    assert "FATAL: bad exited with code 1 within 2 s of starting 3 times in a row" in sup.fatal
    assert "SDSERVE_MODEL: no such family" in sup.fatal  # its last output is quoted
    assert len(sup.spawned_pids("bad")) == 3
    assert restart_delays(out.getvalue(), "bad") == ["0.1", "0.2"]
    assert out.getvalue().rstrip().endswith("stopped everything")
    assert all(gone(pid) for pid in sup.spawned_pids("bad") + sup.spawned_pids("good"))


def test_ex_config_exit_is_fatal_at_once() -> None:
    out = io.StringIO()
    sup = Supervisor(
        [ChildSpec("strict", py(f"import sys; sys.exit({EX_CONFIG})"))],
        color=False,
        out=out,
        policy=FAST,
    )
    assert asyncio.run(sup.run(handle_signals=False)) == 1
    assert sup.fatal is not None and "EX_CONFIG" in sup.fatal
    assert len(sup.spawned_pids("strict")) == 1


def test_a_program_that_cannot_start_is_fatal() -> None:
    out = io.StringIO()
    sup = Supervisor([ChildSpec("ghost", ["/nonexistent/program"])], color=False, out=out)
    assert asyncio.run(sup.run(handle_signals=False)) == 1
    assert sup.fatal is not None and sup.fatal.startswith("cannot start ghost")


# ----------------------------------------------------------------------------- stop


def test_stop_terminates_children_and_grandchildren_then_kills_stragglers() -> None:
    out = io.StringIO()
    specs = [
        ChildSpec("polite", py("import time; print('up', flush=True); time.sleep(60)")),
        ChildSpec(
            "stubborn",
            py("""
            import signal, time
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            print("ignoring SIGTERM", flush=True)
            time.sleep(60)
            """),
        ),
        ChildSpec(
            "parent",
            py("""
            import subprocess, sys, time
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
            print("grandchild", child.pid, flush=True)
            time.sleep(60)
            """),
        ),
    ]
    sup = Supervisor(specs, color=False, out=out, grace_s=1.0)

    async def scenario() -> None:
        await sup.start()
        await until(lambda: "ignoring SIGTERM" in out.getvalue() and "grandchild" in out.getvalue())
        await until(lambda: "polite   | up" in out.getvalue())
        started = time.monotonic()
        await sup.stop()
        assert time.monotonic() - started < 5

    run(scenario)
    text = out.getvalue()
    grandchild = int(re.search(r"grandchild (\d+)", text).group(1))  # type: ignore[union-attr]
    pids = [pid for name in ("polite", "stubborn", "parent") for pid in sup.spawned_pids(name)]
    assert len(pids) == 3
    assert all(gone(pid) for pid in [*pids, grandchild])
    assert "stubborn did not stop within 1 s; killing it" in text
    assert "polite did not stop" not in text
    assert sup.pids() == {"polite": None, "stubborn": None, "parent": None}


def test_a_child_with_stop_after_stops_once_those_have_exited() -> None:
    """The store keeps running while the gateway writes to it on its way out."""
    out = io.StringIO()
    on_sigterm = """
    import signal, sys, time
    def stop(*_):
        time.sleep(float(sys.argv[1]))
        print(sys.argv[2], flush=True)
        sys.exit(0)
    signal.signal(signal.SIGTERM, stop)
    print("up", flush=True)
    time.sleep(60)
    """
    specs = [
        ChildSpec("store", py(on_sigterm, "0", "store got SIGTERM"), stop_after=["gateway"]),
        ChildSpec("gateway", py(on_sigterm, "0.5", "gateway handed its jobs over")),
    ]
    sup = Supervisor(specs, color=False, out=out, grace_s=5.0)

    async def scenario() -> None:
        await sup.start()
        await until(lambda: "store   | up" in out.getvalue() and "gateway | up" in out.getvalue())
        await sup.stop()

    run(scenario)
    text = out.getvalue()
    assert "store stops after gateway" in text
    assert text.index("gateway handed its jobs over") < text.index("store got SIGTERM")
    assert all(gone(pid) for name in ("store", "gateway") for pid in sup.spawned_pids(name))


def test_a_kill_does_not_wait_for_the_stop_order() -> None:
    out = io.StringIO()
    ignores_sigterm = """
    import signal, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("up", flush=True)
    time.sleep(60)
    """
    specs = [
        ChildSpec("store", py(ignores_sigterm), stop_after=["gateway"]),
        ChildSpec("gateway", py(ignores_sigterm)),
    ]
    sup = Supervisor(specs, color=False, out=out, grace_s=60.0)

    async def scenario() -> None:
        await sup.start()
        await until(lambda: out.getvalue().count("| up") == 2)
        sup.request_stop()
        await asyncio.sleep(0.3)
        started = time.monotonic()
        sup.kill_now()
        await sup.stop()
        assert time.monotonic() - started < 5

    run(scenario)
    assert all(gone(pid) for name in ("store", "gateway") for pid in sup.spawned_pids(name))


def test_stop_after_must_name_other_children_without_a_cycle() -> None:
    with pytest.raises(ValueError, match="names no other child"):
        Supervisor([ChildSpec("a", ["true"], stop_after=["b"])])
    with pytest.raises(ValueError, match="names no other child"):
        Supervisor([ChildSpec("a", ["true"], stop_after=["a"])])
    with pytest.raises(ValueError, match="cycle"):
        Supervisor(
            [
                ChildSpec("a", ["true"], stop_after=["b"]),
                ChildSpec("b", ["true"], stop_after=["c"]),
                ChildSpec("c", ["true"], stop_after=["b"]),
            ]
        )


SUPERVISOR_SCRIPT = """
import asyncio, sys
from central.supervisor.runner import Supervisor
from central.supervisor.specs import ChildSpec
specs = [
    ChildSpec("one", [sys.executable, "-c", "import time; time.sleep(60)"]),
    ChildSpec("two", [sys.executable, "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"]),
]
sup = Supervisor(specs, color=False, grace_s=float(sys.argv[1]))
sys.exit(asyncio.run(sup.run(on_ready=lambda: sup.write("READY\\n"))))
"""


def start_supervisor_process(
    tmp_path: Path, grace_s: float
) -> tuple[subprocess.Popen[bytes], Path]:
    log = tmp_path / "supervisor.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-c", SUPERVISOR_SCRIPT, str(grace_s)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    deadline = time.monotonic() + 30
    while "READY" not in log.read_text():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    time.sleep(0.2)  # let "two" install its SIGTERM handler
    return proc, log


def child_pids(text: str) -> list[int]:
    return [int(pid) for pid in re.findall(r"started \w+ \(pid (\d+)\)", text)]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_the_supervisor_and_all_its_children(
    tmp_path: Path, signum: signal.Signals
) -> None:
    proc, log = start_supervisor_process(tmp_path, grace_s=1.0)
    pids = child_pids(log.read_text())
    assert len(pids) == 2 and not any(gone(pid) for pid in pids)
    proc.send_signal(signum)
    assert proc.wait(timeout=15) == 0
    text = log.read_text()
    assert f"received {signum.name}: stopping" in text
    assert "two did not stop within 1 s; killing it" in text
    assert text.rstrip().endswith("stopped")
    assert all(gone(pid) for pid in pids)


def test_a_second_signal_kills_at_once(tmp_path: Path) -> None:
    proc, log = start_supervisor_process(tmp_path, grace_s=60.0)
    pids = child_pids(log.read_text())
    proc.send_signal(signal.SIGTERM)
    time.sleep(1.5)  # past the window in which a repeat is the same stop request
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    assert time.monotonic() - started < 10
    assert "received SIGTERM again: killing" in log.read_text()
    assert all(gone(pid) for pid in pids)


def test_the_same_signal_twice_at_once_is_one_stop_request(tmp_path: Path) -> None:
    """What make's passing SIGTERM on looks like, deterministically: two deliveries."""
    proc, log = start_supervisor_process(tmp_path, grace_s=1.0)
    pids = child_pids(log.read_text())
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    text = log.read_text()
    assert text.count("received SIGTERM") == 1
    assert "two did not stop within 1 s; killing it" in text
    assert all(gone(pid) for pid in pids)


def test_one_sigterm_to_make_ups_process_group_stops_cleanly(tmp_path: Path) -> None:
    """`make up` stopped with SIGTERM to its process group: the supervisor gets the signal
    from the group and once more from make (GNU make passes SIGTERM on to its children),
    which is one stop request, not a stop and a kill."""
    script = tmp_path / "supervisor.py"
    script.write_text(SUPERVISOR_SCRIPT)
    (tmp_path / "Makefile").write_text(f"up:\n\t{sys.executable} supervisor.py 1.0\n")
    log = tmp_path / "make.log"
    with log.open("wb") as sink:
        make = subprocess.Popen(
            ["make", "-s", "up"],
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            start_new_session=True,  # a process group of its own, as a terminal gives it
        )
    deadline = time.monotonic() + 30
    while "READY" not in log.read_text():
        assert make.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    time.sleep(0.2)  # let "two" install its SIGTERM handler
    pids = child_pids(log.read_text())
    assert len(pids) == 2
    os.killpg(make.pid, signal.SIGTERM)
    make.wait(timeout=15)
    deadline = time.monotonic() + 15
    while not log.read_text().rstrip().endswith("stopped"):
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    text = log.read_text()
    assert "received SIGTERM: stopping" in text
    assert "again: killing" not in text
    # The child that ignores SIGTERM had its grace period: a clean stop, not a kill.
    assert "two did not stop within 1 s; killing it" in text
    assert all(gone(pid) for pid in pids)
