"""Local stages: start-up warm-up (on the text encoder, the quickest stage to build), and
the diffusion stage following what its loaded UNet predicts."""

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


@pytest.mark.parametrize("predicts", ["epsilon", "v_prediction"])
def test_diffusion_rows_follow_what_the_loaded_unet_predicts(predicts: str) -> None:
    """The prediction type travels from the loaded UNet's weights to every row sampled."""
    import numpy as np

    from shared.execution import resolve_strategy
    from shared.families import get_family
    from shared.models import LoadedModels
    from shared.pipeline.local.diffusion import make_diffusion
    from shared.pipeline.types import DenoiseParams
    from shared.weights import WeightsOrigin

    settings = Settings(model="tiny", weights="random")
    stage = make_diffusion(settings)
    try:
        origin = WeightsOrigin("file", "unet.safetensors", "0" * 64, prediction_type=predicts)
        stage.models = LoadedModels(
            family=get_family("tiny"),
            strategy=resolve_strategy(settings),
            sizes=list(settings.sizes),
            origins={"diffusion_model": origin},
        )
        context = np.zeros((1, 77, 128), np.float32)
        params = DenoiseParams(width=64, height=64, steps=2, guidance_scale=5.0, n=2)
        rows = stage.make_rows(context, context, params, [1, 2])
        assert [row.prediction_type for row in rows] == [predicts, predicts]
    finally:
        stage.shutdown()
