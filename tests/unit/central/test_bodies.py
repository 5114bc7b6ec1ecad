"""Request bodies: JSON parsed off the loop when large, shapes that would stall it refused."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import pytest

from central import bodies
from central.bodies import (
    DECODE_WORKERS,
    INLINE_JSON_BYTES,
    MAX_JSON_SEPARATORS,
    off_loop,
    parse_json,
)
from shared.errors import InvalidInput
from shared.tokenizer import MAX_PROMPT_CHARS


def parse(body: bytes) -> Any:
    return asyncio.run(parse_json(body))


def test_small_bodies_parse_on_the_loop_and_large_ones_in_the_pool(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    threads: list[int] = []
    real = bodies._loads

    def recording(body: bytes) -> Any:
        threads.append(threading.get_ident())
        return real(body)

    monkeypatch.setattr(bodies, "_loads", recording)
    small = json.dumps({"prompt": "x"}).encode()
    large = json.dumps({"prompt": "x", "image": "A" * INLINE_JSON_BYTES}).encode()

    async def main() -> int:
        assert await parse_json(small) == {"prompt": "x"}
        assert (await parse_json(large))["image"] == "A" * INLINE_JSON_BYTES
        return threading.get_ident()

    loop_thread = asyncio.run(main())
    assert threads[0] == loop_thread and threads[1] != loop_thread


@pytest.mark.parametrize(
    "body", [b"{", b"\xff\xfe", b"[" * 5000, b'{"n": ' + b"9" * 5000 + b"}", b"nul"]
)
def test_malformed_json_is_invalid_input_naming_the_body(body: bytes) -> None:
    with pytest.raises(InvalidInput, match="body is not valid JSON") as raised:
        parse(body)
    assert raised.value.param == "body"


@pytest.mark.parametrize("item", [b"1,", b"{},", b"[],", b'"a":1,'])
def test_a_large_body_of_many_values_is_refused_before_it_is_parsed(
    monkeypatch: pytest.MonkeyPatch, item: bytes
) -> None:
    monkeypatch.setattr(bodies, "_loads", lambda body: pytest.fail("parsed"))
    body = b"[" + item * (INLINE_JSON_BYTES // len(item) + 1) + b"1]"
    with pytest.raises(InvalidInput, match="too many JSON values") as raised:
        parse(body)
    assert raised.value.param == "body"


def test_the_largest_legit_body_shape_passes() -> None:
    """Two prompts of nothing but commas and colons, and two large images."""
    body = {
        "prompt": ",:" * (MAX_PROMPT_CHARS // 2),
        "negative_prompt": "[{" * (MAX_PROMPT_CHARS // 2),
        "image": "A" * INLINE_JSON_BYTES,
        "mask": "B" * INLINE_JSON_BYTES,
        **{f"field{i}": i for i in range(40)},
    }
    assert parse(json.dumps(body).encode()) == body
    assert 2 * MAX_PROMPT_CHARS < MAX_JSON_SEPARATORS


def test_the_pool_is_bounded_and_excess_waits() -> None:
    running = 0
    most = 0
    lock = threading.Lock()

    def work() -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.05)
        with lock:
            running -= 1

    async def main() -> None:
        await asyncio.gather(*(off_loop(work) for _ in range(3 * DECODE_WORKERS)))

    asyncio.run(main())
    assert most == DECODE_WORKERS
