"""The tiny family's Keras models: its custom layers and the four component builders.

Apart from `shared.families.tiny` so that the family's spec (read by the settings, the
CLI and the gateway) is known without importing Keras; `TinyFamily` imports this when it
builds a component. The size check and the spec stay with the family.

Everything here is built with the Keras functional API from layers with explicit, stable
names, and only with initialisers that draw their seed from Python's `random` module at
construction time; so `keras.utils.set_random_seed(s)` followed by a build gives the same
weights in any process, and `.weights.h5` files move between two builds of a component.
"""

from __future__ import annotations

from typing import Any

import keras

from shared.families.base import TIMESTEP_EMBEDDING_DIM, FamilySpec

# The CLIP BPE vocabulary size keras-cv's tokenizer produces ids for.
VOCAB_SIZE = 49408
# Latent scale factor of the Stable Diffusion VAE (keras-cv's ImageEncoder uses it too).
LATENT_SCALE = 0.18215

# Text encoder sizes. Token embeddings are factorised (vocab x 32, then 32 -> context
# width): a full 49408 x 128 table alone would be 25 MB, and a caption vocabulary of a
# few dozen words does not need it.
_TOKEN_EMBEDDING_DIM = 32
# Token embeddings start N(0, 0.3), not Keras' uniform +-0.05: with the small default a
# random encoder maps "square" and "circle" almost alike, and the words it starts out
# unable to tell apart are the ones the model learns last.
_TOKEN_EMBEDDING_STD = 0.3
_TEXT_HEADS = 4
_TEXT_LAYERS = 2
_TEXT_MLP_RATIO = 4

# UNet sizes: channels per resolution level (latent, latent/2, latent/4). 64 at the
# latent level too: with the same data and steps, (32, 64, 64) drew 7-11 of 34 held-out
# squares right and this 15-18 (corners are a few cells of the 16x16 latent). It costs
# about 30 % more per training step, won back by training the text encoder on 24 positions.
UNET_CHANNELS = (64, 64, 64)
_UNET_TIME_DIM = 128
_UNET_HEADS = 4
# Layout prior: the pooled prompt, through a small MLP, as a feature map on a fixed grid
# (the latent grid of a 64x64 image), resized to the latent being denoised and fed to the
# UNet's first convolution with the latent.
_LAYOUT_GRID = 16
_LAYOUT_CHANNELS = 16
_LAYOUT_HIDDEN = 256

# VAE sizes (downsampling factor 4: a 64x64 image is a 16x16x4 latent, fine enough for
# the edges of small shapes to survive the round trip).
_DECODER_CHANNELS = (64, 32, 16)  # at latent resolution, then after each 2x upsampling
_ENCODER_CHANNELS = (16, 32, 64)  # at image resolution, then after each stride-2 conv


