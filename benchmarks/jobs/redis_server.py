"""A throwaway redis-server on a free port for the benchmark (Debian's `redis-server`,
or `valkey-server`), with its data in a temporary directory."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from shared.service_process import free_port

# appendfsync values redis-server accepts: "everysec" is Redis's own default once the
# append-only file is on (a background fsync each second); "always" fsyncs every write.
FSYNC_MODES = ("everysec", "always", "no")


def redis_server_binary() -> str:
    binary = shutil.which("redis-server") or shutil.which("valkey-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (Debian: apt-get install redis-server)")
    return binary


def redis_version(binary: str) -> str:
    """`7.0.15` from `Redis server v=7.0.15 sha=...` (or the whole line if it differs)."""
    line = subprocess.run(
        [binary, "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    for word in line.split():
        if word.startswith("v="):
            return word[2:]
    return line


class RedisServer:
    """`with RedisServer() as server: ... server.url ...`: started, then stopped and its
    directory removed."""

    def __init__(self, fsync: str = "everysec") -> None:
        if fsync not in FSYNC_MODES:
            raise ValueError(f"appendfsync must be one of {FSYNC_MODES}, not {fsync!r}")
        self.binary = redis_server_binary()
        self.version = redis_version(self.binary)
        self.fsync = fsync
        self.port = 0
        self.directory: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def settings(self) -> str:
        return f"append-only file on, appendfsync {self.fsync}, no RDB snapshots"

    def __enter__(self) -> RedisServer:
        self.directory = Path(tempfile.mkdtemp(prefix="sdserve-jobs-bench-redis-"))
        self.port = free_port()
        command = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", self.fsync,
            "--loglevel", "warning",
            "--logfile", str(self.directory / "redis.log"),
        ]  # fmt: skip
        self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while not self.ping():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = (self.directory / "redis.log").read_text(errors="replace")
                self.__exit__(None, None, None)
                raise RuntimeError(f"redis-server did not start:\n{log[-2000:]}")
            time.sleep(0.05)
        return self

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None
