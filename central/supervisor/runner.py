"""The running supervisor: start the children, watch them, restart them, stop them.

The rules it follows are described in :mod:`central.supervisor`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import httpx

from central.supervisor.output import PrefixedOutput
from central.supervisor.specs import EX_CONFIG, ChildSpec, RestartPolicy, describe_exit

_TAIL_LINES = 8
_OUTPUT_DRAIN_S = 2.0
_PROGRESS_EVERY_S = 15.0
# The same signal again within this time is the same stop request, not a second one.
SAME_SIGNAL_WINDOW_S = 1.0


class NotReadyError(Exception):
    """Some children did not become ready before the deadline; the message names them."""

    def __init__(self, message: str, names: Sequence[str]) -> None:
        super().__init__(message)
        self.names = list(names)


def _check_stop_order(specs: Sequence[ChildSpec]) -> None:
    """Every ``stop_after`` names another child, and no child waits for itself."""
    after = {spec.name: tuple(spec.stop_after) for spec in specs}
    for name, others in after.items():
        unknown = [other for other in others if other not in after or other == name]
        if unknown:
            raise ValueError(f"{name}: stop_after names no other child: {unknown}")
    for name in after:  # walk each chain; a name seen twice is a cycle
        seen, todo = {name}, list(after[name])
        while todo:
            other = todo.pop()
            if other == name:
                raise ValueError(f"stop_after has a cycle through {name}")
            if other not in seen:
                seen.add(other)
                todo.extend(after[other])


def _signal_group(pid: int, signum: int) -> None:
    """Signal a child's process group (its pid: each child leads its own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


@dataclass
class _Child:
    spec: ChildSpec
    process: asyncio.subprocess.Process | None = None
    pids: list[int] = field(default_factory=list)
    restarts: int = 0
    started_at: float = 0.0
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    ready_status: str = "not started"
    last_exit: str | None = None
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=_TAIL_LINES))
    pump: asyncio.Task[None] | None = None
    # Set once the child is stopped for good (its supervising task is over).
    finished: asyncio.Event = field(default_factory=asyncio.Event)


