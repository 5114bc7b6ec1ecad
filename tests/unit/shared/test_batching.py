"""The step scheduler with a real DDIM sampler over a small deterministic noise model."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from shared.batching import ModelWorker, StepScheduler
from shared.errors import QueueFull
from shared.noise_schedule import ddim_timesteps, initial_noise
from shared.sampler import Row, sample_step


class RecordingModel:
    """A linear noise predictor that records what each call saw."""

    def __init__(self):
        self.calls: list[list[int]] = []  # per call: the timestep of each row
        self.fail = False

    def step(self, group, rows):
        if self.fail:
            raise RuntimeError("model exploded")
        self.calls.append([int(r.timesteps[r.position]) for r in rows])

        def predict(latent, t_emb, context):
            return (0.1 * latent + context.mean(axis=(1, 2)).reshape(-1, 1, 1, 1)).astype(
                np.float32
            )

        sample_step(predict, rows, batched_cfg=True)


def _rows(n, steps, seed=0):
    return [
        Row(
            latent=initial_noise(seed + i, (4, 4, 4)),
            context=np.full((1, 77, 8), 1.0, np.float32),
            unconditional_context=np.zeros((1, 77, 8), np.float32),
            guidance_scale=7.5,
            timesteps=ddim_timesteps(steps),
        )
        for i in range(n)
    ]


@pytest.fixture
def worker():
    worker = ModelWorker("test", queue_size=100)
    yield worker
    worker.shutdown()


def _scheduler(worker, model, **kwargs):
    kwargs.setdefault("max_rows", 8)
    kwargs.setdefault("queue_size", 16)
    return StepScheduler(worker, model.step, **kwargs)


def test_a_request_joins_at_a_step_boundary_with_its_own_timesteps(worker):
    model = RecordingModel()
    scheduler = _scheduler(worker, model)
    late_rows = _rows(1, 4, seed=10)

    async def main():
        late: list[asyncio.Task] = []

        def on_step(done, total):
            if done == 3 and not late:
                late.append(asyncio.ensure_future(scheduler.run(late_rows, "64x64")))

        first = await scheduler.run(_rows(1, 10), "64x64", on_step)
        await late[0]
        return first

    timing = asyncio.run(main())
    assert timing.compute_ms > 0
    # Solo steps until the new request is queued (the task submitting it runs after the
    # third step), then both rows share every call, each at its own timestep, until the
    # short one is done; then the long one goes on alone.
    assert model.calls == [
        [999], [888], [777], [666],
        [555, 999], [444, 666], [333, 333], [222, 0],
        [111], [0],
    ]  # fmt: skip
    assert scheduler.stats.model_calls == len(model.calls) == 10
    assert all(r.done for r in late_rows)


def test_result_of_a_batched_request_matches_it_served_alone(worker):
    alone_model, batched_model = RecordingModel(), RecordingModel()
    alone = _rows(1, 6, seed=3)
    asyncio.run(_scheduler(worker, alone_model).run(alone, "g"))

    scheduler = _scheduler(worker, batched_model)
    together = _rows(1, 6, seed=3)

    async def main():
        await asyncio.gather(scheduler.run(_rows(2, 9, seed=50), "g"), scheduler.run(together, "g"))

    asyncio.run(main())
    assert max(len(c) for c in batched_model.calls) == 3
    np.testing.assert_allclose(together[0].latent, alone[0].latent, rtol=1e-6, atol=1e-6)


def test_cancelled_request_frees_its_rows_at_the_next_step(worker):
    model = RecordingModel()
    scheduler = _scheduler(worker, model)
    doomed_rows = _rows(2, 50, seed=20)

    async def main():
        doomed = asyncio.ensure_future(scheduler.run(doomed_rows, "g"))

        def on_step(done, total):
            if done == 2:
                doomed.cancel()

        await scheduler.run(_rows(1, 8), "g", on_step)
        with pytest.raises(asyncio.CancelledError):
            await doomed

    asyncio.run(main())
    assert [len(c) for c in model.calls[:2]] == [3, 3]
    assert all(len(c) == 1 for c in model.calls[3:])  # at most one step late
    assert scheduler.stats.cancelled_jobs == 1
    assert not any(r.done for r in doomed_rows)
    assert scheduler.queue_depth == 0


def test_full_queue_refuses_with_queue_full(worker):
    model = RecordingModel()
    scheduler = _scheduler(worker, model, queue_size=2)

    async def main():
        running = [asyncio.ensure_future(scheduler.run(_rows(1, 5), "g")) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(QueueFull) as info:
            await scheduler.run(_rows(1, 5), "g")
        await asyncio.gather(*running)
        return info.value

    error = asyncio.run(main())
    assert error.headers()["Retry-After"]
    assert scheduler.queue_depth == 0


def test_a_failed_model_call_fails_every_request_in_it(worker):
    model = RecordingModel()
    model.fail = True
    scheduler = _scheduler(worker, model)

    async def main():
        return await asyncio.gather(
            scheduler.run(_rows(1, 3), "g"),
            scheduler.run(_rows(1, 3), "g"),
            return_exceptions=True,
        )

    results = asyncio.run(main())
    assert all(isinstance(r, RuntimeError) for r in results)
    assert scheduler.queue_depth == 0


def test_groups_never_share_a_call_and_max_rows_is_respected(worker):
    model = RecordingModel()
    scheduler = _scheduler(worker, model, max_rows=3)
    rows_a, rows_b = _rows(4, 3), _rows(2, 3, seed=9)

    async def main():
        await asyncio.gather(scheduler.run(rows_a, "64x64"), scheduler.run(rows_b, "128x128"))

    asyncio.run(main())
    assert max(len(c) for c in model.calls) == 3
    assert all(r.done for r in rows_a + rows_b)


def test_fair_admission_interleaves_requests(worker):
    model = RecordingModel()
    scheduler = _scheduler(worker, model, max_rows=2, admission="fair")
    big, small = _rows(4, 2), _rows(1, 2, seed=7)

    async def main():
        await asyncio.gather(scheduler.run(big, "g"), scheduler.run(small, "g"))

    asyncio.run(main())
    # fcfs would fill the first call with two rows of `big`; fair takes one of each.
    first_call_rows = model.calls[0]
    assert len(first_call_rows) == 2
    assert small[0].steps_done == 2 and small[0].done


def test_without_continuous_batching_requests_run_one_at_a_time(worker):
    model = RecordingModel()
    scheduler = _scheduler(worker, model, continuous=False)

    async def main():
        await asyncio.gather(
            scheduler.run(_rows(2, 3), "g"), scheduler.run(_rows(1, 3, seed=5), "g")
        )

    asyncio.run(main())
    assert [len(c) for c in model.calls] == [2, 2, 2, 1, 1, 1]


# ---------------------------------------------------------------- dynamic batching


class Doubler:
    def __init__(self, drop_one=False, fail=False):
        self.calls: list[tuple[object, list[int]]] = []
        self.drop_one, self.fail = drop_one, fail

    def __call__(self, group, items):
        self.calls.append((group, list(items)))
        if self.fail:
            raise RuntimeError("model exploded")
        out = [2 * i for i in items]
        return out[:-1] if self.drop_one else out


def _batcher(worker, model, **kwargs):
    from shared.batching import DynamicBatcher

    kwargs.setdefault("max_batch", 8)
    kwargs.setdefault("max_wait_s", 0.05)
    kwargs.setdefault("queue_size", 16)
    return DynamicBatcher(worker, model, **kwargs)


def test_concurrent_requests_share_one_call_and_get_their_own_slice(worker):
    model = Doubler()
    batcher = _batcher(worker, model)

    async def main():
        return await asyncio.gather(
            batcher.submit([1, 2]), batcher.submit([3]), batcher.submit([4, 5, 6])
        )

    results = asyncio.run(main())
    assert [r[0] for r in results] == [[2, 4], [6], [8, 10, 12]]
    assert model.calls == [(None, [1, 2, 3, 4, 5, 6])]
    assert batcher.stats.rows_per_call == [6]


def test_max_batch_splits_and_groups_never_mix(worker):
    model = Doubler()
    batcher = _batcher(worker, model, max_batch=3)

    async def main():
        return await asyncio.gather(
            batcher.submit([1, 2], "a"), batcher.submit([3, 4], "a"), batcher.submit([5], "b")
        )

    results = asyncio.run(main())
    assert [r[0] for r in results] == [[2, 4], [6, 8], [10]]
    assert all(len(items) <= 3 for _, items in model.calls)
    assert {group for group, _ in model.calls} == {"a", "b"}
    assert all(len({g}) == 1 for g, _ in model.calls)


@pytest.mark.parametrize("model", [Doubler(drop_one=True), Doubler(fail=True)])
def test_a_bad_batch_fails_every_waiter(worker, model):
    batcher = _batcher(worker, model)

    async def main():
        return await asyncio.gather(
            batcher.submit([1]), batcher.submit([2]), return_exceptions=True
        )

    results = asyncio.run(main())
    assert all(isinstance(r, RuntimeError) for r in results)
    if model.drop_one:
        assert "returned 1 outputs for 2 inputs" in str(results[0])


def test_batcher_queue_is_bounded(worker):
    batcher = _batcher(worker, Doubler(), queue_size=1, max_wait_s=0.2)

    async def main():
        first = asyncio.ensure_future(batcher.submit([1]))
        await asyncio.sleep(0)
        with pytest.raises(QueueFull):
            await batcher.submit([2])
        return await first

    assert asyncio.run(main())[0] == [2]
