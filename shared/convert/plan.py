"""Which source tensor fills each weight of keras-cv's Stable Diffusion models, in order.

A plan lists, for one component of one family, every weight of the keras-cv model in the
order of `model.weights`, each named by its key in the diffusers layout (the canonical
names; `shared.convert.layouts` maps the original CompVis/A1111 keys onto them) with the
shape it has in Keras. The same plan serves three jobs:

* `sdserve convert` checks a checkpoint against it (every tensor present, every shape
  right) before writing anything, and writes each component as safetensors keyed by
  these names, already in Keras layout;
* `shared.weights` loads such a file by zipping the plan with `model.weights` (keras-cv's
  own layer names are numbered by creation order in the process, so they cannot key a
  file);
* `shared.convert.lora` finds the Keras variable a LoRA module (named in diffusers terms)
  changes.

Pure Python: no TensorFlow, Keras or torch here, so conversion checks run in a second.
The plans mirror keras-cv 0.9.0's constructors (`keras_cv.src.models.stable_diffusion`);
`tests/integration/shared/convert/test_reference.py` proves them numerically against
diffusers / transformers models of the real architecture.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Literal

Kind = Literal["kernel", "vector", "embedding"]
PlannedComponent = Literal["text_encoder", "diffusion_model", "decoder", "image_encoder"]
PLANNED_FAMILIES = ("sd-v1", "sd-v2")

TIME_EMBED_DIM = 1280
UNET_CHANNELS = (320, 640, 1280, 1280)
VAE_CHANNELS = (128, 256, 512, 512)
LATENT_CHANNELS = 4
VOCAB_SIZE = 49408
MAX_TOKENS = 77


@dataclass(frozen=True)
class Weight:
    """One Keras weight: the diffusers key that fills it and its shape in Keras.

    `kind` says how a PyTorch tensor becomes it: a `kernel` is transposed (a Linear's
    (out, in) to (in, out), a Conv2d's (out, in, kh, kw) to (kh, kw, in, out); a 1x1
    convolution and a Linear are interchangeable), a `vector` (bias, norm scale or
    offset) and an `embedding` table are taken as they are.
    """

    name: str
    shape: tuple[int, ...]
    kind: Kind

    def torch_shapes(self) -> tuple[tuple[int, ...], ...]:
        """The shapes the PyTorch tensor may have (its layout before conversion)."""
        if self.kind != "kernel":
            return (self.shape,)
        if len(self.shape) == 2:
            d_in, d_out = self.shape
            return ((d_out, d_in), (d_out, d_in, 1, 1))
        kh, kw, d_in, d_out = self.shape
        if (kh, kw) == (1, 1):
            return ((d_out, d_in, 1, 1), (d_out, d_in))
        return ((d_out, d_in, kh, kw),)


@dataclass(frozen=True)
class FamilyArchitecture:
    """The few numbers where sd-v1 and sd-v2 differ."""

    context_dim: int  # text encoder width = the UNet's cross-attention input
    text_layers: int
    # SD 2.x projects into and out of its transformer blocks with Linear layers,
    # SD 1.x with 1x1 convolutions.
    linear_projection: bool
    # SD 2.x's text encoder is OpenCLIP's (q, k, v fused in one tensor in its checkpoints).
    openclip: bool


ARCHITECTURES = {
    "sd-v1": FamilyArchitecture(
        context_dim=768, text_layers=12, linear_projection=False, openclip=False
    ),
    # SD 2.x's OpenCLIP ViT-H has 24 blocks; SD uses the penultimate block's output, so
    # keras-cv (like diffusers) keeps 23.
    "sd-v2": FamilyArchitecture(
        context_dim=1024, text_layers=23, linear_projection=True, openclip=True
    ),
}


def _vector(name: str, size: int) -> Weight:
    return Weight(name, (size,), "vector")


def _norm(prefix: str, channels: int) -> list[Weight]:
    """GroupNormalization / LayerNormalization: gamma then beta."""
    return [_vector(f"{prefix}.weight", channels), _vector(f"{prefix}.bias", channels)]


def _dense(prefix: str, d_in: int, d_out: int, *, bias: bool = True) -> list[Weight]:
    weights = [Weight(f"{prefix}.weight", (d_in, d_out), "kernel")]
    return [*weights, _vector(f"{prefix}.bias", d_out)] if bias else weights


def _conv(prefix: str, c_in: int, c_out: int, size: int) -> list[Weight]:
    return [
        Weight(f"{prefix}.weight", (size, size, c_in, c_out), "kernel"),
        _vector(f"{prefix}.bias", c_out),
    ]


# ------------------------------------------------------------------------ text encoder


def _text_encoder(arch: FamilyArchitecture) -> list[Weight]:
    width = arch.context_dim
    plan = [
        Weight("text_model.embeddings.token_embedding.weight", (VOCAB_SIZE, width), "embedding"),
        Weight("text_model.embeddings.position_embedding.weight", (MAX_TOKENS, width), "embedding"),
    ]
    for i in range(arch.text_layers):
        layer = f"text_model.encoder.layers.{i}"
        plan += _norm(f"{layer}.layer_norm1", width)
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            plan += _dense(f"{layer}.self_attn.{proj}", width, width)
        plan += _norm(f"{layer}.layer_norm2", width)
        plan += _dense(f"{layer}.mlp.fc1", width, 4 * width)
        plan += _dense(f"{layer}.mlp.fc2", 4 * width, width)
    return plan + _norm("text_model.final_layer_norm", width)


# ---------------------------------------------------------------------------- UNet


def _unet_resnet(prefix: str, c_in: int, c_out: int) -> list[Weight]:
    """keras-cv's ResBlock: entry flow, time embedding, exit flow, then the shortcut."""
    plan = _norm(f"{prefix}.norm1", c_in) + _conv(f"{prefix}.conv1", c_in, c_out, 3)
    plan += _dense(f"{prefix}.time_emb_proj", TIME_EMBED_DIM, c_out)
    plan += _norm(f"{prefix}.norm2", c_out) + _conv(f"{prefix}.conv2", c_out, c_out, 3)
    if c_in != c_out:
        plan += _conv(f"{prefix}.conv_shortcut", c_in, c_out, 1)
    return plan