class Supervisor:
    """Run, watch, restart and stop a set of child processes (see :mod:`central.supervisor`).

    Typical use is ``exit_code = asyncio.run(Supervisor(specs).run(ready_timeout_s=600,
    on_ready=print_banner))``; :meth:`start`, :meth:`wait_ready` and :meth:`stop` are
    there for finer control (tests use them).
    """

    def __init__(
        self,
        specs: Sequence[ChildSpec],
        *,
        policy: RestartPolicy | None = None,
        color: bool | None = None,
        out: TextIO | None = None,
        grace_s: float = 10.0,
        poll_interval_s: float = 0.25,
    ) -> None:
        names = [spec.name for spec in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"child names must be unique: {names}")
        if not specs:
            raise ValueError("nothing to supervise")
        _check_stop_order(specs)
        self.policy = policy or RestartPolicy()
        self.grace_s = grace_s
        self.poll_interval_s = poll_interval_s
        self._output = PrefixedOutput(names, out if out is not None else sys.stdout, color=color)
        self._children = {spec.name: _Child(spec) for spec in specs}
        self._stopping = asyncio.Event()
        self._kill_now = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._client: httpx.AsyncClient | None = None
        self._signals_seen = 0
        self._first_signal: tuple[int, float] | None = None  # (signum, monotonic time)
        self.fatal: str | None = None

    # ------------------------------------------------------------------ output

    def write(self, text: str) -> None:
        """Write text as is (no prefix), e.g. a banner; flushed at once."""
        self._output.write(text)

    def log(self, message: str, *, error: bool = False) -> None:
        """A line from the supervisor itself, in the same prefixed column."""
        self._output.log(message, error=error)

    # ------------------------------------------------------------- inspection

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def pids(self) -> dict[str, int | None]:
        """The pid of each child's current process (None while it is not running)."""
        return {
            name: (c.process.pid if c.process and c.process.returncode is None else None)
            for name, c in self._children.items()
        }

    def spawned_pids(self, name: str) -> list[int]:
        """Every pid this child has had, oldest first."""
        return list(self._children[name].pids)

    def restart_count(self, name: str) -> int:
        return self._children[name].restarts

    def is_ready(self, name: str) -> bool:
        return self._children[name].ready.is_set()

    # ------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Start every child (returns at once; they are watched in the background)."""
        if self._tasks:
            raise RuntimeError("already started")
        self._client = httpx.AsyncClient(timeout=2.0, trust_env=False)
        self._tasks = [
            asyncio.create_task(self._supervise(child), name=f"supervise {name}")
            for name, child in self._children.items()
        ]

    def request_stop(self) -> None:
        """Ask every child to stop; :meth:`stop` waits for it."""
        self._stopping.set()

    def kill_now(self) -> None:
        """Skip the grace period: SIGKILL whatever is still running."""
        self._stopping.set()
        self._kill_now.set()

    async def stop(self) -> None:
        """Stop every child (SIGTERM, grace period, SIGKILL) and wait until all are gone."""
        self._stopping.set()
        if self._tasks:
            results = await asyncio.gather(*self._tasks, return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException) and not isinstance(
                    result, asyncio.CancelledError
                ):
                    self.log(f"supervisor error: {result!r}", error=True)
        for child in self._children.values():  # safety net: nothing may outlive stop()
            proc = child.process
            if proc is not None and proc.returncode is None:
                _signal_group(proc.pid, signal.SIGKILL)
                await proc.wait()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def wait_stopped(self) -> None:
        """Wait until a stop is requested (signal, fatal child, or request_stop)."""
        await self._stopping.wait()

    async def wait_ready(self, timeout_s: float | None = None) -> bool:
        """Wait until every child is ready.

        Returns True when all are ready, False when the supervisor began stopping first
        (a signal or a fatal child: see :attr:`fatal`). Raises NotReadyError, naming the
        children that are not ready and why, when ``timeout_s`` passes (None: no limit).
        """
        start = time.monotonic()
        next_progress = start + _PROGRESS_EVERY_S
        while True:
            if self._stopping.is_set():
                return False
            waiting = [c for c in self._children.values() if not c.ready.is_set()]
            if not waiting:
                return True
            now = time.monotonic()
            if timeout_s is not None and now - start >= timeout_s:
                detail = "; ".join(self._why_not_ready(c) for c in waiting)
                noun = "part is" if len(waiting) == 1 else "parts are"
                raise NotReadyError(
                    f"not ready after {timeout_s:g} s: {len(waiting)} {noun} not ready: {detail}",
                    [c.spec.name for c in waiting],
                )
            if now >= next_progress:
                next_progress = now + _PROGRESS_EVERY_S
                self.log(
                    f"still waiting ({now - start:.0f} s) for: "
                    + "; ".join(self._why_not_ready(c) for c in waiting)
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), 0.05)

    def _why_not_ready(self, child: _Child) -> str:
        parts = [child.ready_status]
        if child.last_exit:
            parts.append(f"restarted {child.restarts} times, last {child.last_exit}")
        return f"{child.spec.name} ({', '.join(parts)})"

    async def run(
        self,
        *,
        ready_timeout_s: float | None = None,
        on_ready: Callable[[], None] | None = None,
        handle_signals: bool = True,
    ) -> int:
        """Start, wait until ready (then call ``on_ready``), supervise until a signal.

        Returns 0 after a requested stop (Ctrl-C, SIGTERM, SIGHUP), 1 when a child was
        fatal or the parts were not ready in time. Always stops every child first.
        """
        loop = asyncio.get_running_loop()
        installed: list[int] = []
        if handle_signals:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                try:
                    loop.add_signal_handler(sig, self._on_signal, int(sig))
                except (ValueError, RuntimeError, NotImplementedError):
                    continue  # not the main thread, or no signal support
                installed.append(int(sig))
        code = 0
        try:
            await self.start()
            try:
                if await self.wait_ready(ready_timeout_s) and on_ready is not None:
                    on_ready()
            except NotReadyError as exc:
                self.log(f"{exc}; stopping", error=True)
                code = 1
                self.request_stop()
            await self._stopping.wait()
        finally:
            await self.stop()
            for signum in installed:
                loop.remove_signal_handler(signum)
        if self.fatal:
            self.log(f"{self.fatal}\nstopped everything", error=True)
            return 1
        self.log("stopped")
        return code

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        now = time.monotonic()
        first = self._first_signal
        if first is not None and first[0] == signum and now - first[1] < SAME_SIGNAL_WINDOW_S:
            # One stop request that arrived twice: SIGTERM to `make up`'s process group
            # reaches us from the group and once more from make, which passes SIGTERM on
            # to its children. Only the signal sent again later means "kill at once". (The
            # children run in sessions of their own: the group's signal never reaches them.)
            return
        self._signals_seen += 1
        if self._signals_seen == 1:
            self._first_signal = (signum, now)
            self.log(f"received {name}: stopping (send it again to kill at once)")
            self.request_stop()
        else:
            self.log(f"received {name} again: killing")
            self.kill_now()

    # ------------------------------------------------------------ one child

    def _spawn_env(self, spec: ChildSpec) -> dict[str, str]:
        env = dict(os.environ if spec.env is None else spec.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def _fail(self, message: str) -> None:
        if self.fatal is None:
            self.fatal = message
            self.log(message.splitlines()[0], error=True)
            self.log("stopping everything")
        self.request_stop()

    async def _supervise(self, child: _Child) -> None:
        try:
            await self._supervise_loop(child)
        except Exception as exc:  # a bug here must still stop everything cleanly
            self._fail(f"FATAL: supervisor error while running {child.spec.name}: {exc!r}")
        finally:
            child.finished.set()

    async def _supervise_loop(self, child: _Child) -> None:
        policy = self.policy
        backoff = policy.initial_backoff_s
        streak, streak_code = 0, None
        name = child.spec.name
        while not self._stopping.is_set():
            try:
                proc = await asyncio.create_subprocess_exec(
                    *child.spec.argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT,
                    env=self._spawn_env(child.spec),
                    cwd=child.spec.cwd,
                    start_new_session=True,
                )
            except OSError as exc:
                self._fail(f"cannot start {name} ({' '.join(child.spec.argv)}): {exc}")
                return
            child.process = proc
            child.pids.append(proc.pid)
            child.tail.clear()
            child.started_at = time.monotonic()
            child.ready.clear()
            child.ready_status = "starting"
            assert proc.stdout is not None
            child.pump = asyncio.create_task(self._output.pump(name, proc.stdout, child.tail))
            self.log(f"started {name} (pid {proc.pid})")
            watcher = asyncio.create_task(self._watch_ready(child, proc))
            exited = asyncio.create_task(proc.wait())
            stop = asyncio.create_task(self._stopping.wait())
            try:
                await asyncio.wait({exited, stop}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.cancel()
                watcher.cancel()
            if not exited.done():
                await self._terminate(child, proc)
                return
            returncode = proc.returncode if proc.returncode is not None else -1
            runtime = time.monotonic() - child.started_at
            child.ready.clear()
            await self._cleanup(child, proc)
            if self._stopping.is_set():
                return
            how = describe_exit(returncode)
            child.last_exit = how
            child.ready_status = f"{how} after {runtime:.1f} s"
            if runtime >= policy.healthy_after_s:
                backoff = policy.initial_backoff_s
            if runtime < policy.early_exit_s:
                streak = streak + 1 if returncode == streak_code else 1
                streak_code = returncode
            else:
                streak, streak_code = 0, None
            if returncode == EX_CONFIG or streak >= policy.fatal_early_exits:
                self._fail(self._fatal_message(child, how, streak, returncode))
                return
            self.log(
                f"{name} {how} after {runtime:.1f} s; "
                f"restarting in {backoff:g} s (restart #{child.restarts + 1})",
                error=True,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), backoff)
            if self._stopping.is_set():
                return
            child.restarts += 1
            backoff = min(backoff * 2, policy.max_backoff_s)

    def _fatal_message(self, child: _Child, how: str, streak: int, returncode: int) -> str:
        name = child.spec.name
        if returncode == EX_CONFIG:
            why = f"{name} {how} (EX_CONFIG: a configuration error)"
        else:
            why = (
                f"{name} {how} within {self.policy.early_exit_s:g} s of starting "
                f"{streak} times in a row: this looks like a configuration error "
                "(a bad setting, a port in use, a missing module), which restarting "
                "will not fix"
            )
        tail = "\n".join(f"    {line}" for line in child.tail)
        last = f"\nlast output of {name}:\n{tail}" if tail else ""
        return f"FATAL: {why}.{last}"

    async def _watch_ready(self, child: _Child, proc: asyncio.subprocess.Process) -> None:
        url = child.spec.ready_url
        if url is None:
            child.ready_status = "running"
            child.ready.set()
            return
        assert self._client is not None
        while proc.returncode is None:
            try:
                response = await self._client.get(url)
            except httpx.ConnectError:
                child.ready_status = f"{url}: connection refused (not listening yet)"
            except httpx.HTTPError as exc:
                child.ready_status = f"{url}: {exc.__class__.__name__} {exc}".rstrip()
            else:
                if response.status_code == 200:
                    took = time.monotonic() - child.started_at
                    child.ready_status = "ready"
                    child.ready.set()
                    self.log(f"{child.spec.name} is ready ({took:.1f} s)")
                    return
                body = " ".join(response.text.split())[:200]
                child.ready_status = f"{url} answered {response.status_code} {body}".rstrip()
            await asyncio.sleep(self.poll_interval_s)

    async def _wait_for_stop_after(self, child: _Child, proc: asyncio.subprocess.Process) -> None:
        """Keep the child running until those it outlives have exited (or a kill, or it
        exits itself); each of them is bounded by its own grace period."""
        others = [self._children[name].finished for name in child.spec.stop_after]
        if not others or all(event.is_set() for event in others):
            return
        self.log(f"{child.spec.name} stops after {', '.join(child.spec.stop_after)}")
        waits: set[asyncio.Future[Any]] = {
            asyncio.gather(*(event.wait() for event in others)),
            asyncio.ensure_future(self._kill_now.wait()),
            asyncio.ensure_future(proc.wait()),
        }
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    async def _terminate(self, child: _Child, proc: asyncio.subprocess.Process) -> None:
        await self._wait_for_stop_after(child, proc)
        if proc.returncode is None:
            if self._kill_now.is_set():
                _signal_group(proc.pid, signal.SIGKILL)
            else:
                _signal_group(proc.pid, signal.SIGTERM)
            exited = asyncio.ensure_future(proc.wait())
            kill = asyncio.ensure_future(self._kill_now.wait())
            try:
                await asyncio.wait(
                    {exited, kill}, timeout=self.grace_s, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                kill.cancel()
            if proc.returncode is None:
                if not self._kill_now.is_set():
                    self.log(
                        f"{child.spec.name} did not stop within {self.grace_s:g} s; killing it"
                    )
                _signal_group(proc.pid, signal.SIGKILL)
            await exited
        await self._cleanup(child, proc)

    async def _cleanup(self, child: _Child, proc: asyncio.subprocess.Process) -> None:
        """After the child exited: kill what is left of its group, drain its output."""
        _signal_group(proc.pid, signal.SIGKILL)
        if child.pump is not None:
            try:
                await asyncio.wait_for(child.pump, _OUTPUT_DRAIN_S)
            except TimeoutError:
                pass  # someone outside the group holds the pipe; wait_for cancelled it
            except Exception as exc:  # a broken pipe must not stop the supervisor
                self.log(f"lost output of {child.spec.name}: {exc!r}")
            child.pump = None
