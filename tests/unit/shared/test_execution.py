"""The execution strategy per component: `auto` from the table, explicit settings for
every component."""

from __future__ import annotations

from shared.config import Settings
from shared.execution import COMPONENTS, ComponentStrategy, resolve_strategy


def test_auto_takes_each_components_measured_choice() -> None:
    strategy = resolve_strategy(Settings(model="sd-v1", weights="random"), device="cpu")
    assert strategy.for_component("decoder") == ComponentStrategy(xla=True, precision="float32")
    assert strategy.for_component("text_encoder").xla
    assert strategy.for_component("diffusion_model") == ComponentStrategy(False, "float32")
    assert not strategy.batched_cfg
    assert strategy.as_dict()["components"]["decoder"] == {"xla": True, "precision": "float32"}


def test_explicit_settings_apply_to_every_component() -> None:
    settings = Settings(
        model="sd-v1", weights="random", xla="off", precision="mixed_bfloat16", batch_buckets=False
    )
    strategy = resolve_strategy(settings, device="cpu")
    for component in COMPONENTS:
        assert strategy.for_component(component) == ComponentStrategy(False, "mixed_bfloat16")
    assert not strategy.buckets


def test_on_a_gpu_sd_v2_keeps_its_unet_in_float32() -> None:
    """SD 2.x's attention overflows float16; its text encoder and decoder do not."""
    strategy = resolve_strategy(Settings(model="sd-v2", weights="random"), device="gpu")
    assert strategy.for_component("diffusion_model") == ComponentStrategy(True, "float32")
    assert strategy.for_component("text_encoder") == ComponentStrategy(True, "mixed_float16")
    assert strategy.for_component("decoder").precision == "mixed_float16"
    sd_v1 = resolve_strategy(Settings(model="sd-v1", weights="random"), device="gpu")
    assert sd_v1.for_component("diffusion_model").precision == "mixed_float16"
    forced = Settings(model="sd-v2", weights="random", precision="mixed_float16")
    assert resolve_strategy(forced, device="gpu").for_component("diffusion_model").precision == (
        "mixed_float16"
    )
