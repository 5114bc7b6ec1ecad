"""Real service processes on free ports, for the tests and the benchmarks.

In the spirit of vLLM's `RemoteOpenAIServer`: start `python -m <module> --host 127.0.0.1
--port <free port>` with a given environment, wait for `/readyz` to answer 200, hand the
caller a base URL, and stop the process afterwards. Everything the process prints goes to
a log file, so a failure can show the log's tail.

    with ServiceProcess("services.diffusion", env={"SDSERVE_MODEL": "tiny"}) as svc:
        httpx.get(f"{svc.url}/v1/info")

Use `wait_ready=False` (and `wait_exit`) for processes expected to fail at start-up, and
`run_services(a, b, ...)` to start several at once (they load concurrently).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Self

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_STARTUP_TIMEOUT_S = 180.0
DEFAULT_STOP_TIMEOUT_S = 15.0
POLL_INTERVAL_S = 0.2
# Attempts when the port picked turns out to be taken by the time the process binds it.
PORT_ATTEMPTS = 3
_PORT_IN_USE_MARKERS = ("address already in use", "errno 98", "only one usage of each socket")


class ServiceStartError(RuntimeError):
    """The process exited, or was not ready in time; the message carries its log tail."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it; racy, but rarely)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def service_env(
    overrides: Mapping[str, str] | None = None,
    *,
    scrub_prefixes: Iterable[str] = ("SDSERVE_",),
) -> dict[str, str]:
    """os.environ minus variables with the given prefixes, plus KERAS_BACKEND and overrides.

    Scrubbing `SDSERVE_*` keeps a developer's shell settings (an internal token, say) from
    leaking into the started process; pass `scrub_prefixes=()` to keep them.
    """
    prefixes = tuple(scrub_prefixes)
    env = {k: v for k, v in os.environ.items() if not (prefixes and k.startswith(prefixes))}
    env["KERAS_BACKEND"] = "tensorflow"
    env.setdefault("PYTHONUNBUFFERED", "1")
    # TensorFlow's C++ start-up chatter is noise in a log tail.
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    env.update(overrides or {})
    return env


class ServiceProcess:
    """One `python -m <module>` server process on 127.0.0.1 and a free port.

    Attributes once started: `url`, `port`, `host`, `proc` (the Popen), `log_path`.
    """

    def __init__(
        self,
        module: str,
        env: Mapping[str, str] | None = None,
        *,
        args: Iterable[str] = (),
        host: str = "127.0.0.1",
        port: int | None = None,
        log_path: Path | str | None = None,
        ready_path: str = "/readyz",
        startup_timeout: float = DEFAULT_STARTUP_TIMEOUT_S,
        stop_timeout: float = DEFAULT_STOP_TIMEOUT_S,
        wait_ready: bool = True,
        scrub_prefixes: Iterable[str] = ("SDSERVE_",),
        cwd: Path | str = REPO_ROOT,
    ) -> None:
        self.module = module
        self.env = service_env(env, scrub_prefixes=scrub_prefixes)
        self.args = list(args)
        self.host = host
        self._fixed_port = port
        self.port = port or 0
        self.ready_path = ready_path
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.wait_ready_on_start = wait_ready
        self.cwd = Path(cwd)
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix=f"{module.replace('.', '-')}-", suffix=".log")
            os.close(fd)
            log_path = name
        self.log_path = Path(log_path)
        self.proc: subprocess.Popen[bytes] | None = None

    # --- lifecycle -------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            self.module,
            "--host",
            self.host,
            "--port",
            str(self.port),
            *self.args,
        ]

    def start(self) -> Self:
        """Start the process and, unless wait_ready=False, wait until it is ready."""
        if self.proc is not None:
            raise RuntimeError(f"{self.module} was already started")
        attempts = 1 if self._fixed_port else PORT_ATTEMPTS
        for attempt in range(attempts):
            self._spawn()
            if not self.wait_ready_on_start:
                return self
            try:
                self.wait_ready()
                return self
            except ServiceStartError:
                port_taken = any(m in self.log_tail().lower() for m in _PORT_IN_USE_MARKERS)
                self.stop()
                if not port_taken or attempt == attempts - 1:
                    raise
                self.proc = None
        return self  # unreachable: the loop returns or raises

    def _spawn(self) -> None:
        self.port = self._fixed_port or free_port(self.host)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"$ {' '.join(self.command)}\n".encode())
            log.flush()
            # The command is this interpreter and a module name given by the caller; no shell.
            self.proc = subprocess.Popen(  # noqa: S603
                self.command,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self, timeout: float | None = None) -> None:
        """Poll `ready_path` until 200; raise ServiceStartError with the log tail if not."""
        proc = self._require_proc()
        deadline = time.monotonic() + (self.startup_timeout if timeout is None else timeout)
        last = "no answer yet"
        with httpx.Client(timeout=5.0) as client:
            while True:
                code = proc.poll()
                if code is not None:
                    raise ServiceStartError(
                        f"{self.module} exited with code {code} before it was ready\n"
                        f"{self._tail_block()}"
                    )
                try:
                    response = client.get(f"{self.url}{self.ready_path}")
                    if response.status_code == 200:
                        return
                    last = f"HTTP {response.status_code}: {response.text[:200]}"
                except httpx.HTTPError as exc:
                    last = f"{exc.__class__.__name__}: {exc}"
                if time.monotonic() >= deadline:
                    raise ServiceStartError(
                        f"{self.module} not ready after {timeout or self.startup_timeout:.0f}s "
                        f"(last: {last})\n{self._tail_block()}"
                    )
                time.sleep(POLL_INTERVAL_S)

    def wait_exit(self, timeout: float = 60.0) -> int:
        """Wait for the process to exit by itself; its return code (raise if it does not)."""
        proc = self._require_proc()
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ServiceStartError(
                f"{self.module} still running after {timeout:.0f}s\n{self._tail_block()}"
            ) from None

    def stop(self) -> int | None:
        """SIGTERM, wait up to stop_timeout, then SIGKILL. Returns the exit code."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(timeout=self.stop_timeout)
        return proc.returncode

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    # --- logs ------------------------------------------------------------------------

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        """The last `lines` lines the process wrote (stdout and stderr together)."""
        return "\n".join(self.log_text().splitlines()[-lines:])

    def _tail_block(self, lines: int = 60) -> str:
        return f"--- last {lines} lines of {self.log_path} ---\n{self.log_tail(lines)}"

    def _require_proc(self) -> subprocess.Popen[bytes]:
        if self.proc is None:
            raise RuntimeError(f"{self.module} has not been started")
        return self.proc

    def __repr__(self) -> str:
        state = "not started" if self.proc is None else f"pid {self.proc.pid}"
        return f"ServiceProcess({self.module!r}, {self.url}, {state})"


@contextmanager
def run_services(*services: ServiceProcess) -> Iterator[tuple[ServiceProcess, ...]]:
    """Start all services at once, wait until every one is ready, stop them all after.

    Loading overlaps, which saves wall time when each spends seconds building models.
    """
    try:
        for service in services:
            service.wait_ready_on_start = False
            service.start()
        for service in services:
            service.wait_ready()
        yield services
    finally:
        for service in services:
            service.stop()
