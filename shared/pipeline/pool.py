"""A stage as a pool of replicas: each with its own connection pool, readiness, in-flight
count and the queue depth it last reported; calls go to the least-loaded one.

The pool is built from a comma-separated list of base URLs. A host name that resolves to
several addresses (a Kubernetes headless Service) is one replica per address, resolved
again every `resolve_interval_s`, so pods that come and go are followed; a name whose
addresses are all loopback ("localhost") is one replica. A replica that refused a call
(503: full, draining, loading) is skipped for its Retry-After; one that could not be
reached is skipped for a short backoff, then tried again.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

import httpx

from shared.config import Settings
from shared.errors import QueueFull, UpstreamUnavailable
from shared.logs import REQUEST_ID_HEADER, current_request_id

QUEUE_DEPTH_HEADER = "X-Queue-Depth"
# How long a replica that could not be reached is left alone (doubling up to the max).
DOWN_BACKOFF_S = 0.5
DOWN_BACKOFF_MAX_S = 5.0
# A replica's reported queue depth says little once this old (it only changes on answers).
REPORT_FRESH_S = 0.5

SkipReason = Literal["full", "draining", "loading", "down"]
# (host, port) -> the addresses the name has now.
Resolver = Callable[[str, int], Awaitable[list[str]]]


async def _getaddrinfo(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


async def _send_request_id(request: httpx.Request) -> None:
    """Carry the gateway request's id to the stage, so its log lines share it."""
    request_id = current_request_id()
    if request_id:
        request.headers[REQUEST_ID_HEADER] = request_id


@dataclass(eq=False)
class Replica:
    """One address of a stage, and what central knows of it."""

    url: str
    client: httpx.AsyncClient
    in_flight: int = 0
    queue_depth: int = 0  # as it last reported (X-Queue-Depth)
    reported_at: float = 0.0
    skip_until: float = 0.0
    skip_reason: SkipReason | None = None
    down_backoff_s: float = DOWN_BACKOFF_S
    served: int = 0

    def load(self) -> int:
        """Its outstanding work: ours in flight, or what it reported, whichever is more
        (the report counts other gateways' requests too, but is as old as our last call,
        so it counts only while fresh)."""
        fresh = time.monotonic() - self.reported_at < REPORT_FRESH_S
        return max(self.in_flight, self.queue_depth if fresh else 0)

    def skipped(self, now: float) -> bool:
        return now < self.skip_until

    def state(self, now: float) -> str:
        return self.skip_reason if self.skipped(now) and self.skip_reason else "ok"

    def skip(self, reason: SkipReason, seconds: float) -> None:
        self.skip_until = time.monotonic() + seconds
        self.skip_reason = reason

    def went_down(self) -> None:
        self.queue_depth = 0
        self.skip("down", self.down_backoff_s)
        self.down_backoff_s = min(DOWN_BACKOFF_MAX_S, self.down_backoff_s * 2)

    def ready_again(self) -> None:
        """Its /readyz said ready: a down or loading skip ends now (a full one runs out)."""
        if self.skip_reason in ("down", "loading"):
            self.skip_until = 0.0

    def answered(self, headers: httpx.Headers) -> None:
        self.down_backoff_s = DOWN_BACKOFF_S
        try:
            self.queue_depth = max(0, int(headers.get(QUEUE_DEPTH_HEADER, "0")))
        except ValueError:
            self.queue_depth = 0
        self.reported_at = time.monotonic()

    def describe(self, now: float) -> dict[str, object]:
        return {
            "url": self.url,
            "state": self.state(now),
            "in_flight": self.in_flight,
            "queue_depth": self.queue_depth,
            "served": self.served,
        }


@dataclass
class _Entry:
    """One comma-separated entry of the configured URL list."""

    url: str
    scheme: str
    host: str
    port: int
    path: str


