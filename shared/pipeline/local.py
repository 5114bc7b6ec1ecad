"""The three stages as in-process ("local") objects. No HTTP here.

The stage services are thin HTTP wrappers around these objects, and central uses the
very same objects when a stage is configured local, so every topology runs this code.
Each stage validates its own inputs (raising the shared error types), so a request is
refused identically whether it came over HTTP or from central in-process.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

import numpy as np

from shared.batching import (
    DynamicBatcher,
    ModelWorker,
    ProgressCallback,
    StepScheduler,
)
from shared.config import Settings, Size, format_size
from shared.errors import InvalidInput, ModelNotReady
from shared.execution import resolve_strategy
from shared.families import get_family
from shared.families.base import Component, ModelFamily
from shared.metrics import BatchingSource
from shared.models import LoadedModels, load_components
from shared.pipeline.types import (
    DecodeResult,
    DenoiseParams,
    DenoiseResult,
    EncodedPrompts,
    EncodeImageResult,
    PromptRow,
    StageInfo,
    check_denoise_params,
    check_size,
)
from shared.progress import PreviewCallback, latent_preview, should_preview
from shared.sampler import (
    Row,
    ddim_timesteps,
    draw_seed,
    img2img_steps,
    initial_noise,
    sample_step,
)
from shared.tokenizer import PromptTokenizer, TokenizedPrompt, find_clip_vocab

log = logging.getLogger(__name__)


class _LocalStage:
    components: tuple[Component, ...] = ()

    def __init__(self, settings: Settings, family: ModelFamily, worker: ModelWorker) -> None:
        self.settings = settings
        self.family = family
        self.worker = worker
        self.name = worker.name
        self.models: LoadedModels | None = None

    def load(self) -> None:
        """Build and load the models, then warm them at every served size (blocking)."""
        self.warm(self.build())

    def build(self) -> LoadedModels:
        strategy = resolve_strategy(self.settings)
        return load_components(self.settings, self.family, strategy, self.components)

    def warm(self, models: LoadedModels) -> None:
        """Warm up (unless `settings.warm_up` is off), then serve. Warm only after every
        model of the process is built: building seeds TensorFlow (`set_random_seed`),
        which drops traced functions."""
        if self.settings.warm_up:
            self.worker.run_blocking(lambda: self.warm_up(models))
        self.models = models

    def warm_up(self, models: LoadedModels) -> None:
        """Trace every graph a request can hit, so the first request is not slow."""

    def close(self) -> None:
        self.worker.shutdown()

    def batching_sources(self) -> list[BatchingSource]:
        return []

    def describe(self) -> dict[str, Any]:
        if self.models is None:
            return {"family": self.family.spec.name, "sizes": self._sizes(), "loading": True}
        return asdict(self.info())

    def _sizes(self) -> list[str]:
        return [format_size(s) for s in self.settings.sizes]

    def _ready_models(self) -> LoadedModels:
        if self.models is None:
            raise ModelNotReady(f"{self.worker.name} models are still loading")
        return self.models

    def info(self) -> StageInfo:
        models = self._ready_models()
        return StageInfo(
            family=self.family.spec.name,
            weights=dict(models.weights_summary()),
            random_weights=models.random_weights,
            sizes=self._sizes(),
            execution=models.strategy.as_dict(),
            load_seconds=dict(models.load_seconds),
        )


class LocalTextEncoder(_LocalStage):
    """Prompts -> (context, unconditional context), truncating long prompts."""

    components = ("text_encoder",)

    def __init__(
        self,
        settings: Settings,
        family: ModelFamily,
        worker: ModelWorker,
        tokenizer: PromptTokenizer,
    ) -> None:
        super().__init__(settings, family, worker)
        self.tokenizer = tokenizer
        self.batcher: DynamicBatcher[tuple[TokenizedPrompt, TokenizedPrompt], PromptRow] = (
            DynamicBatcher(
                worker,
                self._encode_rows,
                max_batch=settings.max_batch,
                max_wait_s=settings.batch_wait_ms / 1000,
                queue_size=settings.queue_size,
            )
        )

    def batching_sources(self) -> list[BatchingSource]:
        batcher = self.batcher
        return [BatchingSource("text_encoder", batcher.stats, lambda: batcher.queue_depth)]

    def warm_up(self, models: LoadedModels) -> None:
        for batch in (1, 2):
            self.encode_sync(models, ["warm up"] * batch, [""] * batch)

    def encode_sync(
        self, models: LoadedModels, prompts: list[str], negative_prompts: list[str]
    ) -> EncodedPrompts:
        pairs = self._tokenize(prompts, negative_prompts)
        return self._assemble(self._run(models, pairs))

    def _tokenize(
        self, prompts: list[str], negative_prompts: list[str]
    ) -> list[tuple[TokenizedPrompt, TokenizedPrompt]]:
        return [
            (
                self.tokenizer.tokenize(p, param="prompts"),
                self.tokenizer.tokenize(n, param="negative_prompts"),
            )
            for p, n in zip(prompts, negative_prompts, strict=True)
        ]

    def _run(
        self, models: LoadedModels, pairs: list[tuple[TokenizedPrompt, TokenizedPrompt]]
    ) -> list[PromptRow]:
        """One text encoder call over every prompt, then every negative prompt."""
        assert models.text_encoder is not None
        ordered = [p for p, _ in pairs] + [n for _, n in pairs]
        tokens = np.asarray([t.tokens for t in ordered], dtype=np.int32)
        positions = np.tile(
            np.arange(self.family.spec.max_tokens, dtype=np.int32), (len(tokens), 1)
        )
        context = models.text_encoder({"tokens": tokens, "positions": positions})
        batch = len(pairs)
        return [
            PromptRow(context[i], context[batch + i], p.token_count, p.truncated)
            for i, (p, _) in enumerate(pairs)
        ]

    def _encode_rows(
        self, _group: Any, pairs: list[tuple[TokenizedPrompt, TokenizedPrompt]]
    ) -> list[PromptRow]:
        return self._run(self._ready_models(), pairs)

    @staticmethod
    def _assemble(rows: list[PromptRow]) -> EncodedPrompts:
        return EncodedPrompts(
            context=np.stack([r.context for r in rows]),
            unconditional_context=np.stack([r.unconditional_context for r in rows]),
            token_counts=[r.token_count for r in rows],
            truncated=[r.truncated for r in rows],
        )

    async def encode(
        self, prompts: list[str], negative_prompts: list[str | None] | None = None
    ) -> EncodedPrompts:
        """Encode prompts (batched with other requests' prompts into one model call)."""
        if not prompts:
            raise InvalidInput("at least one prompt is needed", param="prompts")
        if len(prompts) > self.settings.max_batch:
            raise InvalidInput(
                f"at most {self.settings.max_batch} prompts per call", param="prompts"
            )
        negatives = list(negative_prompts) if negative_prompts else [None] * len(prompts)
        if len(negatives) != len(prompts):
            raise InvalidInput(
                "negative_prompts must be as long as prompts", param="negative_prompts"
            )
        self._ready_models()
        # keras-cv's unconditional context is the encoding of the empty prompt. Tokenizing
        # here refuses a bad prompt before it can share (and fail) a batch.
        pairs = self._tokenize(prompts, [n or "" for n in negatives])
        rows, timing = await self.batcher.submit(pairs)
        result = self._assemble(rows)
        result.timing = timing
        return result


class LocalDiffusion(_LocalStage):
    """Contexts -> denoised latents, DDIM with classifier-free guidance."""

    components = ("diffusion_model",)

    def __init__(self, settings: Settings, family: ModelFamily, worker: ModelWorker) -> None:
        super().__init__(settings, family, worker)
        self.scheduler = StepScheduler(
            worker,
            self._step,
            max_rows=settings.max_batch,
            queue_size=settings.queue_size,
            admission=settings.admission,
            continuous=settings.continuous_batching,
        )

    def is_full(self) -> bool:
        """Whether a new request would be refused (QueueFull) right now."""
        return self.scheduler.queue_depth >= self.scheduler.queue_size

    def describe(self) -> dict[str, Any]:
        stats = self.scheduler.stats
        recent = stats.rows_per_call
        return {
            **super().describe(),
            "batching": {
                "continuous": self.scheduler.continuous,
                "admission": self.scheduler.admission,
                "max_rows_per_call": self.scheduler.max_rows,
                "queue_size": self.scheduler.queue_size,
                "queue_depth": self.scheduler.queue_depth,
                "model_calls": stats.model_calls,
                "mean_rows_per_call": round(sum(recent) / len(recent), 3) if recent else 0.0,
                "max_rows_in_a_call": max(recent, default=0),
                "cancelled_requests": stats.cancelled_jobs,
            },
        }

    def batching_sources(self) -> list[BatchingSource]:
        scheduler = self.scheduler
        return [BatchingSource("diffusion", scheduler.stats, lambda: scheduler.queue_depth)]

    def _step(self, size: Any, rows: list[Row]) -> None:
        """One scheduler step on the model thread: all `rows` share one UNet call."""
        models = self._ready_models()
        runner = models.diffusion[size]

        def predict(latent: np.ndarray, t_emb: np.ndarray, ctx: np.ndarray) -> np.ndarray:
            return runner({"latent": latent, "timestep_embedding": t_emb, "context": ctx})

        sample_step(predict, rows, batched_cfg=models.strategy.batched_cfg)

    def warm_up(self, models: LoadedModels) -> None:
        shape = (1, self.family.spec.max_tokens, self.family.spec.context_dim)
        zeros = np.zeros(shape, dtype=np.float32)
        for width, height in self.settings.sizes:
            for n in (1, 2):
                params = DenoiseParams(width, height, steps=1, guidance_scale=7.5, n=n)
                rows = self.make_rows(zeros, zeros, params, list(range(n)))
                self.denoise_sync(models, params, rows)

    def check_contexts(
        self, context: np.ndarray, unconditional_context: np.ndarray, n: int
    ) -> None:
        expected = (self.family.spec.max_tokens, self.family.spec.context_dim)
        for name, array in (("context", context), ("unconditional_context", unconditional_context)):
            if array.ndim != 3 or tuple(array.shape[1:]) != expected:
                raise InvalidInput(
                    f"{name} must have shape (1 or n, {expected[0]}, {expected[1]}) for "
                    f"{self.family.spec.name}; got {tuple(array.shape)}",
                    param=name,
                )
            if array.shape[0] not in (1, n):
                raise InvalidInput(
                    f"{name} has batch {array.shape[0]}; expected 1 or n={n}", param=name
                )

    def check_init(
        self, params: DenoiseParams, init_latent: np.ndarray | None, mask: np.ndarray | None
    ) -> None:
        """img2img / inpaint inputs: shapes on the latent grid of the requested size."""
        latent_shape = self.family.latent_shape(params.height, params.width)
        if init_latent is not None:
            if init_latent.ndim != 4 or tuple(init_latent.shape[1:]) != latent_shape:
                raise InvalidInput(
                    f"init_latent must have shape (1 or n, {', '.join(map(str, latent_shape))})"
                    f" for {params.width}x{params.height}; got {tuple(init_latent.shape)}",
                    param="init_latent",
                )
            if init_latent.shape[0] not in (1, params.n):
                raise InvalidInput("init_latent batch must be 1 or n", param="init_latent")
        if mask is not None:
            expected = (*latent_shape[:2], 1)
            if (
                mask.ndim != 4
                or tuple(mask.shape[1:]) != expected
                or mask.shape[0]
                not in (
                    1,
                    params.n,
                )
            ):
                raise InvalidInput(
                    f"mask must have shape (1 or n, {expected[0]}, {expected[1]}, 1); "
                    f"got {tuple(mask.shape)}",
                    param="mask",
                )
            if float(mask.min()) < 0 or float(mask.max()) > 1:
                raise InvalidInput("mask values must be in [0, 1] (1 = repaint)", param="mask")

    def make_rows(
        self,
        context: np.ndarray,
        unconditional_context: np.ndarray,
        params: DenoiseParams,
        seeds: list[int],
        init_latent: np.ndarray | None = None,
        mask: np.ndarray | None = None,
    ) -> list[Row]:
        latent_shape = self.family.latent_shape(params.height, params.width)
        timesteps = ddim_timesteps(params.steps)
        guidance_from = self.family.spec.guidance_from_timestep

        def pick(array: np.ndarray, i: int) -> np.ndarray:
            # Batch 1 is shared by every image of the request.
            return array[min(i, len(array) - 1)][None].astype(np.float32)

        rows = []
        for i, seed in enumerate(seeds):
            if init_latent is None:
                row = Row(
                    latent=initial_noise(seed, latent_shape),
                    context=pick(context, i),
                    unconditional_context=pick(unconditional_context, i),
                    guidance_scale=params.guidance_scale,
                    timesteps=timesteps,
                    guidance_from_timestep=guidance_from,
                )
            else:
                known = pick(init_latent, i)
                row = Row(
                    latent=known,
                    context=pick(context, i),
                    unconditional_context=pick(unconditional_context, i),
                    guidance_scale=params.guidance_scale,
                    timesteps=timesteps,
                    guidance_from_timestep=guidance_from,
                    known_latent=known,
                    mask=None if mask is None else pick(mask, i),
                    num_resamples=params.num_resamples,
                    start_steps=img2img_steps(params.steps, params.strength),
                    rng=np.random.default_rng(seed),
                )
                row.noise_known_to_start()
            rows.append(row)
        return rows

    def denoise_sync(
        self,
        models: LoadedModels,
        params: DenoiseParams,
        rows: list[Row],
    ) -> np.ndarray:
        runner = models.diffusion[(params.width, params.height)]

        def predict(latent: np.ndarray, t_emb: np.ndarray, ctx: np.ndarray) -> np.ndarray:
            return runner({"latent": latent, "timestep_embedding": t_emb, "context": ctx})

        while not all(r.done for r in rows):
            sample_step(predict, rows, batched_cfg=models.strategy.batched_cfg)
        return np.concatenate([r.latent for r in rows])

    async def denoise(
        self,
        context: np.ndarray,
        unconditional_context: np.ndarray,
        params: DenoiseParams,
        *,
        init_latent: np.ndarray | None = None,
        mask: np.ndarray | None = None,
        on_step: ProgressCallback | None = None,
        on_preview: PreviewCallback | None = None,
        preview_every: int = 0,
    ) -> DenoiseResult:
        """txt2img; img2img with `init_latent`; inpaint with `init_latent` and `mask`.

        Rows run under the step scheduler, sharing UNet calls with other requests;
        `on_step(done, total)` is called after each step this request took part in, and
        `on_preview(done, total, rgb)` every `preview_every` steps with a cheap uint8
        picture of the latents (shared.progress.latent_preview).
        """
        check_denoise_params(self.settings, params)
        self.check_contexts(context, unconditional_context, params.n)
        if mask is not None and init_latent is None:
            raise InvalidInput("inpainting needs init_latent", param="init_latent")
        self.check_init(params, init_latent, mask)
        self._ready_models()
        base_seed = draw_seed() if params.seed is None else params.seed
        seeds = [base_seed + i for i in range(params.n)]
        rows = self.make_rows(context, unconditional_context, params, seeds, init_latent, mask)
        progress = on_step
        if on_preview is not None and preview_every > 0:
            progress = _with_previews(rows, on_step, on_preview, preview_every)
        timing = await self.scheduler.run(rows, (params.width, params.height), progress)
        latent = np.concatenate([r.latent for r in rows])
        return DenoiseResult(latent=latent, seeds=seeds, timing=timing)


def _with_previews(
    rows: list[Row],
    on_step: ProgressCallback | None,
    on_preview: PreviewCallback,
    every: int,
) -> ProgressCallback:
    """A progress callback that also sends a preview of the rows every `every` steps."""
    previewed: set[int] = set()  # RePaint resamples report a step more than once

    def progress(done: int, total: int) -> None:
        if on_step is not None:
            on_step(done, total)
        if should_preview(done, total, every) and done not in previewed:
            previewed.add(done)
            on_preview(done, total, latent_preview(np.concatenate([r.latent for r in rows])))

    return progress


def latent_to_images(decoded: np.ndarray) -> np.ndarray:
    """Decoder output in [-1, 1] to uint8 pixels, exactly as keras-cv does it."""
    decoded = ((decoded + 1) / 2) * 255
    return np.clip(decoded, 0, 255).astype("uint8")


def images_to_model_input(images: np.ndarray) -> np.ndarray:
    """uint8 pixels to the [-1, 1] range the VAE encoder was trained on."""
    return images.astype(np.float32) / 127.5 - 1.0


class LocalDecoder(_LocalStage):
    """Latents -> uint8 RGB images, and images -> latents (the VAE encoder)."""

    components = ("decoder", "image_encoder")

    def __init__(self, settings: Settings, family: ModelFamily, worker: ModelWorker) -> None:
        super().__init__(settings, family, worker)
        # Rows of one size go through one model call; each batch is of one size.
        self.decode_batcher: DynamicBatcher[np.ndarray, np.ndarray] = DynamicBatcher(
            worker,
            self._decode_rows,
            max_batch=settings.max_batch,
            max_wait_s=settings.batch_wait_ms / 1000,
            queue_size=settings.queue_size,
        )
        self.encode_batcher: DynamicBatcher[np.ndarray, np.ndarray] = DynamicBatcher(
            worker,
            self._encode_rows,
            max_batch=settings.max_batch,
            max_wait_s=settings.batch_wait_ms / 1000,
            queue_size=settings.queue_size,
        )

    def batching_sources(self) -> list[BatchingSource]:
        decode, encode = self.decode_batcher, self.encode_batcher
        return [
            BatchingSource("decoder", decode.stats, lambda: decode.queue_depth),
            BatchingSource("image_encoder", encode.stats, lambda: encode.queue_depth),
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
        if not 1 <= latent.shape[0] <= self.settings.max_batch:
            raise InvalidInput(
                f"latent batch must be between 1 and {self.settings.max_batch}", param="latent"
            )
        return check_size(self.settings, latent.shape[2] * f, latent.shape[1] * f, param="latent")

    def decode_sync(self, models: LoadedModels, latent: np.ndarray, size: Size) -> np.ndarray:
        return latent_to_images(models.decoder[size](latent.astype(np.float32)))

    async def decode(self, latent: np.ndarray) -> DecodeResult:
        size = self.size_of_latent(latent)
        self._ready_models()
        rows, timing = await self.decode_batcher.submit(list(latent.astype(np.float32)), size)
        return DecodeResult(images=np.stack(rows), timing=timing)

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

    async def encode_image(self, images: np.ndarray) -> EncodeImageResult:
        """uint8 RGB images -> scaled latents (the init latent of img2img and inpaint)."""
        size = self.size_of_images(images)
        self._ready_models()
        rows, timing = await self.encode_batcher.submit(list(images), size)
        return EncodeImageResult(latent=np.stack(rows), timing=timing)


def make_text_encoder(settings: Settings) -> LocalTextEncoder:
    family = get_family(settings.model)
    vocab = find_clip_vocab(settings.clip_vocab)
    tokenizer = PromptTokenizer(vocab, family.spec.max_tokens, family.spec.pad_token)
    worker = ModelWorker("text-encoder", queue_size=settings.queue_size)
    return LocalTextEncoder(settings, family, worker, tokenizer)


def make_diffusion(settings: Settings) -> LocalDiffusion:
    worker = ModelWorker("diffusion", queue_size=settings.queue_size)
    return LocalDiffusion(settings, get_family(settings.model), worker)


def make_decoder(settings: Settings) -> LocalDecoder:
    worker = ModelWorker("decoder", queue_size=settings.queue_size)
    return LocalDecoder(settings, get_family(settings.model), worker)
