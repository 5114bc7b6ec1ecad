"""Local stages: start-up warm-up (on the text encoder, the quickest stage to build)."""

from __future__ import annotations

import pytest

from shared.config import Settings
from shared.pipeline.local.text_encoder import LocalTextEncoder, make_text_encoder


def _traced(stage: LocalTextEncoder) -> bool:
    """Whether Keras has traced the text encoder's predict function."""
    assert stage.models is not None and stage.models.text_encoder is not None
    return stage.models.text_encoder.model.predict_function is not None


@pytest.mark.parametrize("warm_up", [True, False])
def test_warm_up_traces_before_serving_only_when_on(warm_up: bool) -> None:
    stage = make_text_encoder(Settings(model="tiny", warm_up=warm_up))
    try:
        stage.load()
        stage.warm()
        assert _traced(stage) == warm_up
        # Off, the graph is traced by the first request instead, which serves the same.
        models = stage.models
        assert models is not None
        encoded = stage.worker.run_blocking(lambda: stage.encode_sync(models, ["a cat"], [""]))
        assert encoded.context.shape == (1, 77, 128)
        assert _traced(stage)
    finally:
        stage.shutdown()
