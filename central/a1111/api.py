"""What the /sdapi/v1 routes do, over the gateway's jobs (central/jobs/).

A txt2img or img2img request becomes a /v1/jobs body (central/a1111/schemas.py), is
submitted as a job of the caller's API key and waited for: so it is validated, checked,
run, previewed, cancelled and counted against the key exactly as a job is, and
/progress and /interrupt see it. A client that hangs up cancels it.

/progress and /interrupt act on the caller's *current* job: of the API key's unfinished
jobs (every job of no key, when keys are off, as A1111 has one queue), the oldest
running one, else the oldest queued one. The checkpoint POST /options selects is kept
per API key in the job store, so every gateway replica sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from typing import Any

from fastapi import Request

from central.a1111.errors import a1111_names
from central.a1111.images import edit_images
from central.a1111.info import RunInfo
from central.a1111.samplers import SAMPLERS, SamplerChoice, choose_sampler
from central.a1111.schemas import (
    CHECKPOINT,
    GenerationFields,
    Img2ImgRequest,
    ProgressResponse,
    SamplerItem,
    SDModelItem,
    TextToImageResponse,
    Txt2ImgRequest,
)
from central.bodies import off_loop
from central.jobs.records import JobRecord
from central.jobs.runner import JobRunner
from shared.config import Settings, Size
from shared.errors import JobNotFound, ModelNotFound, SdserveError, error_of_type
from shared.families import get_family
from shared.http import cancel_on_disconnect
from shared.pipeline.catalog import Catalog

# A checkpoint title as A1111 clients send it: "name", "name.safetensors", "name [hash]".
_TITLE_DECORATION = re.compile(r"(\.safetensors|\.ckpt)?( \[[0-9a-fA-F]+\])?$")


class A1111Api:
    def __init__(self, runner: JobRunner, catalog: Catalog, settings: Settings, version: str):
        self.runner = runner
        self.store = runner.store
        self.catalog = catalog
        self.settings = settings
        self.version = f"sdserve {version}"

    # --- models, samplers, options ------------------------------------------------------

    def sd_models(self) -> list[SDModelItem]:
        # No file names or paths: the model's name is all a caller needs to pick it.
        return [
            SDModelItem(title=n, model_name=n, hash=None, sha256=None, filename=n, config=None)
            for n in self.catalog.chains
        ]

    @staticmethod
    def samplers() -> list[SamplerItem]:
        return [SamplerItem(name=s.name, aliases=list(s.aliases), options={}) for s in SAMPLERS]

    def find_model(self, title: str, *, param: str) -> str:
        """The served model an A1111 checkpoint title names (404 naming `param`)."""
        for candidate in (title, _TITLE_DECORATION.sub("", title)):
            if candidate in self.catalog.chains:
                return candidate
        raise ModelNotFound(
            f"{param}: no model {title!r} here; models: {', '.join(self.catalog.chains)}",
            param=param,
        )

    async def selected_model(self, key: str | None) -> str:
        """The model POST /options selected for this key, while it is still served."""
        chosen = await self.store.setting(key or "", CHECKPOINT)
        return chosen if chosen in self.catalog.chains else self.catalog.default.name

    async def options(self, key: str | None) -> dict[str, Any]:
        return {
            CHECKPOINT: await self.selected_model(key),
            "sd_checkpoint_hash": None,
            "samples_format": "png",
            "CLIP_stop_at_last_layers": 1,
        }

    async def set_options(self, key: str | None, changes: dict[str, Any]) -> dict[str, Any]:
        """Select a checkpoint (other options are accepted and have no effect here)."""
        title = changes.get(CHECKPOINT)
        if title is not None:
            model = self.find_model(str(title), param=CHECKPOINT)
            await self.store.set_setting(key or "", CHECKPOINT, model)
        return await self.options(key)

    # --- generation ---------------------------------------------------------------------

    async def txt2img(
        self, request: Request, body: Txt2ImgRequest, key: str | None
    ) -> TextToImageResponse:
        return await self._generate(request, body, key)

    async def img2img(
        self, request: Request, body: Img2ImgRequest, key: str | None
    ) -> TextToImageResponse:
        return await self._generate(request, body, key)

    async def _generate(
        self, request: Request, body: GenerationFields, key: str | None
    ) -> TextToImageResponse:
        with a1111_names():
            model, size, sampler = await self._plan(body, key)
            fields = body.job_fields(self.catalog.settings_for(model), size, model, sampler)
            if isinstance(body, Img2ImgRequest):
                fields.update(await self._edit_fields(body, model))
            record = await self.runner.submit(fields, key)
        run = self._run_info(body, fields, size, model, sampler, record)
        await self._finish(request, record, key, run)
        images = self._images(run) if body.send_images is not False else []
        return TextToImageResponse(images=images, parameters=body.parameters(), info=run.encoded())

    async def _edit_fields(self, body: Img2ImgRequest, model: str) -> dict[str, Any]:
        """An edit job's own fields: its image and mask (off the loop: they may be
        re-encoded), strength and mask blur."""
        settings = self.catalog.settings_for(model)  # its sizes bound the uploads
        image, mask = await off_loop(
            edit_images,
            body.init_images[0],
            body.mask,
            invert_mask=body.inpainting_mask_invert == 1,
            settings=settings,
        )
        family = get_family(settings.model).spec
        return {
            "kind": "edit",
            "image": image,
            "mask": mask,
            "strength": body.strength,
            "mask_blur": body.latent_mask_blur(family.downsampling_factor),
        }

    async def _plan(
        self, body: GenerationFields, key: str | None
    ) -> tuple[str, Size, SamplerChoice]:
        if body.checkpoint is not None:
            model = self.find_model(body.checkpoint, param=f"override_settings.{CHECKPOINT}")
        else:
            model = await self.selected_model(key)
        settings = self.catalog.settings_for(model)
        return (
            model,
            body.size(settings.sizes),
            choose_sampler(body.requested_sampler, settings.sampler),
        )

    def _run_info(
        self,
        body: GenerationFields,
        fields: dict[str, Any],
        size: Size,
        model: str,
        sampler: SamplerChoice,
        record: JobRecord,
    ) -> RunInfo:
        substituted = {}
        if sampler.substituted and sampler.requested is not None:
            substituted["sampler_name"] = {"requested": sampler.requested, "ran": sampler.ran.name}
        return RunInfo(
            prompt=fields["prompt"],
            negative_prompt=body.negative_prompt or "",
            seeds=[],
            width=size[0],
            height=size[1],
            sampler_name=sampler.ran.name,
            cfg_scale=fields["guidance_scale"],
            steps=fields["steps"],
            batch_size=body.batch_size or 1,
            model=model,
            version=self.version,
            job_id=record.id,
            started=record.created,
            denoising_strength=body.denoising(),
            extra_generation_params=body.extra_generation_params(),
            ignored=body.ignored(),
            substituted=substituted,
        )

    async def _finish(
        self, request: Request, record: JobRecord, key: str | None, run: RunInfo
    ) -> None:
        """Wait for the job to end and fill `run` in from it: its images and seeds, or
        (interrupted) the seeds it was to use; a failure is raised as the error it is."""
        try:
            final = await cancel_on_disconnect(request, self._ended(record.id))
        except asyncio.CancelledError:
            # The client hung up: nobody will read the images, so stop making them.
            with contextlib.suppress(SdserveError):
                await self.runner.cancel(record.id, key)
            raise
        run.started = final.started or final.created
        if final.status == "failed":
            error = final.error or {}
            raise error_of_type(
                str(error.get("type", "internal_error")),
                str(error.get("message", "the job failed")),
                error.get("param"),
            )
        if final.status == "succeeded" and final.result is not None:
            run.result = final.result
            run.seeds = [int(image["seed"]) for image in final.result["data"]]
            return
        # Interrupted: no images, and the seeds they were to have (the job drew its seed).
        run.interrupted = True
        posted = json.loads(await self.store.request(record.id))
        run.seeds = [int(posted["seed"]) + i for i in range(int(posted["n"]))]

    async def _ended(self, job_id: str) -> JobRecord:
        async for _ in self.store.events(job_id):
            pass  # a job's events end with its last one (done, error or cancelled)
        return await self.store.get(job_id)

    @staticmethod
    def _images(run: RunInfo) -> list[str]:
        if run.result is None:
            return []
        return [str(image["b64_json"]) for image in run.result["data"]]

    # --- progress and interrupt ---------------------------------------------------------

    async def progress(self, key: str | None, *, skip_current_image: bool) -> ProgressResponse:
        jobs = await self.store.unfinished(key or "")
        if not jobs:
            return ProgressResponse(progress=0.0, eta_relative=0.0, state=_state(None, 0))
        job = _current(jobs)
        done = job.step / job.total if job.total else 0.0
        eta = 0.0
        if job.started is not None and done > 0:
            elapsed = max(0.0, time.time() - job.started)
            eta = elapsed / done - elapsed
        image = None
        if not skip_current_image and job.status == "running":
            with contextlib.suppress(JobNotFound):
                preview = await self.store.last_event(job.id, "preview")
                if preview is not None and preview.data.get("images"):
                    image = str(preview.data["images"][0]).split(",", 1)[-1]
        text = f"Step {job.step}/{job.total}" if job.status == "running" else "Queued"
        return ProgressResponse(
            progress=min(1.0, done),
            eta_relative=eta,
            state=_state(job, len(jobs)),
            current_image=image,
            textinfo=text,
        )

    async def interrupt(self, key: str | None) -> None:
        """Cancel the current job (A1111 stops what it is drawing; queued work goes on)."""
        jobs = await self.store.unfinished(key or "")
        if jobs:
            with contextlib.suppress(JobNotFound):
                await self.runner.cancel(_current(jobs).id, key)


def _current(jobs: list[JobRecord]) -> JobRecord:
    running = [job for job in jobs if job.status == "running"]
    return min(running, key=lambda job: job.started or job.created) if running else jobs[0]


def _state(job: JobRecord | None, count: int) -> dict[str, Any]:
    """A1111's `shared.state.dict()`: the current job, and how many the key has."""
    stamp = time.strftime("%Y%m%d%H%M%S", time.localtime(job.created)) if job else "0"
    return {
        "skipped": False,
        "interrupted": bool(job and job.cancel),
        "stopping_generation": False,
        "job": job.id if job else "",
        "job_count": count,
        "job_timestamp": stamp,
        "job_no": 0,
        "sampling_step": job.step if job else 0,
        "sampling_steps": job.total if job else 0,
    }
