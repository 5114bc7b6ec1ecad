"""npz bodies (well-formed and hostile) and error-body checks for tests over HTTP."""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from shared.wire import MEDIA_TYPE, encode_npz

NPZ_HEADERS = {"content-type": MEDIA_TYPE}


def npz(arrays: Mapping[str, Any], *, fp16: bool = False) -> bytes:
    """A well-formed body, written by the project's own encoder."""
    return encode_npz({k: np.asarray(v) for k, v in arrays.items()}, fp16=fp16)


def npy(array: Any, *, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=allow_pickle)
    return buf.getvalue()


def raw_npz(members: Mapping[str, bytes], *, compression: int = zipfile.ZIP_STORED) -> bytes:
    """A zip of exactly these members (names as given, e.g. "context.npy")."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def read_npz(content: bytes) -> dict[str, np.ndarray]:
    """Decode a response body (never unpickling)."""
    with np.load(io.BytesIO(content), allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


class MakeMarker:
    """Unpickling this calls os.mkdir(path): proof that a body was (not) unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.mkdir, (self.path,)


def pickled_object_npy(marker: Path) -> bytes:
    """An object-dtype .npy whose unpickling would create `marker`."""
    array = np.empty((1,), dtype=object)
    array[0] = MakeMarker(marker)
    return npy(array, allow_pickle=True)


def assert_error(
    response: httpx.Response,
    status: int,
    *,
    param: str | None = None,
    error_type: str | None = None,
) -> dict[str, Any]:
    """`response` is `status` with the shared error body; check `param`/`type` if given."""
    assert response.status_code == status, (
        f"expected HTTP {status}, got {response.status_code}: {response.text[:500]}"
    )
    assert response.headers.get("content-type", "").startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"error"}, body
    inner = body["error"]
    assert isinstance(inner.get("type"), str), body
    assert isinstance(inner.get("message"), str), body
    assert inner["message"], body
    assert set(inner) <= {"type", "message", "param"}, body
    if param is not None:
        assert inner.get("param") == param, body
    if error_type is not None:
        assert inner["type"] == error_type, body
    return inner
