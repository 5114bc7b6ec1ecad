"""`sd-v1`: keras-cv's Stable Diffusion components, built without weights.

keras-cv's constructors would download weights; we pass `download_weights=False` and let
`shared.weights` load (and sha256-check) the same published files, so nothing is fetched
behind the operator's back and offline deployments work from a directory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.families.base import (
    SD_VAE_PREVIEW,
    Component,
    FamilySpec,
    ModelFamily,
    PublishedWeights,
)

if TYPE_CHECKING:
    import keras

HF_BASE = "https://huggingface.co"
# A prompt keras-cv's published Stable Diffusion weights draw well (v1 and v2).
LIGHTHOUSE_PROMPT = "a lighthouse on a cliff at dusk, oil painting"
V1_WEIGHTS: dict[Component, PublishedWeights] = {
    "text_encoder": PublishedWeights(
        "kcv_encoder.h5",
        f"{HF_BASE}/fchollet/stable-diffusion/resolve/main/kcv_encoder.h5",
        "4789e63e07c0e54d6a34a29b45ce81ece27060c499a709d556c7755b42bb0dc4",
    ),
    "diffusion_model": PublishedWeights(
        "kcv_diffusion_model.h5",
        f"{HF_BASE}/fchollet/stable-diffusion/resolve/main/kcv_diffusion_model.h5",
        "8799ff9763de13d7f30a683d653018e114ed24a6a819667da4f5ee10f9e805fe",
    ),
    "decoder": PublishedWeights(
        "kcv_decoder.h5",
        f"{HF_BASE}/fchollet/stable-diffusion/resolve/main/kcv_decoder.h5",
        "ad350a65cc8bc4a80c8103367e039a3329b4231c2469a1093869a345f55b1962",
    ),
    "image_encoder": PublishedWeights(
        "vae_encoder.h5",
        f"{HF_BASE}/fchollet/stable-diffusion/resolve/main/vae_encoder.h5",
        "c60fb220a40d090e0f86a6ab4c312d113e115c87c40ff75d11ffcf380aab7ebb",
    ),
}


class StableDiffusionV1(ModelFamily):
    spec = FamilySpec(
        name="sd-v1",
        context_dim=768,
        latent_channels=4,
        downsampling_factor=8,
        max_tokens=77,
        size_multiple=128,
        default_sizes=((512, 512),),
        default_guidance_scale=7.5,  # keras-cv's
        example_prompt=LIGHTHOUSE_PROMPT,
        default_weights="pretrained",
        # ComfyUI's SD 1.x previews: they were made for this VAE (sd-v2 shares it).
        preview_map=SD_VAE_PREVIEW,
    )

    def __init__(self) -> None:
        self.published_weights = dict(V1_WEIGHTS)

    def build_text_encoder(self) -> keras.Model:
        from keras_cv.src.models.stable_diffusion.text_encoder import TextEncoder

        return TextEncoder(self.spec.max_tokens, download_weights=False)

    def build_diffusion_model(self, height: int, width: int) -> keras.Model:
        from keras_cv.src.models.stable_diffusion.diffusion_model import DiffusionModel

        return DiffusionModel(height, width, self.spec.max_tokens, download_weights=False)

    def build_decoder(self, height: int, width: int) -> keras.Model:
        from keras_cv.src.models.stable_diffusion.decoder import Decoder

        return Decoder(height, width, download_weights=False)

    def build_image_encoder(self) -> keras.Model:
        from keras_cv.src.models.stable_diffusion.image_encoder import ImageEncoder

        return ImageEncoder(download_weights=False)
