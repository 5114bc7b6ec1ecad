"""CLIP BPE tokenization, offline, with truncation that is reported instead of raised.

keras-cv downloads `bpe_simple_vocab_16e6.txt.gz` from GitHub at first use. The very same
file (same sha256; OpenAI CLIP's, MIT-licensed, see shared/clip_vocab/LICENSE) ships inside
this package as package data, so any install of sdserve tokenizes offline.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from shared.errors import InvalidInput, WeightsError

CLIP_VOCAB_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
CLIP_VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
START_TOKEN = 49406
END_TOKEN = 49407
# Long inputs make BPE slow (quadratic in word length); no useful prompt is this long.
MAX_PROMPT_CHARS = 4000
# keras-cv's tokenizer memoises every word it has seen; bound it so a long-running
# service does not grow without limit.
_MAX_CACHED_WORDS = 50_000


def packaged_clip_vocab() -> Path:
    """The vocabulary that ships in this package (shared/clip_vocab/)."""
    # A regular (unzipped) install: the resource is a file on disk, which keras-cv's
    # tokenizer opens by path.
    return Path(str(resources.files("shared") / "clip_vocab" / CLIP_VOCAB_FILE))


def find_clip_vocab(explicit: Path | None = None) -> Path:
    """Locate the CLIP BPE vocabulary (`explicit`, else the packaged one); check its sha256."""
    path = explicit if explicit is not None else packaged_clip_vocab()
    if not path.is_file():
        raise WeightsError(
            f"CLIP BPE vocabulary not found at {path}: point SDSERVE_CLIP_VOCAB at "
            f"{CLIP_VOCAB_FILE} (sha256 {CLIP_VOCAB_SHA256})"
        )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != CLIP_VOCAB_SHA256:
        raise WeightsError(
            f"CLIP vocabulary {path} has sha256 {digest}, expected {CLIP_VOCAB_SHA256}"
        )
    return path


@dataclass(frozen=True)
class TokenizedPrompt:
    tokens: list[int]  # exactly max_tokens long
    token_count: int  # tokens the prompt needed, start and end included
    truncated: bool


class PromptTokenizer:
    """CLIP BPE tokens padded like keras-cv's `encode_text`, truncated CLIP-style."""

    def __init__(self, vocab_path: Path, max_tokens: int = 77, pad_token: int = END_TOKEN):
        # keras-cv's tokenizer is the reference implementation our families match.
        from keras_cv.src.models.stable_diffusion.clip_tokenizer import SimpleTokenizer

        self._tokenizer = SimpleTokenizer(bpe_path=str(vocab_path))
        self.max_tokens = max_tokens
        self.pad_token = pad_token

    def tokenize(self, prompt: str, *, param: str = "prompt") -> TokenizedPrompt:
        if len(prompt) > MAX_PROMPT_CHARS:
            raise InvalidInput(
                f"prompt is {len(prompt)} characters long; at most {MAX_PROMPT_CHARS}",
                param=param,
            )
        if len(self._tokenizer.cache) > _MAX_CACHED_WORDS:
            self._tokenizer.cache = {
                k: v
                for k, v in self._tokenizer.cache.items()
                if k in self._tokenizer.special_tokens
            }
        ids: list[int] = self._tokenizer.encode(prompt)
        count = len(ids)
        truncated = count > self.max_tokens
        if truncated:
            # Keep the start token and as many prompt tokens as fit, then end-of-text.
            ids = [*ids[: self.max_tokens - 1], END_TOKEN]
        ids = ids + [self.pad_token] * (self.max_tokens - len(ids))
        return TokenizedPrompt(tokens=ids, token_count=count, truncated=truncated)
