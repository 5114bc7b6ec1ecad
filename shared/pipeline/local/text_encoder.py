"""The local text encoder: prompts -> (context, unconditional context)."""

from __future__ import annotations

from typing import Any

import numpy as np

from shared.batching import DynamicBatcher, ModelWorker
from shared.config import Settings
from shared.errors import InvalidInput
from shared.families import get_family
from shared.families.base import ModelFamily
from shared.metrics import BatchingSource
from shared.models import LoadedModels
from shared.pipeline.local.base import LocalStage
from shared.pipeline.stage_contracts import TEXT_ENCODER
from shared.pipeline.types import EncodedPrompts, EncodeRequest, PromptRow
from shared.tokenizer import PromptTokenizer, TokenizedPrompt, find_clip_vocab

PromptPair = tuple[TokenizedPrompt, TokenizedPrompt]


class LocalTextEncoder(LocalStage):
    """Prompts -> (context, unconditional context), truncating long prompts."""

    contract = TEXT_ENCODER
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
        self.batcher: DynamicBatcher[PromptPair, PromptRow] = self.request_batcher(
            self._encode_rows
        )

    def batching_sources(self) -> list[BatchingSource]:
        batcher = self.batcher
        return [
            BatchingSource(
                "text_encoder",
                batcher.stats,
                lambda: batcher.queue_depth,
                self.graph_builds("text_encoder"),
            )
        ]

    def warm_up(self, models: LoadedModels) -> None:
        for batch in (1, 2):
            self.encode_sync(models, ["warm up"] * batch, [""] * batch)

    def encode_sync(
        self, models: LoadedModels, prompts: list[str], negative_prompts: list[str]
    ) -> EncodedPrompts:
        pairs = self._tokenize(prompts, negative_prompts)
        return self._assemble(self._run(models, pairs))

    def _tokenize(self, prompts: list[str], negative_prompts: list[str]) -> list[PromptPair]:
        return [
            (
                self.tokenizer.tokenize(p, param="prompts"),
                self.tokenizer.tokenize(n, param="negative_prompts"),
            )
            for p, n in zip(prompts, negative_prompts, strict=True)
        ]

    def _run(self, models: LoadedModels, pairs: list[PromptPair]) -> list[PromptRow]:
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

    def _encode_rows(self, _group: Any, pairs: list[PromptPair]) -> list[PromptRow]:
        return self._run(self._ready_models(), pairs)

    @staticmethod
    def _assemble(rows: list[PromptRow]) -> EncodedPrompts:
        return EncodedPrompts(
            context=np.stack([r.context for r in rows]),
            unconditional_context=np.stack([r.unconditional_context for r in rows]),
            token_counts=[r.token_count for r in rows],
            truncated=[r.truncated for r in rows],
        )

    async def encode(self, request: EncodeRequest) -> EncodedPrompts:
        """Encode prompts (batched with other requests' prompts into one model call)."""
        prompts = request.prompts
        if not prompts:
            raise InvalidInput("at least one prompt is needed", param="prompts")
        if len(prompts) > self.settings.max_batch:
            raise InvalidInput(
                f"at most {self.settings.max_batch} prompts per call", param="prompts"
            )
        negatives = request.negative_prompts or [None] * len(prompts)
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


def make_text_encoder(settings: Settings) -> LocalTextEncoder:
    family = get_family(settings.model)
    vocab = find_clip_vocab(settings.clip_vocab)
    tokenizer = PromptTokenizer(vocab, family.spec.max_tokens, family.spec.pad_token)
    worker = ModelWorker("text-encoder", queue_size=settings.queue_size)
    return LocalTextEncoder(settings, family, worker, tokenizer)
