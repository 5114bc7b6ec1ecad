"""The gateway's real chain, loaded once for the tests that run requests in-process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shared.pipeline.chain import Chain
from tests.utils.gateway import SETTINGS


@pytest.fixture(scope="session")
def chain() -> Iterator[Chain]:
    chain = Chain(SETTINGS)
    chain.load()
    yield chain
    for stage in chain.located("local").values():
        stage.shutdown()
