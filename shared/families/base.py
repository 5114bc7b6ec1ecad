"""The one interface every model family implements.

A family is a set of Keras model builders plus the constants the stages agree on. The
builders return *uninitialised-weights* models (seeded random init); `shared.weights`
then loads or keeps those weights. Builders never download anything.

Model contracts (all float32 unless the execution strategy says otherwise):

- text encoder: {"tokens": int32 (B, max_tokens), "positions": int32 (B, max_tokens)}
  -> context (B, max_tokens, context_dim)
- diffusion model: {"latent": (B, h, w, C), "timestep_embedding": (B, 320),
  "context": (B, max_tokens, context_dim)} -> predicted noise (B, h, w, C)
- decoder: latent (B, h, w, C) -> image in [-1, 1] (B, h*f, w*f, 3)
- image encoder: image in [-1, 1] (B, H, W, 3) -> scaled latent (B, H/f, W/f, C)

where h = H / f, f = downsampling factor, C = latent channels. The decoder and image
encoder are fully convolutional, so one built model serves every configured size.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from shared.sampler_names import DEFAULT_SAMPLER, SamplerName

if TYPE_CHECKING:
    import keras

Component = Literal["text_encoder", "diffusion_model", "decoder", "image_encoder"]
COMPONENTS: tuple[Component, ...] = ("text_encoder", "diffusion_model", "decoder", "image_encoder")

TIMESTEP_EMBEDDING_DIM = 320


@dataclass(frozen=True)
class PublishedWeights:
    """A weights file keras-cv publishes: where it lives and the sha256 it must have."""

    filename: str
    url: str
    sha256: str


@dataclass(frozen=True)
class LatentPreviewMap:
    """A cheap latent -> RGB picture: per latent cell, rgb = latent @ matrix + bias.

    The result is in the decoder's range [-1, 1]; the preview is that, mapped to 0-255 on
    the latent grid (shared.progress.latent_preview). `matrix` has one row per latent
    channel, each (r, g, b); it applies to the scaled latent the sampler works on.
    """

    matrix: tuple[tuple[float, float, float], ...]
    bias: tuple[float, float, float] = (0.0, 0.0, 0.0)


# The factors ComfyUI previews SD 1.x latents with (comfy/latent_formats.py, `SD15`: the
# kl-f8 VAE that SD 1.x and 2.x share; no bias), on the scaled latent.
SD_VAE_PREVIEW = LatentPreviewMap(
    matrix=(
        (0.3512, 0.2297, 0.3227),
        (0.3250, 0.4974, 0.2350),
        (-0.2829, 0.1762, 0.2721),
        (-0.2120, -0.2616, -0.7177),
    )
)


@dataclass(frozen=True)
class FamilySpec:
    name: str
    context_dim: int
    latent_channels: int
    downsampling_factor: int
    max_tokens: int
    # Served sizes must be multiples of this (the UNet's total downsampling).
    size_multiple: int
    # (width, height) served when SDSERVE_SIZES is not set.
    default_sizes: tuple[tuple[int, int], ...]
    # Classifier-free guidance for a request that names none.
    default_guidance_scale: float
    # A prompt the family's default weights can draw (the CLI banner, the web page).
    example_prompt: str
    # What an empty SDSERVE_WEIGHTS means for this family.
    default_weights: Literal["embedded", "pretrained"]
    # The padding token after the end-of-text token, as keras-cv pads prompts.
    pad_token: int = 49407
    # Classifier-free guidance applies at timesteps >= this, the conditional prediction
    # alone below it (a guidance interval, Kynkaanniemi et al. 2024). 0, guidance at every
    # step, is keras-cv's sampler; a small model whose conditional and unconditional
    # predictions disagree by their own errors at low noise gets those errors multiplied
    # by the guidance scale there, as blotches and frayed edges.
    guidance_from_timestep: int = 0
    # The sampler a request that names none gets (shared.sampler_names).
    default_sampler: SamplerName = DEFAULT_SAMPLER
    # The denoising steps a request that names none gets (keras-cv's text_to_image: 50).
    default_steps: int = 25
    # The words the family's training captions used, when they were few (tiny's synthetic
    # scenes): a prompt with others gets a warning (shared.families.vocabulary). None: no
    # vocabulary declared, no warnings.
    vocabulary: frozenset[str] | None = None
    # How a streamed preview draws a latent (shared.progress.latent_preview). None: SD's
    # VAE factors (SD_VAE_PREVIEW) for 4-channel latents, the first three channels
    # stretched to 0-255 otherwise.
    preview_map: LatentPreviewMap | None = None


class ModelFamily(ABC):
    spec: FamilySpec
    # Component -> the file keras-cv publishes for it; empty for families with none.
    published_weights: dict[Component, PublishedWeights]
    # A weights directory shipped inside the package (`SDSERVE_WEIGHTS=embedded`), if any.
    embedded_weights: Path | None = None

    @abstractmethod
    def build_text_encoder(self) -> keras.Model: ...

    @abstractmethod
    def build_diffusion_model(self, height: int, width: int) -> keras.Model: ...

    @abstractmethod
    def build_decoder(self, height: int, width: int) -> keras.Model: ...

    @abstractmethod
    def build_image_encoder(self) -> keras.Model: ...

    def build(self, component: Component, height: int, width: int) -> keras.Model:
        if component == "text_encoder":
            return self.build_text_encoder()
        if component == "diffusion_model":
            return self.build_diffusion_model(height, width)
        if component == "decoder":
            return self.build_decoder(height, width)
        return self.build_image_encoder()

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        f = self.spec.downsampling_factor
        return (height // f, width // f, self.spec.latent_channels)
