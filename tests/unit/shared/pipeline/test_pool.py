"""A stage's replica pool: names that resolve to several addresses are one replica each
and are followed as they change; calls go to the least-loaded replica; a full one is
skipped for its Retry-After and a stage is refused only when every replica is full."""

from __future__ import annotations

import asyncio
import time

import pytest

from shared.config import Settings
from shared.errors import QueueFull, UpstreamUnavailable
from shared.pipeline.pool import ReplicaPool, parse_urls

SETTINGS = Settings(model="tiny", resolve_interval_s=60)
# Addresses from TEST-NET-1 (RFC 5737): nothing is ever sent to them here.
ADDRESSES = {"first": ["192.0.2.1", "192.0.2.2"], "then": ["192.0.2.2", "192.0.2.3"]}


def test_a_list_of_urls_is_one_replica_each() -> None:
    pool = ReplicaPool("diffusion", "http://127.0.0.1:8002, http://127.0.0.1:8012/", SETTINGS)
    assert list(pool.replicas) == ["http://127.0.0.1:8002", "http://127.0.0.1:8012"]


@pytest.mark.parametrize("bad", ["", "ftp://x:1", "127.0.0.1:8002", " , "])
def test_bad_url_lists_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_urls(bad)


def test_a_name_with_several_addresses_is_followed_as_they_change() -> None:
    answer = {"now": ADDRESSES["first"]}

    async def resolve(host: str, port: int) -> list[str]:
        assert (host, port) == ("diffusion.sdserve.svc", 8002)
        return answer["now"]

    async def main() -> None:
        pool = ReplicaPool(
            "diffusion", "http://diffusion.sdserve.svc:8002", SETTINGS, resolver=resolve
        )
        await pool.refresh()
        assert sorted(pool.replicas) == ["http://192.0.2.1:8002", "http://192.0.2.2:8002"]
        kept = pool.replicas["http://192.0.2.2:8002"]
        assert kept.client.headers["host"] == "diffusion.sdserve.svc:8002"
        kept.in_flight = 3
        gone = pool.replicas["http://192.0.2.1:8002"]
        answer["now"] = ADDRESSES["then"]
        await pool.refresh()  # not yet: within resolve_interval_s
        assert "http://192.0.2.1:8002" in pool.replicas
        await pool.refresh(force=True)
        assert sorted(pool.replicas) == ["http://192.0.2.2:8002", "http://192.0.2.3:8002"]
        assert pool.replicas["http://192.0.2.2:8002"] is kept  # its count and pool survive
        assert gone.client.is_closed  # nothing was in flight on the one that went
        await pool.close()

    asyncio.run(main())


def test_a_loopback_name_is_one_replica() -> None:
    async def resolve(host: str, port: int) -> list[str]:
        return ["127.0.0.1", "::1"]

    async def main() -> None:
        pool = ReplicaPool("decoder", "http://localhost:8003", SETTINGS, resolver=resolve)
        await pool.refresh(force=True)
        assert list(pool.replicas) == ["http://localhost:8003"]
        await pool.close()

    asyncio.run(main())


def test_calls_go_to_the_least_loaded_and_full_ones_are_skipped() -> None:
    async def main() -> None:
        pool = ReplicaPool("diffusion", "http://127.0.0.1:1,http://127.0.0.1:2", SETTINGS)
        one, two = pool.replicas.values()
        one.in_flight, two.in_flight = 2, 1
        assert pool.pick(set()) is two
        assert pool.pick({two.url}) is one
        two.skip("full", 5)
        assert pool.pick(set()) is one
        pool.admit()  # one still has room
        one.skip("full", 3)
        with pytest.raises(QueueFull) as refused:
            pool.admit()
        assert refused.value.retry_after_s == 3  # the soonest a replica has room again
        one.skip_until = two.skip_until = 0
        one.went_down()
        two.went_down()
        two.went_down()  # down twice: a longer backoff
        # Every untried replica down: the one due back soonest is tried anyway.
        assert pool.pick(set()) is one
        assert pool.pick({one.url}) is two
        with pytest.raises(UpstreamUnavailable):
            pool.pick({one.url, two.url})
        # A readiness probe that finds one ready again ends its skip at once.
        two.ready_again()
        assert not two.skipped(time.monotonic())
        await pool.close()

    asyncio.run(main())
