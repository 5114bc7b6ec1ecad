import gzip

import pytest

from shared.errors import InvalidInput, WeightsError
from shared.tokenizer import (
    CLIP_VOCAB_SHA256,
    END_TOKEN,
    MAX_PROMPT_CHARS,
    START_TOKEN,
    PromptTokenizer,
    find_clip_vocab,
)


@pytest.fixture(scope="module")
def tokenizer():
    return PromptTokenizer(find_clip_vocab(), max_tokens=77)


def test_vocab_found_offline_with_the_published_hash():
    path = find_clip_vocab()
    assert path.name == "bpe_simple_vocab_16e6.txt.gz"
    import hashlib

    assert hashlib.sha256(path.read_bytes()).hexdigest() == CLIP_VOCAB_SHA256


def test_a_tampered_vocab_is_refused(tmp_path):
    fake = tmp_path / "bpe_simple_vocab_16e6.txt.gz"
    fake.write_bytes(gzip.compress(b"not the vocab"))
    with pytest.raises(WeightsError, match="sha256"):
        find_clip_vocab(fake)
    with pytest.raises(WeightsError, match="not found"):
        find_clip_vocab(tmp_path / "missing.gz")


def test_short_prompt_is_padded_like_keras_cv(tokenizer):
    from keras_cv.src.models.stable_diffusion.clip_tokenizer import SimpleTokenizer

    out = tokenizer.tokenize("a photograph of an astronaut riding a horse")
    reference = SimpleTokenizer(str(find_clip_vocab())).encode(
        "a photograph of an astronaut riding a horse"
    )
    assert out.tokens[: len(reference)] == reference
    assert len(out.tokens) == 77
    assert out.tokens[len(reference) :] == [END_TOKEN] * (77 - len(reference))
    assert out.token_count == len(reference)
    assert not out.truncated


def test_empty_prompt_is_keras_cv_unconditional_tokens(tokenizer):
    from keras_cv.src.models.stable_diffusion.constants import _UNCONDITIONAL_TOKENS

    assert tokenizer.tokenize("").tokens == list(_UNCONDITIONAL_TOKENS)


def test_long_prompt_is_truncated_and_reported(tokenizer):
    out = tokenizer.tokenize("cat " * 100)
    assert out.truncated
    assert out.token_count == 102  # start + 100 words + end
    assert len(out.tokens) == 77
    assert out.tokens[0] == START_TOKEN
    assert out.tokens[-1] == END_TOKEN
    assert out.tokens[1:-1] == out.tokens[1:2] * 75


def test_exactly_77_tokens_is_not_truncated(tokenizer):
    out = tokenizer.tokenize("cat " * 75)
    assert out.token_count == 77 and not out.truncated


def test_absurdly_long_prompt_is_refused_naming_the_field(tokenizer):
    with pytest.raises(InvalidInput) as info:
        tokenizer.tokenize("x" * (MAX_PROMPT_CHARS + 1), param="prompt")
    assert info.value.param == "prompt"


def test_the_vocab_ships_in_the_package_not_in_another_wheel(monkeypatch):
    """Found with no open_clip / clip wheel installed, through importlib.resources."""
    import builtins
    import importlib.metadata
    import tomllib
    from fnmatch import fnmatch
    from pathlib import Path

    import shared
    from shared.tokenizer import packaged_clip_vocab

    real_import = builtins.__import__

    def no_clip_wheels(name, *args, **kwargs):
        if name.split(".")[0] in {"open_clip", "clip"}:
            raise ModuleNotFoundError(name)
        return real_import(name, *args, **kwargs)

    def no_distribution(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(builtins, "__import__", no_clip_wheels)
    monkeypatch.setattr(importlib.metadata, "files", no_distribution)
    monkeypatch.setattr(importlib.metadata, "distribution", no_distribution)
    path = find_clip_vocab()
    package = Path(shared.__file__).parent
    assert path == packaged_clip_vocab() == package / "clip_vocab" / path.name
    assert (package / "clip_vocab" / "LICENSE").read_text().count("Copyright (c) 2021 OpenAI")
    # pyproject's package data takes both files into the wheel.
    root = package.parent
    package_data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]
    for name in (path.name, "LICENSE"):
        assert any(fnmatch(f"clip_vocab/{name}", glob) for glob in package_data["shared"])
