"""What an Authorization header may carry as an API key (shared.guards.presented_keys)."""

from __future__ import annotations

import base64

import pytest

from shared.guards import presented_keys


def basic(credentials: bytes) -> str:
    return "Basic " + base64.b64encode(credentials).decode()


@pytest.mark.parametrize(
    ("header", "keys"),
    [
        ("Bearer key-one", [b"key-one"]),
        ("bearer   key-one  ", [b"key-one"]),
        # HTTP basic auth: the password, or user:password as a whole (A1111's --api-auth).
        (basic(b"painter:key-one"), [b"key-one", b"painter:key-one"]),
        (basic(b":key-one"), [b"key-one", b":key-one"]),
        (basic(b"painter:"), [b"painter:"]),
        (
            basic("m\u00e5ler:n\u00f8kkel".encode()),
            ["n\u00f8kkel".encode(), "m\u00e5ler:n\u00f8kkel".encode()],
        ),
        # Nothing to compare: no scheme we take, no value, no colon, not base64.
        ("", []),
        ("Bearer ", []),
        ("Token key-one", []),
        (basic(b"no-colon"), []),
        ("Basic %%%", []),
        ("Basic ", []),
    ],
)
def test_the_key_comes_as_a_bearer_token_or_basic_auth(header: str, keys: list[bytes]) -> None:
    assert presented_keys(header) == keys
