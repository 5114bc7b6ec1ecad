"""Local stages: start-up warm-up (the tiny decoder, the quickest stage to build)."""

from __future__ import annotations

import numpy as np
import pytest

from shared.config import Settings, Size
from shared.stages import LocalDecoder, make_decoder

SIZES = [(64, 64), (128, 64)]


def _traced(stage: LocalDecoder, size: Size) -> bool:
    """Whether Keras has traced the decoder's predict function at `size`."""
    assert stage.models is not None
    return stage.models.decoder[size].model.predict_function is not None


@pytest.mark.parametrize("warm_up", [True, False])
def test_warm_up_traces_every_size_before_serving_only_when_on(warm_up: bool) -> None:
    stage = make_decoder(Settings(model="tiny", sizes=SIZES, warm_up=warm_up))
    try:
        stage.load()
        assert [_traced(stage, size) for size in SIZES] == [warm_up] * len(SIZES)
        # Off, a size is traced by its first request instead, and serves the same.
        latent = np.zeros((1, 16, 16, 4), np.float32)
        models = stage.models
        assert models is not None
        images = stage.worker.run_blocking(lambda: stage.decode_sync(models, latent, (64, 64)))
        assert images.shape == (1, 64, 64, 3)
        assert _traced(stage, (64, 64))
    finally:
        stage.close()