def _attention(prefix: str, width: int, context: int) -> list[Weight]:
    """keras-cv's CrossAttention: to_q, to_k, to_v without bias, then the output."""
    plan = _dense(f"{prefix}.to_q", width, width, bias=False)
    plan += _dense(f"{prefix}.to_k", context, width, bias=False)
    plan += _dense(f"{prefix}.to_v", context, width, bias=False)
    return plan + _dense(f"{prefix}.to_out.0", width, width)


def _unet_transformer(prefix: str, width: int, arch: FamilyArchitecture) -> list[Weight]:
    """keras-cv's SpatialTransformer with its one BasicTransformerBlock."""

    def projection(name: str) -> list[Weight]:
        if arch.linear_projection:
            return _dense(f"{prefix}.{name}", width, width)
        return _conv(f"{prefix}.{name}", width, width, 1)

    block = f"{prefix}.transformer_blocks.0"
    plan = _norm(f"{prefix}.norm", width) + projection("proj_in")
    plan += _norm(f"{block}.norm1", width) + _attention(f"{block}.attn1", width, width)
    plan += _norm(f"{block}.norm2", width)
    plan += _attention(f"{block}.attn2", width, arch.context_dim)
    plan += _norm(f"{block}.norm3", width)
    # GEGLU: one Dense giving the value and the gate, then the output Dense.
    plan += _dense(f"{block}.ff.net.0.proj", width, 8 * width)
    plan += _dense(f"{block}.ff.net.2", 4 * width, width)
    return plan + projection("proj_out")


def _unet(arch: FamilyArchitecture) -> list[Weight]:
    first = UNET_CHANNELS[0]
    # keras-cv's functional graph orders its first layers by use: the time embedding's
    # first Dense, the input convolution, then the time embedding's second Dense.
    plan = _dense("time_embedding.linear_1", first, TIME_EMBED_DIM)
    plan += _conv("conv_in", LATENT_CHANNELS, first, 3)
    plan += _dense("time_embedding.linear_2", TIME_EMBED_DIM, TIME_EMBED_DIM)
    skips = [first]  # channels of the outputs the up blocks concatenate, in order
    channels = first
    for i, out in enumerate(UNET_CHANNELS):
        last = i == len(UNET_CHANNELS) - 1
        for j in range(2):
            plan += _unet_resnet(f"down_blocks.{i}.resnets.{j}", channels, out)
            channels = out
            if not last:
                plan += _unet_transformer(f"down_blocks.{i}.attentions.{j}", out, arch)
            skips.append(out)
        if not last:
            plan += _conv(f"down_blocks.{i}.downsamplers.0.conv", out, out, 3)
            skips.append(out)
    plan += _unet_resnet("mid_block.resnets.0", channels, channels)
    plan += _unet_transformer("mid_block.attentions.0", channels, arch)
    plan += _unet_resnet("mid_block.resnets.1", channels, channels)
    for i, out in enumerate(reversed(UNET_CHANNELS)):
        for j in range(3):
            plan += _unet_resnet(f"up_blocks.{i}.resnets.{j}", channels + skips.pop(), out)
            channels = out
            if i > 0:
                plan += _unet_transformer(f"up_blocks.{i}.attentions.{j}", out, arch)
        if i < len(UNET_CHANNELS) - 1:
            plan += _conv(f"up_blocks.{i}.upsamplers.0.conv", out, out, 3)
    plan += _norm("conv_norm_out", first)
    return plan + _conv("conv_out", first, LATENT_CHANNELS, 3)


