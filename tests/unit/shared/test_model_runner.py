"""Batch buckets: padded calls answer like unpadded ones, and warmed buckets build no
graph after ready (shared.models.ModelRunner)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from shared.models import ModelRunner, batch_buckets


def _model() -> Any:
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,), name="x")
    hidden = keras.layers.Dense(16, activation="gelu")(inputs)
    return keras.Model(inputs, keras.layers.Dense(3)(hidden))


def test_buckets_are_powers_of_two_up_to_the_largest_call() -> None:
    assert batch_buckets(1) == (1,)
    assert batch_buckets(8) == (1, 2, 4, 8)
    assert batch_buckets(6) == (1, 2, 4, 6)
    assert batch_buckets(16) == (1, 2, 4, 8, 16)


@pytest.mark.parametrize("xla", [False, True])
def test_padded_calls_match_solo_and_build_nothing_after_ready(xla: bool) -> None:
    x = np.random.default_rng(0).standard_normal((11, 6)).astype(np.float32)
    plain = ModelRunner(_model(), xla=xla)
    bucketed = ModelRunner(_model(), xla=xla, buckets=(1, 2, 4), example=x[:1])
    bucketed.warm_buckets()
    bucketed.mark_ready()
    solo = np.concatenate([plain(x[i : i + 1]) for i in range(len(x))])
    for batch in (1, 3, 4, 11):  # 3 pads to 4; 11 runs as 4 + 4 + 3 (padded to 4)
        out = bucketed(x[:batch])
        assert out.shape == (batch, 3)
        # The project's batched-vs-solo tolerance (tests/integration/services/
        # test_diffusion_batching.py): 1e-4 of the largest magnitude.
        assert float(np.abs(out - solo[:batch]).max()) <= 1e-4 * float(np.abs(solo).max())
    assert bucketed.builds_after_ready == {"trace": 0, "xla_compile": 0}


def test_a_shape_first_seen_after_ready_is_counted() -> None:
    x = np.random.default_rng(1).standard_normal((5, 6)).astype(np.float32)
    runner = ModelRunner(_model(), xla=True)  # no buckets: every batch size is a shape
    runner(x[:1])
    runner.mark_ready()
    runner(x[:1])
    assert runner.builds_after_ready["xla_compile"] == 0
    runner(x[:3])
    runner(x[:5])
    assert runner.builds_after_ready["xla_compile"] == 2
    assert runner.builds_after_ready["trace"] >= 1  # the shape-relaxed retrace
