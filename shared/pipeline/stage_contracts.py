"""The three stages' contracts (see shared.pipeline.contract for what a declaration means)."""

from __future__ import annotations

from shared.pipeline.contract import Operation, Route, StageContract
from shared.pipeline.types import (
    DecodeRequest,
    DecodeResult,
    DenoiseParams,
    DenoiseRequest,
    DenoiseResult,
    EncodedPrompts,
    EncodeImageRequest,
    EncodeImageResult,
    EncodeRequest,
    denoise_defaults,
)

CONTEXTS = ("context", "unconditional_context")

ENCODE: Operation[EncodeRequest, EncodedPrompts] = Operation(
    method="encode",
    request=EncodeRequest,
    result=EncodedPrompts,
    routes=(
        Route(
            "/v1/encode", "Encode prompts; prompts over the token limit are truncated and reported."
        ),
    ),
    rows=lambda r: len(r.prompts),
    result_doc="npz with context and unconditional_context (B, 77, D) float32, "
    "token_count (B,) int32 and truncated (B,) bool",
    headers=lambda r: {"X-Truncated": ",".join(str(int(t)) for t in r.truncated)},
)

DENOISE: Operation[DenoiseRequest, DenoiseResult] = Operation(
    method="denoise",
    request=DenoiseRequest,
    result=DenoiseResult,
    routes=(
        Route(
            "/v1/denoise",
            "Text to latent: DDIM with classifier-free guidance; image i uses seed + i.",
            CONTEXTS,
        ),
        Route(
            "/v1/img2img",
            "Image to image: round(strength x steps) steps from the noised init latent.",
            (*CONTEXTS, "init_latent"),
        ),
        Route(
            "/v1/inpaint",
            "Inpainting, RePaint-style: the known region follows the init latent every step "
            "(mask on the latent grid, 1 = repaint).",
            (*CONTEXTS, "init_latent", "mask"),
        ),
    ),
    rows=lambda r: r.params.n,
    result_doc="npz with latent (n, h, w, c) float32 and seeds (n,) int64; X-Seeds header",
    params=DenoiseParams,
    params_defaults=denoise_defaults,
    streams=True,
    headers=lambda r: {"X-Seeds": ",".join(str(s) for s in r.seeds)},
)

DECODE: Operation[DecodeRequest, DecodeResult] = Operation(
    method="decode",
    request=DecodeRequest,
    result=DecodeResult,
    routes=(
        Route("/v1/decode", "Decode latents with the VAE decoder into uint8 RGB.", ("latent",)),
    ),
    rows=lambda r: len(r.latent),
    result_doc="npz with images (B, H, W, 3) uint8",
)

ENCODE_IMAGE: Operation[EncodeImageRequest, EncodeImageResult] = Operation(
    method="encode_image",
    request=EncodeImageRequest,
    result=EncodeImageResult,
    routes=(
        Route(
            "/v1/encode-image",
            "Encode images with the VAE encoder (the init latent of img2img and inpaint).",
            ("images",),
        ),
    ),
    rows=lambda r: len(r.images),
    result_doc="npz with latent (B, H/8, W/8, c) float32",
)

TEXT_ENCODER = StageContract("text_encoder", "text encoder", (ENCODE,))
DIFFUSION = StageContract("diffusion", "diffusion", (DENOISE,))
DECODER = StageContract("decoder", "decoder", (DECODE, ENCODE_IMAGE))
CONTRACTS = {c.name: c for c in (TEXT_ENCODER, DIFFUSION, DECODER)}