# ----------------------------------------------------------------------------- VAE


def _vae_resnet(prefix: str, c_in: int, c_out: int) -> list[Weight]:
    """keras-cv's ResnetBlock: norm1, conv1, norm2, conv2, then the shortcut."""
    plan = _norm(f"{prefix}.norm1", c_in) + _conv(f"{prefix}.conv1", c_in, c_out, 3)
    plan += _norm(f"{prefix}.norm2", c_out) + _conv(f"{prefix}.conv2", c_out, c_out, 3)
    if c_in != c_out:
        plan += _conv(f"{prefix}.conv_shortcut", c_in, c_out, 1)
    return plan


def _vae_attention(prefix: str, channels: int) -> list[Weight]:
    """keras-cv's AttentionBlock: q, k, v and the output as 1x1 convolutions."""
    plan = _norm(f"{prefix}.group_norm", channels)
    for name in ("to_q", "to_k", "to_v", "to_out.0"):
        plan += _conv(f"{prefix}.{name}", channels, channels, 1)
    return plan


def _vae_mid(prefix: str, channels: int) -> list[Weight]:
    return (
        _vae_resnet(f"{prefix}.mid_block.resnets.0", channels, channels)
        + _vae_attention(f"{prefix}.mid_block.attentions.0", channels)
        + _vae_resnet(f"{prefix}.mid_block.resnets.1", channels, channels)
    )


def _decoder() -> list[Weight]:
    top = VAE_CHANNELS[-1]
    plan = _conv("post_quant_conv", LATENT_CHANNELS, LATENT_CHANNELS, 1)
    plan += _conv("decoder.conv_in", LATENT_CHANNELS, top, 3) + _vae_mid("decoder", top)
    channels = top
    for i, out in enumerate(reversed(VAE_CHANNELS)):
        for j in range(3):
            plan += _vae_resnet(f"decoder.up_blocks.{i}.resnets.{j}", channels, out)
            channels = out
        if i < len(VAE_CHANNELS) - 1:
            plan += _conv(f"decoder.up_blocks.{i}.upsamplers.0.conv", out, out, 3)
    plan += _norm("decoder.conv_norm_out", channels)
    return plan + _conv("decoder.conv_out", channels, 3, 3)


def _image_encoder() -> list[Weight]:
    first, top = VAE_CHANNELS[0], VAE_CHANNELS[-1]
    plan = _conv("encoder.conv_in", 3, first, 3)
    channels = first
    for i, out in enumerate(VAE_CHANNELS):
        for j in range(2):
            plan += _vae_resnet(f"encoder.down_blocks.{i}.resnets.{j}", channels, out)
            channels = out
        if i < len(VAE_CHANNELS) - 1:
            plan += _conv(f"encoder.down_blocks.{i}.downsamplers.0.conv", out, out, 3)
    plan += _vae_mid("encoder", top)
    plan += _norm("encoder.conv_norm_out", top)
    plan += _conv("encoder.conv_out", top, 2 * LATENT_CHANNELS, 3)
    return plan + _conv("quant_conv", 2 * LATENT_CHANNELS, 2 * LATENT_CHANNELS, 1)


@cache
def plan_for(family: str, component: PlannedComponent) -> tuple[Weight, ...]:
    """The plan of one family's component (a KeyError for a family without one)."""
    arch = ARCHITECTURES[family]
    if component == "text_encoder":
        return tuple(_text_encoder(arch))
    if component == "diffusion_model":
        return tuple(_unet(arch))
    if component == "decoder":
        return tuple(_decoder())
    return tuple(_image_encoder())
