"""`sd-v2`: keras-cv's Stable Diffusion 2.1 components, built without weights."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from shared.families.base import Component, PublishedWeights
from shared.families.sd_v1 import HF_BASE, V1_WEIGHTS, StableDiffusionV1

if TYPE_CHECKING:
    import keras

# SD 2.1 in keras-cv swaps the text encoder and UNet and keeps the v1 VAE.
V2_WEIGHTS: dict[Component, PublishedWeights] = {
    **V1_WEIGHTS,
    "text_encoder": PublishedWeights(
        "text_encoder_v2_1.h5",
        f"{HF_BASE}/ianstenbit/keras-sd2.1/resolve/main/text_encoder_v2_1.h5",
        "985002e68704e1c5c3549de332218e99c5b9b745db7171d5f31fcd9a6089f25b",
    ),
    "diffusion_model": PublishedWeights(
        "diffusion_model_v2_1.h5",
        f"{HF_BASE}/ianstenbit/keras-sd2.1/resolve/main/diffusion_model_v2_1.h5",
        "c31730e91111f98fe0e2dbde4475d381b5287ebb9672b1821796146a25c5132d",
    ),
}


class StableDiffusionV2(StableDiffusionV1):
    # SD 1.x's facts but the name and OpenCLIP's wider context; SD 2.x keeps SD 1.x's VAE,
    # so its previews keep ComfyUI's SD 1.x factors too.
    spec = replace(StableDiffusionV1.spec, name="sd-v2", context_dim=1024)

    def __init__(self) -> None:
        self.published_weights = dict(V2_WEIGHTS)

    def build_text_encoder(self) -> keras.Model:
        from keras_cv.src.models.stable_diffusion.text_encoder import TextEncoderV2

        return TextEncoderV2(self.spec.max_tokens, download_weights=False)

    def build_diffusion_model(self, height: int, width: int) -> keras.Model:
        from keras_cv.src.models.stable_diffusion.diffusion_model import DiffusionModelV2

        return DiffusionModelV2(height, width, self.spec.max_tokens, download_weights=False)
