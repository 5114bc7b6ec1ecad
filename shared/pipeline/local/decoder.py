"""The local decoder stage: the VAE decoder (latents -> images) and encoder (images ->
latents, for img2img and inpainting)."""

from __future__ import annotations

from typing import Any

import numpy as np

from shared.batching import DynamicBatcher, ModelWorker, Timing
from shared.config import Settings, Size
from shared.errors import InvalidInput
from shared.families import get_family
from shared.families.base import ModelFamily
from shared.metrics import BatchingSource
from shared.models import LoadedModels
from shared.pipeline.local.base import LocalStage
from shared.pipeline.stage_contracts import DECODER
from shared.pipeline.types import (
    DecodeRequest,
    DecodeResult,
    EncodeImageRequest,
    EncodeImageResult,
    check_size,
)


def latent_to_images(decoded: np.ndarray) -> np.ndarray:
    """Decoder output in [-1, 1] to uint8 pixels, exactly as keras-cv does it."""
    decoded = ((decoded + 1) / 2) * 255
    return np.clip(decoded, 0, 255).astype("uint8")


def images_to_model_input(images: np.ndarray) -> np.ndarray:
    """uint8 pixels to the [-1, 1] range the VAE encoder was trained on."""
    return images.astype(np.float32) / 127.5 - 1.0


class LocalDecoder(LocalStage):
    """Latents -> uint8 RGB images, and images -> latents (the VAE encoder)."""

    contract = DECODER
    components = ("decoder", "image_encoder")

    def __init__(self, settings: Settings, family: ModelFamily, worker: ModelWorker) -> None:
        super().__init__(settings, family, worker)
        # Rows of one size go through one model call; each batch is of one size.
        self.decode_batcher: DynamicBatcher[np.ndarray, np.ndarray] = self.request_batcher(
            self._decode_rows
        )
        self.encode_batcher: DynamicBatcher[np.ndarray, np.ndarray] = self.request_batcher(
            self._encode_rows
        )

    def batching_sources(self) -> list[BatchingSource]:
        decode, encode = self.decode_batcher, self.encode_batcher
        return [
            BatchingSource(
                "decoder", decode.stats, lambda: decode.queue_depth, self.graph_builds("decoder")
            ),
            BatchingSource(
                "image_encoder",
                encode.stats,
                lambda: encode.queue_depth,
                self.graph_builds("image_encoder"),
            ),
        ]

    def _decode_rows(self, size: Any, rows: list[np.ndarray]) -> list[np.ndarray]:
        return list(self.decode_sync(self._ready_models(), np.stack(rows), size))

    def _encode_rows(self, size: Any, rows: list[np.ndarray]) -> list[np.ndarray]:
        return list(self.encode_image_sync(self._ready_models(), np.stack(rows), size))

    def warm_up(self, models: LoadedModels) -> None:
        for size in self.settings.sizes:
            for n in (1, 2):
                latent = np.zeros((n, *self.family.latent_shape(size[1], size[0])), np.float32)
                self.decode_sync(models, latent, size)
                self.encode_image_sync(models, np.zeros((n, size[1], size[0], 3), np.uint8), size)

    def size_of_latent(self, latent: np.ndarray) -> Size:
        f = self.family.spec.downsampling_factor
        channels = self.family.spec.latent_channels
        if latent.ndim != 4 or latent.shape[-1] != channels:
            raise InvalidInput(
                f"latent must have shape (B, h, w, {channels}); got {tuple(latent.shape)}",
                param="latent",
            )
        most = max(self.settings.max_batch, self.settings.max_images_per_request)
        if not 1 <= latent.shape[0] <= most:
            raise InvalidInput(f"latent batch must be between 1 and {most}", param="latent")
        return check_size(self.settings, latent.shape[2] * f, latent.shape[1] * f, param="latent")

    def decode_sync(self, models: LoadedModels, latent: np.ndarray, size: Size) -> np.ndarray:
        return latent_to_images(models.decoder[size](latent.astype(np.float32)))

    async def decode(self, request: DecodeRequest) -> DecodeResult:
        """Any number of latents: they go to the batcher max_batch at a time."""
        latent = request.latent
        size = self.size_of_latent(latent)
        self._ready_models()
        chunks, queue_ms, compute_ms = [], 0.0, 0.0
        for i in range(0, len(latent), self.settings.max_batch):
            chunk = list(latent[i : i + self.settings.max_batch].astype(np.float32))
            rows, timing = await self.decode_batcher.submit(chunk, size)
            chunks.extend(rows)
            queue_ms += timing.queue_ms
            compute_ms += timing.compute_ms
        return DecodeResult(images=np.stack(chunks), timing=Timing(queue_ms, compute_ms))

    def size_of_images(self, images: np.ndarray) -> Size:
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise InvalidInput(
                f"images must be uint8 with shape (B, H, W, 3); got {images.dtype} "
                f"{tuple(images.shape)}",
                param="images",
            )
        if not 1 <= images.shape[0] <= self.settings.max_batch:
            raise InvalidInput(
                f"images batch must be between 1 and {self.settings.max_batch}", param="images"
            )
        return check_size(self.settings, images.shape[2], images.shape[1], param="images")

    def encode_image_sync(self, models: LoadedModels, images: np.ndarray, size: Size) -> np.ndarray:
        return models.image_encoder[size](images_to_model_input(images))

    async def encode_image(self, request: EncodeImageRequest) -> EncodeImageResult:
        """uint8 RGB images -> scaled latents (the init latent of img2img and inpaint)."""
        images = request.images
        size = self.size_of_images(images)
        self._ready_models()
        rows, timing = await self.encode_batcher.submit(list(images), size)
        return EncodeImageResult(latent=np.stack(rows), timing=timing)


def make_decoder(settings: Settings) -> LocalDecoder:
    worker = ModelWorker("decoder", queue_size=settings.queue_size)
    return LocalDecoder(settings, get_family(settings.model), worker)
