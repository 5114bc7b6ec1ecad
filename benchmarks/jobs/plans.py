"""How much each section measures, in full and in --quick mode."""

from __future__ import annotations

from benchmarks.harness import Record

STORE: Record = {
    # Lifecycle: a job of `steps` progress updates; closed loops of `submitters`
    # for `duration_s` per round and store.
    "steps": 25,
    "submitters": [1, 16],
    "duration_s": 1.0,
    # Latency: `events` progress updates to `subscribers` per round and store,
    # `gap_s` apart once all have the last one.
    "subscribers": [1, 32],
    "events": 50,
    "gap_s": 0.002,
    "rounds": 5,
}
HTTP: Record = {
    "size": "64x64",
    "steps": 4,
    # Per round and gateway: `sequential` jobs one at a time, then one burst.
    "sequential": 8,
    "burst": 32,
    "rounds": 5,
}

# --quick: the same jobs, fewer and shorter rounds.
PLANS: dict[str, dict[str, Record]] = {
    "full": {"store": STORE, "http": HTTP},
    "quick": {
        "store": {**STORE, "duration_s": 0.5, "events": 25, "rounds": 2},
        "http": {**HTTP, "sequential": 4, "burst": 16, "rounds": 2},
    },
}