@keras.saving.register_keras_serializable(package="sdserve")
class LatentScale(keras.layers.Layer):  # type: ignore[misc]
    """Keeps the first `channels` channels (the VAE mean) and multiplies by `scale`."""

    def __init__(self, channels: int, scale: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.channels = channels
        self.scale = scale

    def call(self, inputs: Any) -> Any:
        return inputs[..., : self.channels] * self.scale

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return (*input_shape[:-1], self.channels)

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = super().get_config()
        config.update({"channels": self.channels, "scale": self.scale})
        return config


class _ReadsEndToken(keras.layers.Layer):  # type: ignore[misc]
    """A layer that finds where each prompt ends: the first end-of-text token, which
    keras-cv also pads with."""

    def __init__(self, end_token: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.end_token = end_token

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = super().get_config()
        config.update({"end_token": self.end_token})
        return config


@keras.saving.register_keras_serializable(package="sdserve")
class PromptMean(_ReadsEndToken):
    """Mean of the hidden states over the prompt's own tokens, broadcast to every position.

    Token positions run up to the first end-of-text token; the padding after it (the same
    token id, as keras-cv pads) is left out. Added to every position, the summary keeps
    the padding positions (most of the 77) from diluting what the prompt says, so the
    UNet's attention and pooling hear the prompt from the first training step.
    """

    def call(self, inputs: Any) -> Any:
        hidden, tokens = inputs
        ops = keras.ops
        is_end = ops.cast(ops.equal(tokens, self.end_token), hidden.dtype)
        # 1 up to and including the first end token, 0 after it.
        keep = ops.expand_dims(ops.cast(ops.cumsum(is_end, axis=1) - is_end == 0, hidden.dtype), -1)
        total = ops.sum(hidden * keep, axis=1, keepdims=True)
        return total / ops.maximum(ops.sum(keep, axis=1, keepdims=True), 1.0)

    def compute_output_shape(self, input_shape: Any) -> tuple[int | None, ...]:
        hidden_shape, _ = input_shape
        return (hidden_shape[0], 1, hidden_shape[-1])


@keras.saving.register_keras_serializable(package="sdserve")
class HoldEndState(_ReadsEndToken):
    """Every position after the prompt's first end-of-text token takes that token's state.

    Attention is causal, so the state at the first end token already depends only on the
    prompt; with this, the whole output does too, and the 60-odd padding positions carry no
    state of their own. That makes the encoder's output on the first N positions, with its
    last position repeated out to 77, exactly its output on all 77 whenever the prompt ends
    within N: training runs the encoder that way, on a third of the positions. A row with
    no end token (a prompt cut off at the limit) is left as it is.
    """

    def call(self, inputs: Any) -> Any:
        hidden, tokens = inputs
        ops = keras.ops
        length = ops.shape(tokens)[1]
        is_end = ops.equal(tokens, self.end_token)
        first_end = ops.where(
            ops.any(is_end, axis=1), ops.argmax(ops.cast(is_end, "int32"), axis=1), length - 1
        )
        source = ops.minimum(ops.arange(length)[None, :], ops.expand_dims(first_end, 1))
        # A one-hot matmul gathers each position's source state (and routes its gradient).
        return ops.matmul(ops.one_hot(source, length, dtype=hidden.dtype), hidden)

    def compute_output_shape(self, input_shape: Any) -> tuple[int | None, ...]:
        hidden_shape, _ = input_shape
        return tuple(hidden_shape)


@keras.saving.register_keras_serializable(package="sdserve")
class FlattenSpatial(keras.layers.Layer):  # type: ignore[misc]
    """(B, H, W, C) -> (B, H*W, C), with H and W read at call time.

    A fixed-shape Reshape would tie the layer to one image size; this way the same layers
    (and weights) serve every configured size.
    """

    def call(self, inputs: Any) -> Any:
        shape = keras.ops.shape(inputs)
        return keras.ops.reshape(inputs, (shape[0], shape[1] * shape[2], shape[3]))

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        batch, height, width, channels = input_shape
        flat = height * width if height is not None and width is not None else None
        return (batch, flat, channels)


@keras.saving.register_keras_serializable(package="sdserve")
class UnflattenLike(keras.layers.Layer):  # type: ignore[misc]
    """(B, H*W, C) -> (B, H, W, C), taking H and W from a reference feature map."""

    def call(self, inputs: Any) -> Any:
        flat, like = inputs
        shape = keras.ops.shape(like)
        return keras.ops.reshape(flat, (shape[0], shape[1], shape[2], keras.ops.shape(flat)[-1]))

    def compute_output_shape(self, input_shape: Any) -> tuple[int | None, ...]:
        flat_shape, like_shape = input_shape
        return (*like_shape[:3], flat_shape[-1])


@keras.saving.register_keras_serializable(package="sdserve")
class ResizeLike(keras.layers.Layer):  # type: ignore[misc]
    """Bilinear resize of a feature map to a reference map's height and width, read at
    call time: the stages re-call one model on each configured size's inputs, so a size
    fixed when the model was built would be wrong for every other size."""

    def call(self, inputs: Any) -> Any:
        image, like = inputs
        shape = keras.ops.shape(like)
        return keras.ops.image.resize(image, (shape[1], shape[2]), interpolation="bilinear")

    def compute_output_shape(self, input_shape: Any) -> tuple[int | None, ...]:
        image_shape, like_shape = input_shape
        return (image_shape[0], like_shape[1], like_shape[2], image_shape[3])


def _groups(channels: int) -> int:
    for groups in (8, 4, 2):
        if channels % groups == 0:
            return groups
    return 1


def _norm(name: str, channels: int) -> keras.layers.Layer:
    return keras.layers.GroupNormalization(groups=_groups(channels), epsilon=1e-5, name=name)


def _conv(channels: int, kernel: int, name: str, strides: int = 1) -> keras.layers.Layer:
    return keras.layers.Conv2D(channels, kernel, strides=strides, padding="same", name=name)


def _res_block(x: Any, channels: int, name: str, time_emb: Any = None) -> Any:
    """GroupNorm -> swish -> conv (+ time embedding) -> GroupNorm -> swish -> conv, residual."""
    in_channels = x.shape[-1]
    h = _norm(f"{name}_norm1", in_channels)(x)
    h = keras.layers.Activation("swish", name=f"{name}_act1")(h)
    h = _conv(channels, 3, f"{name}_conv1")(h)
    if time_emb is not None:
        t = keras.layers.Activation("swish", name=f"{name}_time_act")(time_emb)
        t = keras.layers.Dense(channels, name=f"{name}_time_proj")(t)
        t = keras.layers.Reshape((1, 1, channels), name=f"{name}_time_reshape")(t)
        h = keras.layers.Add(name=f"{name}_time_add")([h, t])
    h = _norm(f"{name}_norm2", channels)(h)
    h = keras.layers.Activation("swish", name=f"{name}_act2")(h)
    h = _conv(channels, 3, f"{name}_conv2")(h)
    if in_channels != channels:
        x = _conv(channels, 1, f"{name}_skip")(x)
    return keras.layers.Add(name=f"{name}_add")([x, h])


def _spatial_transformer(x: Any, context: Any, name: str) -> Any:
    """Self-attention, cross-attention to the context and a feed-forward, on a feature map."""
    channels = x.shape[-1]
    key_dim = channels // _UNET_HEADS
    h = _norm(f"{name}_norm", channels)(x)
    h = _conv(channels, 1, f"{name}_proj_in")(h)
    spatial = h
    h = FlattenSpatial(name=f"{name}_flatten")(h)

    a = keras.layers.LayerNormalization(epsilon=1e-5, name=f"{name}_ln1")(h)
    a = keras.layers.MultiHeadAttention(_UNET_HEADS, key_dim, name=f"{name}_attn1")(a, a)
    h = keras.layers.Add(name=f"{name}_add1")([h, a])

    a = keras.layers.LayerNormalization(epsilon=1e-5, name=f"{name}_ln2")(h)
    a = keras.layers.MultiHeadAttention(_UNET_HEADS, key_dim, name=f"{name}_attn2")(a, context)
    h = keras.layers.Add(name=f"{name}_add2")([h, a])

    a = keras.layers.LayerNormalization(epsilon=1e-5, name=f"{name}_ln3")(h)
    a = keras.layers.Dense(channels * 4, activation="gelu", name=f"{name}_ff1")(a)
    a = keras.layers.Dense(channels, name=f"{name}_ff2")(a)
    h = keras.layers.Add(name=f"{name}_add3")([h, a])

    h = UnflattenLike(name=f"{name}_unflatten")([h, spatial])
    h = _conv(channels, 1, f"{name}_proj_out")(h)
    return keras.layers.Add(name=f"{name}_add")([x, h])


def _upsample(x: Any, channels: int, name: str) -> Any:
    x = keras.layers.UpSampling2D(2, interpolation="nearest", name=f"{name}_upsample")(x)
    return _conv(channels, 3, f"{name}_conv")(x)


def build_text_encoder(spec: FamilySpec, positions_read: int | None = None) -> keras.Model:
    """A 2-layer pre-LayerNorm causal transformer, like a very small CLIP text model,
    plus the prompt's mean hidden state added at every position (PromptMean), and the
    padding holding the end token's state (HoldEndState).

    `positions_read` builds the same encoder (same weights) reading only that many
    leading positions, for training on prompts known to end within them."""
    n, dim = spec.max_tokens, spec.context_dim
    read = positions_read or n
    tokens = keras.Input((read,), dtype="int32", name="tokens")
    positions = keras.Input((read,), dtype="int32", name="positions")
    tok = keras.layers.Embedding(
        VOCAB_SIZE,
        _TOKEN_EMBEDDING_DIM,
        embeddings_initializer=keras.initializers.RandomNormal(stddev=_TOKEN_EMBEDDING_STD),
        name="token_embedding",
    )(tokens)
    tok = keras.layers.Dense(dim, use_bias=False, name="token_projection")(tok)
    pos = keras.layers.Embedding(n, dim, name="position_embedding")(positions)
    x = keras.layers.Add(name="embedding_add")([tok, pos])
    for i in range(_TEXT_LAYERS):
        name = f"block{i}"
        h = keras.layers.LayerNormalization(epsilon=1e-5, name=f"{name}_ln1")(x)
        h = keras.layers.MultiHeadAttention(_TEXT_HEADS, dim // _TEXT_HEADS, name=f"{name}_attn")(
            h, h, use_causal_mask=True
        )
        x = keras.layers.Add(name=f"{name}_add1")([x, h])
        h = keras.layers.LayerNormalization(epsilon=1e-5, name=f"{name}_ln2")(x)
        h = keras.layers.Dense(dim * _TEXT_MLP_RATIO, activation="gelu", name=f"{name}_fc1")(h)
        h = keras.layers.Dense(dim, name=f"{name}_fc2")(h)
        x = keras.layers.Add(name=f"{name}_add2")([x, h])
    x = HoldEndState(spec.pad_token, name="hold_end_state")([x, tokens])
    summary = PromptMean(spec.pad_token, name="prompt_mean")([x, tokens])
    summary = keras.layers.Dense(dim, name="prompt_mean_proj")(summary)
    x = keras.layers.Add(name="prompt_mean_add")([x, summary])  # broadcast over positions
    x = keras.layers.LayerNormalization(epsilon=1e-5, name="final_layer_norm")(x)
    return keras.Model({"tokens": tokens, "positions": positions}, x, name="tiny_text_encoder")


def build_diffusion_model(spec: FamilySpec, height: int, width: int) -> keras.Model:
    """A two-level UNet: ResBlocks conditioned on time and the pooled prompt,
    spatial transformers cross-attending to the prompt's tokens, and a layout map
    from the pooled prompt read with the latent by the first convolution."""
    f = spec.downsampling_factor
    lh, lw, lc = height // f, width // f, spec.latent_channels
    c0, c1, c2 = UNET_CHANNELS
    latent = keras.Input((lh, lw, lc), name="latent")
    t_in = keras.Input((TIMESTEP_EMBEDDING_DIM,), name="timestep_embedding")
    context = keras.Input((spec.max_tokens, spec.context_dim), name="context")

    t = keras.layers.Dense(_UNET_TIME_DIM, activation="swish", name="time_fc1")(t_in)
    t = keras.layers.Dense(_UNET_TIME_DIM, name="time_fc2")(t)
    # The prompt, pooled, joins the time embedding and so reaches every ResBlock: a
    # direct path that makes a model trained from scratch use the prompt early, before
    # cross-attention has learnt where to look.
    pooled = keras.layers.GlobalAveragePooling1D(name="context_pool")(context)
    t_pooled = keras.layers.Dense(_UNET_TIME_DIM, name="context_pool_proj")(pooled)
    t = keras.layers.Add(name="time_context_add")([t, t_pooled])
    # Where things go, said by the prompt as a map: cross-attention alone has to learn
    # positions from the zero padding of the convolutions, and a small model trained
    # for an hour drew every shape at a random place (place 26 %, shape 37 % without).
    layout = _layout_prior(pooled, latent)

    x = keras.layers.Concatenate(name="layout_concat")([latent, layout])
    x = _conv(c0, 3, "conv_in")(x)
    # Down: latent resolution, then /2 and /4.
    x = _res_block(x, c0, "down0_res", t)
    skip0 = x
    x = _conv(c1, 3, "down0_downsample", strides=2)(x)
    x = _res_block(x, c1, "down1_res", t)
    x = _spatial_transformer(x, context, "down1_attn")
    skip1 = x
    x = _conv(c2, 3, "down1_downsample", strides=2)(x)
    # Middle, at latent/4.
    x = _res_block(x, c2, "mid_res1", t)
    x = _spatial_transformer(x, context, "mid_attn")
    x = _res_block(x, c2, "mid_res2", t)
    # Up, with skip connections.
    x = _upsample(x, c1, "up1")
    x = keras.layers.Concatenate(name="up1_concat")([x, skip1])
    x = _res_block(x, c1, "up1_res", t)
    x = _spatial_transformer(x, context, "up1_attn")
    x = _upsample(x, c0, "up0")
    x = keras.layers.Concatenate(name="up0_concat")([x, skip0])
    x = _res_block(x, c0, "up0_res", t)

    x = _norm("out_norm", c0)(x)
    x = keras.layers.Activation("swish", name="out_act")(x)
    # Default (random) init, not zeros: a fresh model's output depends on its inputs.
    noise = _conv(lc, 3, "conv_out")(x)
    return keras.Model(
        {"latent": latent, "timestep_embedding": t_in, "context": context},
        noise,
        name="tiny_diffusion_model",
    )


def _layout_prior(pooled: Any, latent: Any) -> Any:
    """(B, context_dim) pooled prompt -> (B, latent height, latent width, channels).

    The map's weights are on a fixed grid, so every image size shares them; other
    sizes stretch the same layout (the top left stays the top left)."""
    grid, channels = _LAYOUT_GRID, _LAYOUT_CHANNELS
    h = keras.layers.Dense(_LAYOUT_HIDDEN, activation="swish", name="layout_fc1")(pooled)
    h = keras.layers.Dense(grid * grid * channels, name="layout_fc2")(h)
    h = keras.layers.Reshape((grid, grid, channels), name="layout_reshape")(h)
    # Always present (identity at the training size) so every build has the same layers.
    return ResizeLike(name="layout_resize")([h, latent])


def build_decoder(spec: FamilySpec) -> keras.Model:
    """VAE decoder, two 2x upsamplings; fully convolutional, so it serves every size."""
    c0, c1, c2 = _DECODER_CHANNELS
    latent = keras.Input((None, None, spec.latent_channels), name="latent")
    x = keras.layers.Rescaling(1.0 / LATENT_SCALE, name="unscale")(latent)
    x = _conv(c0, 3, "conv_in")(x)
    x = _res_block(x, c0, "mid_res")
    x = _upsample(x, c1, "up0")
    x = _res_block(x, c1, "up0_res")
    x = _upsample(x, c2, "up1")
    x = _res_block(x, c2, "up1_res")
    x = _norm("out_norm", c2)(x)
    x = keras.layers.Activation("swish", name="out_act")(x)
    image = _conv(3, 3, "conv_out")(x)
    return keras.Model(latent, image, name="tiny_decoder")


def build_image_encoder(spec: FamilySpec) -> keras.Model:
    """VAE encoder: two stride-2 convs, 8 moment channels, scaled mean kept."""
    c0, c1, c2 = _ENCODER_CHANNELS
    lc = spec.latent_channels
    image = keras.Input((None, None, 3), name="image")
    x = _conv(c0, 3, "conv_in")(image)
    x = _res_block(x, c0, "res0")
    x = _conv(c1, 3, "down0", strides=2)(x)
    x = _res_block(x, c1, "down0_res")
    x = _conv(c2, 3, "down1", strides=2)(x)
    x = _res_block(x, c2, "mid_res")
    x = _norm("out_norm", c2)(x)
    x = keras.layers.Activation("swish", name="out_act")(x)
    x = _conv(2 * lc, 3, "conv_out")(x)
    x = _conv(2 * lc, 1, "quant_conv")(x)
    latent = LatentScale(lc, LATENT_SCALE, name="latent_scale")(x)
    return keras.Model(image, latent, name="tiny_image_encoder")