def parse_urls(urls: str) -> list[_Entry]:
    entries = []
    for raw in (u.strip() for u in urls.split(",")):
        if not raw:
            continue
        parts = urlsplit(raw)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{raw!r} is not an http(s) base URL")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        path = parts.path.rstrip("/")
        entries.append(_Entry(raw.rstrip("/"), parts.scheme, parts.hostname, port, path))
    if not entries:
        raise ValueError("no URL given")
    return entries


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@dataclass
class ReplicaPool:
    """The replicas of one stage."""

    label: str
    urls: str
    settings: Settings
    headers: dict[str, str] = field(default_factory=dict)
    replicas: dict[str, Replica] = field(default_factory=dict)
    retries: Counter[str] = field(default_factory=Counter)
    # How names are looked up: the event loop's getaddrinfo unless given.
    resolver: Resolver | None = None
    _resolved_at: float = -1e9
    _retired: list[Replica] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.entries = parse_urls(self.urls)
        # Until the first resolution, each entry is one replica at its URL as given.
        for entry in self.entries:
            self._add(entry.url)
        self._lock = asyncio.Lock()

    def _add(self, url: str, host_header: str | None = None) -> Replica:
        headers = dict(self.headers)
        if host_header:
            headers["Host"] = host_header
        client = httpx.AsyncClient(
            base_url=url,
            timeout=httpx.Timeout(
                self.settings.read_timeout_s, connect=self.settings.connect_timeout_s
            ),
            headers=headers,
            # Idle connections are dropped before uvicorn's keep-alive closes them, so a
            # request never races the server closing its connection.
            limits=httpx.Limits(
                max_connections=64, max_keepalive_connections=16, keepalive_expiry=2.0
            ),
            event_hooks={"request": [_send_request_id]},
        )
        replica = self.replicas[url] = Replica(url, client)
        return replica

    async def _resolve(self, entry: _Entry) -> list[tuple[str, str | None]]:
        """(replica URL, Host header) for each address of the entry's host."""
        if _is_address(entry.host):
            return [(entry.url, None)]
        try:
            addresses = sorted(set(await (self.resolver or _getaddrinfo)(entry.host, entry.port)))
        except OSError:
            return [(entry.url, None)]  # unresolvable now: calls to it fail as "down"
        if len(addresses) <= 1 or all(ipaddress.ip_address(a).is_loopback for a in addresses):
            return [(entry.url, None)]
        host = f"{entry.host}:{entry.port}"
        return [
            (f"{entry.scheme}://{_bracketed(a)}:{entry.port}{entry.path}", host) for a in addresses
        ]

    async def refresh(self, *, force: bool = False) -> None:
        """Follow the names' addresses (at most every resolve_interval_s)."""
        now = time.monotonic()
        if not force and now - self._resolved_at < self.settings.resolve_interval_s:
            return
        async with self._lock:
            if not force and now - self._resolved_at < self.settings.resolve_interval_s:
                return
            self._resolved_at = now
            found: dict[str, str | None] = {}
            for entry in self.entries:
                found.update(await self._resolve(entry))
            for url in [u for u in self.replicas if u not in found]:
                self._retired.append(self.replicas.pop(url))
            for url, host in found.items():
                if url not in self.replicas:
                    self._add(url, host)
            # A replica gone from the name's addresses keeps its connections only until
            # its calls in flight end (pods come and go for as long as a gateway runs).
            for replica in [r for r in self._retired if r.in_flight == 0]:
                self._retired.remove(replica)
                await replica.client.aclose()

    def pick(self, exclude: set[str]) -> Replica:
        """The least-loaded replica not skipped nor tried (ties: at random). When the only
        untried ones are down, the one due back soonest is tried anyway: a connection
        attempt is cheap, and a lone replica that restarted is then found at once."""
        now = time.monotonic()
        untried = [r for r in self.replicas.values() if r.url not in exclude]
        candidates = [r for r in untried if not r.skipped(now)]
        if not candidates:
            if untried and all(r.skip_reason == "down" for r in untried):
                return min(untried, key=lambda r: r.skip_until)
            raise self.unavailable(exclude)
        loads = [(r.load(), r) for r in candidates]
        least = min(load for load, _ in loads)
        return random.choice([r for load, r in loads if load == least])  # noqa: S311

    def unavailable(self, exclude: set[str]) -> QueueFull | UpstreamUnavailable:
        """The error when no replica can take a call: full (503 + Retry-After) when the
        ones left out are full or busy, else unreachable."""
        now = time.monotonic()
        skipped = [r for r in self.replicas.values() if r.skipped(now)]
        busy = [r for r in skipped if r.skip_reason in ("full", "draining", "loading")]
        if busy:
            wait = min(r.skip_until for r in busy) - now
            return QueueFull(
                f"every {self.label} replica is busy ({len(busy)} of {len(self.replicas)} "
                "refused just now)",
                retry_after_s=max(1, round(wait)),
            )
        return UpstreamUnavailable(
            f"{self.label} stage is unreachable ({len(self.replicas)} replicas, "
            f"{len(exclude)} tried)"
        )

    def admit(self) -> None:
        """Raise QueueFull when every replica said it is full (before any other work)."""
        now = time.monotonic()
        replicas = list(self.replicas.values())
        if replicas and all(r.skipped(now) and r.skip_reason == "full" for r in replicas):
            raise self.unavailable(set())

    def describe(self) -> list[dict[str, object]]:
        now = time.monotonic()
        return [r.describe(now) for r in self.replicas.values()]

    async def close(self) -> None:
        for replica in [*self.replicas.values(), *self._retired]:
            await replica.client.aclose()


def _bracketed(address: str) -> str:
    return f"[{address}]" if ":" in address else address
