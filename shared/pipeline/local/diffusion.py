"""The local diffusion stage: contexts (+ init latent, mask) -> denoised latents."""

from __future__ import annotations

from typing import Any

import numpy as np

from shared.batching import ModelWorker, ProgressCallback, StepScheduler
from shared.config import Settings
from shared.errors import InvalidInput, QueueFull
from shared.families import get_family
from shared.families.base import LatentPreviewMap, ModelFamily
from shared.metrics import BatchingSource
from shared.models import LoadedModels
from shared.noise_schedule import draw_seed, img2img_steps, initial_noise
from shared.pipeline.local.base import LocalStage
from shared.pipeline.stage import Progress
from shared.pipeline.stage_contracts import DIFFUSION
from shared.pipeline.types import (
    DenoiseParams,
    DenoiseRequest,
    DenoiseResult,
    check_denoise_params,
)
from shared.progress import PreviewCallback, latent_preview, should_preview
from shared.sampler import Row, sample_step, sampler_schedule


class LocalDiffusion(LocalStage):
    """Contexts -> denoised latents: each request's sampler (DDIM, DPM++ 2M, Euler
    ancestral; shared.sampler) with classifier-free guidance."""

    contract = DIFFUSION
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

    def admit(self) -> None:
        """Refuse before the text encoder works, when the queue would refuse anyway."""
        if self.is_full():
            raise QueueFull("diffusion queue is full", retry_after_s=1)

    def summary(self) -> dict[str, Any]:
        stats = self.scheduler.stats
        recent = stats.rows_per_call
        return {
            **super().summary(),
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
        return [
            BatchingSource(
                "diffusion",
                scheduler.stats,
                lambda: scheduler.queue_depth,
                self.graph_builds("diffusion_model"),
            )
        ]

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
                params = DenoiseParams(width=width, height=height, steps=1, guidance_scale=7.5, n=n)
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
        schedule = sampler_schedule(params.sampler, params.steps)
        guidance_from = self.family.spec.guidance_from_timestep
        # What the loaded UNet predicts (converted SD 2.x 768 models: v); warm-up runs
        # before `self.models` is set, so fall back to the models just built.
        models = self.models or self._built
        prediction_type = "epsilon" if models is None else models.prediction_type

        def pick(array: np.ndarray, i: int) -> np.ndarray:
            # Batch 1 is shared by every image of the request.
            return array[min(i, len(array) - 1)][None].astype(np.float32)

        rows = []
        for i, seed in enumerate(seeds):
            # One stream per image: its initial noise (or img2img's), then whatever noise
            # its sampler and inpainting draw, step after step.
            rng = np.random.default_rng(seed)
            known = None if init_latent is None else pick(init_latent, i)
            row = Row(
                latent=initial_noise(rng, latent_shape) if known is None else known,
                context=pick(context, i),
                unconditional_context=pick(unconditional_context, i),
                guidance_scale=params.guidance_scale,
                timesteps=schedule.timesteps,
                guidance_from_timestep=guidance_from,
                known_latent=known,
                mask=None if mask is None else pick(mask, i),
                num_resamples=params.num_resamples,
                start_steps=None if known is None else img2img_steps(params.steps, params.strength),
                rng=rng,
                sampler=params.sampler,
                sigmas=schedule.sigmas,
                prediction_type=prediction_type,
            )
            if known is None:
                row.start_from_noise()
            else:
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
        self, request: DenoiseRequest, progress: Progress | None = None
    ) -> DenoiseResult:
        """txt2img; img2img with `init_latent`; inpaint with `init_latent` and `mask`.

        Rows run under the step scheduler, sharing UNet calls with other requests;
        `progress.on_step(done, total)` is called after each step this request took part
        in, and `progress.on_preview(done, total, rgb)` every `progress.preview_every`
        steps with a cheap uint8 picture of the latents (shared.progress.latent_preview, with
        the family's `FamilySpec.preview_map`).
        """
        params, init_latent, mask = request.params, request.init_latent, request.mask
        check_denoise_params(self.settings, params)
        self.check_contexts(request.context, request.unconditional_context, params.n)
        if mask is not None and init_latent is None:
            raise InvalidInput("inpainting needs init_latent", param="init_latent")
        self.check_init(params, init_latent, mask)
        self._ready_models()
        base_seed = draw_seed() if params.seed is None else params.seed
        seeds = [base_seed + i for i in range(params.n)]
        rows = self.make_rows(
            request.context, request.unconditional_context, params, seeds, init_latent, mask
        )
        on_step = progress.on_step if progress else None
        if progress is not None and progress.on_preview is not None and progress.preview_every:
            on_step = _with_previews(
                rows,
                on_step,
                progress.on_preview,
                progress.preview_every,
                self.family.spec.preview_map,
            )
        timing = await self.scheduler.run(rows, (params.width, params.height), on_step)
        latent = np.concatenate([r.latent for r in rows])
        return DenoiseResult(latent=latent, seeds=seeds, timing=timing)


def _with_previews(
    rows: list[Row],
    on_step: ProgressCallback | None,
    on_preview: PreviewCallback,
    every: int,
    preview_map: LatentPreviewMap | None,
) -> ProgressCallback:
    """A progress callback that also sends a preview of the rows every `every` steps,
    drawn with the family's `preview_map`."""
    previewed: set[int] = set()  # RePaint resamples report a step more than once

    def progress(done: int, total: int) -> None:
        if on_step is not None:
            on_step(done, total)
        if should_preview(done, total, every) and done not in previewed:
            previewed.add(done)
            latent = np.concatenate([r.latent for r in rows])
            on_preview(done, total, latent_preview(latent, preview_map))

    return progress


def make_diffusion(settings: Settings) -> LocalDiffusion:
    worker = ModelWorker("diffusion", queue_size=settings.queue_size)
    return LocalDiffusion(settings, get_family(settings.model), worker)
