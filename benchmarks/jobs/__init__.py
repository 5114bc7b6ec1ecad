"""Jobs benchmark: the job stores, memory and Redis (`python -m benchmarks.jobs`).

Two sections, each measured for both stores (`SDSERVE_JOB_STORE=memory` and a local
redis-server) in alternating turns:

1. store   in this process, the real store classes as the runner and the event streams
           use them: jobs per second through a job's whole life (create, 25 progress
           updates, finish) with 1 and 16 concurrent submitters, and the latency from a
           runner's `update` of a progress event to a subscriber's `events` iterator
           yielding it, with 1 and 32 subscribers on the job.
2. http    two real gateways (`python -m central`, tiny, 64x64, 4 steps), one per store:
           jobs per second for a burst of jobs posted at once and followed on their event
           streams, and the time from POST to the first `progress` event.

`store_bench` and `http_bench` measure, `redis_server` starts the redis-server, `report`
writes jobs.md into --out-dir (default benchmarks/results) next to the raw jobs.json.
"""
