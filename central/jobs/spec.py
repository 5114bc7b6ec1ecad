"""What a job runs: its posted body, parsed, with the seed fixed so any replica that runs
it again makes the same image."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from central.schemas import ImageGenerationRequest, JobKind
from central.serving import SettingsOf, edit_from_json
from shared.errors import InvalidInput
from shared.noise_schedule import draw_seed, img2img_steps
from shared.pipeline.contract import validated
from shared.pipeline.types import EditInputs, GenerationParams


@dataclass(frozen=True)
class JobSpec:
    kind: JobKind
    params: GenerationParams
    edit: EditInputs | None
    response_format: str
    body: dict[str, Any]  # as posted, plus the seed drawn for it: kept to run it again

    @property
    def total(self) -> int:
        """The steps its progress counts to (an edit runs only the strength's share)."""
        denoise = self.params.denoise
        if self.edit is not None:
            return img2img_steps(denoise.steps, denoise.strength)
        return denoise.steps

    def encoded(self) -> str:
        return json.dumps(self.body, separators=(",", ":"))


async def parse_job(body: Any, settings_of: SettingsOf) -> JobSpec:
    """A POST /v1/jobs body: a generations body, or an edits JSON body with kind "edit"
    (422 naming the field when it is wrong). A body without a seed gets one now."""
    if not isinstance(body, dict):
        raise InvalidInput("body must be a JSON object", param="body")
    if body.get("seed") is None:
        body = {**body, "seed": draw_seed()}
    kind = body.get("kind", "generation")
    if kind == "generation":
        generation = validated(ImageGenerationRequest, body)
        return JobSpec(
            kind,
            generation.to_params(settings_of(generation.model)),
            None,
            generation.response_format,
            body,
        )
    if kind == "edit":
        edit_body, params, edit = await edit_from_json(body, settings_of)
        return JobSpec(kind, params, edit, edit_body.response_format, body)
    raise InvalidInput('kind must be "generation" or "edit"', param="kind")


async def stored_job(encoded: str, settings_of: SettingsOf) -> JobSpec:
    """A job's stored body, parsed again on the replica that takes it over."""
    return await parse_job(json.loads(encoded), settings_of)
