"""The three stages as in-process ("local") objects. No HTTP here.

The stage services are thin HTTP wrappers around these objects, and central uses the
very same objects when a stage is configured local, so every topology runs this code.
Each stage validates its own inputs (raising the shared error types), so a request is
refused identically whether it came over HTTP or from central in-process.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from shared.batching import ModelWorker, Timing
from shared.config import Settings, Size, format_size
from shared.errors import InvalidInput, ModelNotReady, UnsupportedSize
from shared.execution import resolve_strategy
from shared.families import get_family
from shared.families.base import Component, ModelFamily
from shared.models import LoadedModels, load_components
from shared.sampler import MAX_SEED, Row, draw_seed, initial_noise, sample_step
from shared.tokenizer import PromptTokenizer, find_clip_vocab

log = logging.getLogger(__name__)

MAX_GUIDANCE_SCALE = 50.0


@dataclass
class EncodedPrompts:
    context: np.ndarray  # (B, T, D)
    unconditional_context: np.ndarray  # (B, T, D)
    token_counts: list[int]
    truncated: list[bool]
    timing: Timing | None = None


@dataclass(frozen=True)
class DenoiseParams:
    width: int
    height: int
    steps: int
    guidance_scale: float
    seed: int | None = None
    n: int = 1


@dataclass
class DenoiseResult:
    latent: np.ndarray  # (n, h, w, c) float32
    seeds: list[int]
    timing: Timing | None = None


@dataclass
class DecodeResult:
    images: np.ndarray  # (B, H, W, 3) uint8
    timing: Timing | None = None


@dataclass
class StageInfo:
    """What /v1/info reports for a stage."""

    family: str
    weights: dict[str, str]
    random_weights: bool
    sizes: list[str]
    execution: dict[str, Any]
    load_seconds: dict[str, float] = field(default_factory=dict)


def check_size(settings: Settings, width: int, height: int, *, param: str = "size") -> Size:
    size = (width, height)
    if size not in settings.sizes:
        served = ", ".join(format_size(s) for s in settings.sizes)
        raise UnsupportedSize(
            f"size {width}x{height} is not served here; served sizes: {served}", param=param
        )
    return size


def check_denoise_params(settings: Settings, params: DenoiseParams) -> None:
    check_size(settings, params.width, params.height)
    if not 1 <= params.steps <= settings.max_steps:
        raise InvalidInput(f"steps must be between 1 and {settings.max_steps}", param="steps")
    if not 1 <= params.n <= settings.max_images_per_request:
        raise InvalidInput(f"n must be between 1 and {settings.max_images_per_request}", param="n")
    if not (0.0 <= params.guidance_scale <= MAX_GUIDANCE_SCALE):
        raise InvalidInput(
            f"guidance_scale must be between 0 and {MAX_GUIDANCE_SCALE}", param="guidance_scale"
        )
    if params.seed is not None and not 0 <= params.seed <= MAX_SEED:
        raise InvalidInput(f"seed must be between 0 and {MAX_SEED}", param="seed")


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
        strategy = resolve_strategy(self.settings)
        models = load_components(self.settings, self.family, strategy, self.components)
        self.worker.run_blocking(lambda: self.warm_up(models))
        self.models = models

    def warm_up(self, models: LoadedModels) -> None:
        """Trace every graph a request can hit, so the first request is not slow."""

    def close(self) -> None:
        self.worker.shutdown()

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

    def warm_up(self, models: LoadedModels) -> None:
        for batch in (1, 2):
            self.encode_sync(models, ["warm up"] * batch, [""] * batch)

    def encode_sync(
        self, models: LoadedModels, prompts: list[str], negative_prompts: list[str]
    ) -> EncodedPrompts:
        assert models.text_encoder is not None
        positive = [self.tokenizer.tokenize(p, param="prompts") for p in prompts]
        negative = [self.tokenizer.tokenize(p, param="negative_prompts") for p in negative_prompts]
        tokens = np.asarray([t.tokens for t in positive + negative], dtype=np.int32)
        positions = np.tile(
            np.arange(self.family.spec.max_tokens, dtype=np.int32), (len(tokens), 1)
        )
        context = models.text_encoder({"tokens": tokens, "positions": positions})
        batch = len(prompts)
        return EncodedPrompts(
            context=context[:batch],
            unconditional_context=context[batch:],
            token_counts=[t.token_count for t in positive],
            truncated=[t.truncated for t in positive],
        )

    async def encode(
        self, prompts: list[str], negative_prompts: list[str | None] | None = None
    ) -> EncodedPrompts:
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
        # keras-cv's unconditional context is the encoding of the empty prompt.
        negative_text = [n or "" for n in negatives]
        models = self._ready_models()
        result, timing = await self.worker.run(
            lambda: self.encode_sync(models, prompts, negative_text)
        )
        result.timing = timing
        return result


class LocalDiffusion(_LocalStage):
    """Contexts -> denoised latents, DDIM with classifier-free guidance."""

    components = ("diffusion_model",)

    def warm_up(self, models: LoadedModels) -> None:
        shape = (1, self.family.spec.max_tokens, self.family.spec.context_dim)
        zeros = np.zeros(shape, dtype=np.float32)
        for width, height in self.settings.sizes:
            for n in (1, 2):
                params = DenoiseParams(width, height, steps=1, guidance_scale=7.5, n=n)
                self.denoise_sync(models, zeros, zeros, params, list(range(n)))

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

    def denoise_sync(
        self,
        models: LoadedModels,
        context: np.ndarray,
        unconditional_context: np.ndarray,
        params: DenoiseParams,
        seeds: list[int],
    ) -> np.ndarray:
        from shared.sampler import ddim_timesteps

        runner = models.diffusion[(params.width, params.height)]
        latent_shape = self.family.latent_shape(params.height, params.width)
        timesteps = ddim_timesteps(params.steps)
        rows = [
            Row(
                latent=initial_noise(seed, latent_shape),
                context=context[min(i, len(context) - 1)][None].astype(np.float32),
                unconditional_context=unconditional_context[min(i, len(unconditional_context) - 1)][
                    None
                ].astype(np.float32),
                guidance_scale=params.guidance_scale,
                timesteps=timesteps,
            )
            for i, seed in enumerate(seeds)
        ]

        def predict(latent: np.ndarray, t_emb: np.ndarray, ctx: np.ndarray) -> np.ndarray:
            return runner({"latent": latent, "timestep_embedding": t_emb, "context": ctx})

        while not rows[0].done:
            sample_step(predict, rows, batched_cfg=models.strategy.batched_cfg)
        return np.concatenate([r.latent for r in rows])

    async def denoise(
        self, context: np.ndarray, unconditional_context: np.ndarray, params: DenoiseParams
    ) -> DenoiseResult:
        check_denoise_params(self.settings, params)
        self.check_contexts(context, unconditional_context, params.n)
        models = self._ready_models()
        base_seed = draw_seed() if params.seed is None else params.seed
        seeds = [base_seed + i for i in range(params.n)]
        latent, timing = await self.worker.run(
            lambda: self.denoise_sync(models, context, unconditional_context, params, seeds)
        )
        return DenoiseResult(latent=latent, seeds=seeds, timing=timing)


def latent_to_images(decoded: np.ndarray) -> np.ndarray:
    """Decoder output in [-1, 1] to uint8 pixels, exactly as keras-cv does it."""
    decoded = ((decoded + 1) / 2) * 255
    return np.clip(decoded, 0, 255).astype("uint8")


class LocalDecoder(_LocalStage):
    """Latents -> uint8 RGB images."""

    components = ("decoder",)

    def warm_up(self, models: LoadedModels) -> None:
        for size in self.settings.sizes:
            for n in (1, 2):
                latent = np.zeros((n, *self.family.latent_shape(size[1], size[0])), np.float32)
                self.decode_sync(models, latent, size)

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
        models = self._ready_models()
        images, timing = await self.worker.run(lambda: self.decode_sync(models, latent, size))
        return DecodeResult(images=images, timing=timing)


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
