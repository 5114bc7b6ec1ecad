"""The models one gateway serves: one chain each, sharing stages where they can.

Without a models file the gateway serves one model (SDSERVE_MODEL with SDSERVE_WEIGHTS,
named after its family). `SDSERVE_MODELS_FILE` names several, in TOML:

    [[model]]
    name = "tiny"                    # what a request's `model` field says; the first is
    family = "tiny"                  # the default
    weights = "embedded"             # embedded | pretrained | random | a directory
    diffusion_url = "http://diffusion:8002"      # its diffusion replicas (else local)

    [[model]]
    name = "tiny-alt"
    family = "tiny"
    weights = "/weights/tiny-alt"
    diffusion_url = "http://diffusion-alt:8002"

`text_encoder_url` and `decoder_url` may be given per model too; by default they are the
gateway's (SDSERVE_TEXT_ENCODER_URL / SDSERVE_DECODER_URL). Models of one family share
the text encoder and decoder (local ones are built once, with the weights of the first
model of that family), so a new diffusion model deploys beside the others while the
text encoder and decoder stay as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from shared.config import ConfigError, Settings
from shared.errors import ModelNotFound
from shared.pipeline.chain import Chain, build_stage
from shared.pipeline.contract import StageContract
from shared.pipeline.local.decoder import make_decoder
from shared.pipeline.local.diffusion import make_diffusion
from shared.pipeline.local.text_encoder import make_text_encoder
from shared.pipeline.models_file import ModelEntry, read_models_file
from shared.pipeline.remote import RemoteStage
from shared.pipeline.stage import Progress, Stage, describe_all, load_all, readiness_of
from shared.pipeline.stage_contracts import DECODER, DIFFUSION, TEXT_ENCODER
from shared.pipeline.types import (
    DenoiseParams,
    EditInputs,
    GenerationParams,
    GenerationResult,
)


def model_settings(base: Settings, entry: ModelEntry) -> Settings:
    """The gateway's settings with the entry's family, weights and stage URLs."""
    values: dict[str, Any] = dict(base)
    values.update(
        model=entry.family,
        weights=entry.weights,
        diffusion_url=entry.diffusion_url,
        text_encoder_url=entry.text_encoder_url or base.text_encoder_url,
        decoder_url=entry.decoder_url or base.decoder_url,
        models_file=None,
    )
    if entry.family != base.model:
        values["sizes"] = []  # the family's own defaults
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(f"SDSERVE_MODELS_FILE: model {entry.name}: {first['msg']}") from None


class Catalog:
    """The gateway's models by name; each request runs on the chain of its `model`."""

    def __init__(self, settings: Settings, chains: dict[str, Chain] | None = None) -> None:
        """The models of `settings` (its models file, or its one model); or `chains`,
        already built."""
        self.settings = settings
        self.chains: dict[str, Chain]
        if chains:
            self.chains = dict(chains)
        elif settings.models_file is None:
            self.chains = {settings.model: Chain(settings)}
        else:
            self.chains = self._build(settings, read_models_file(settings.models_file))
        self.default = next(iter(self.chains.values()))
        self.stages = self._unique_stages()

    @staticmethod
    def _build(settings: Settings, entries: list[ModelEntry]) -> dict[str, Chain]:
        built: dict[tuple[str | None, ...], Stage] = {}

        def stage(
            contract: StageContract, url: str | None, s: Settings, make: Callable[[Settings], Stage]
        ) -> Stage:
            """One stage per URL, or per family and weights when local."""
            key = (contract.name, url) if url else (contract.name, s.model, s.weights)
            if key not in built:
                built[key] = build_stage(contract, url, s, make)
            return built[key]

        of_model = {entry.name: model_settings(settings, entry) for entry in entries}
        # A family's text encoder and decoder: those of its first model.
        of_family: dict[str, Settings] = {}
        for entry in entries:
            of_family.setdefault(entry.family, of_model[entry.name])
        chains = {}
        for entry in entries:
            s, family_settings = of_model[entry.name], of_family[entry.family]
            stages = (
                stage(TEXT_ENCODER, s.text_encoder_url, family_settings, make_text_encoder),
                stage(DIFFUSION, s.diffusion_url, s, make_diffusion),
                stage(DECODER, s.decoder_url, family_settings, make_decoder),
            )
            chains[entry.name] = Chain(s, name=entry.name, stages=stages)
        return chains

    # --------------------------------------------------------- one chain per request

    def chain_for(self, name: str | None) -> Chain:
        if name is None:
            return self.default
        chain = self.chains.get(name)
        if chain is None:
            raise ModelNotFound(
                f"model {name!r} is not served here; models: {', '.join(self.chains)}",
                param="model",
            )
        return chain

    def settings_for(self, name: str | None) -> Settings:
        """The settings of the model a request names (its family's default steps,
        guidance, sampler and sizes fill in what the request leaves out)."""
        chain = self.chain_for(name)
        # Without a models file, the one model is the gateway's own settings' (a chain
        # given already built may have been built with other limits: the gateway's count).
        return chain.settings if self.settings.models_file is not None else self.settings

    def check(self, params: GenerationParams) -> DenoiseParams:
        return self.chain_for(params.model).check(params)

    async def generate(
        self,
        params: GenerationParams,
        edit: EditInputs | None = None,
        *,
        progress: Progress | None = None,
    ) -> GenerationResult:
        return await self.chain_for(params.model).generate(params, edit, progress=progress)

    # --------------------------------------------------------- every stage, once

    def _unique_stages(self) -> dict[str, Stage]:
        """Each stage once, named as in the default chain, then `name@model`."""
        seen: set[int] = set()
        named: dict[str, Stage] = {}
        for model, chain in self.chains.items():
            for stage_name, stage in chain.stages.items():
                if id(stage) not in seen:
                    seen.add(id(stage))
                    label = stage_name if chain is self.default else f"{stage_name}@{model}"
                    named[label] = stage
        return named

    @property
    def topology(self) -> str:
        return self.default.topology

    def random_weights(self) -> bool:
        return any(c.random_weights() for c in self.chains.values())

    def load(self) -> None:
        """Load every stage once, then warm them all."""
        load_all(self.stages.values())

    async def readiness(self) -> tuple[bool, dict[str, str]]:
        return await readiness_of(self.stages)

    async def describe_stages(self) -> dict[str, Any]:
        return await describe_all(self.stages)

    def retries(self) -> dict[str, dict[str, int]]:
        return {
            name: dict(stage.pool.retries)
            for name, stage in self.stages.items()
            if isinstance(stage, RemoteStage)
        }

    def replicas(self) -> dict[str, list[dict[str, object]]]:
        return {
            name: stage.pool.describe()
            for name, stage in self.stages.items()
            if isinstance(stage, RemoteStage)
        }

    async def aclose(self) -> None:
        for stage in self.stages.values():
            await stage.close()
