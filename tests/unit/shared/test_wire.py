"""shared.wire: npz round trips, and hostile bodies refused before numpy allocates or unpickles."""

from __future__ import annotations

import io
import struct
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shared.errors import InvalidInput, PayloadTooLarge
from shared.wire import MEDIA_TYPE, TensorSpec, check_same_batch, decode_npz, encode_npz

MAX = 1 << 20
SPEC = {"x": TensorSpec("float32", (None, 3))}


def _npy(arr: np.ndarray[Any, Any], *, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=allow_pickle)
    return buf.getvalue()


def _zip(members: list[tuple[str, bytes]], compression: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns on the duplicate-name case
        with zipfile.ZipFile(buf, "w", compression) as zf:
            for name, data in members:
                zf.writestr(name, data)
    return buf.getvalue()


def _refused(
    body: bytes,
    param: str,
    spec: dict[str, TensorSpec] | None = None,
    *,
    error: type[Exception] = InvalidInput,
    max_bytes: int = MAX,
    max_members: int = 16,
) -> str:
    with pytest.raises(error) as info:
        decode_npz(
            body, SPEC if spec is None else spec, max_bytes=max_bytes, max_members=max_members
        )
    assert isinstance(info.value, InvalidInput | PayloadTooLarge)
    assert info.value.param == param, info.value.message
    return info.value.message


# --- round trips -----------------------------------------------------------------------


def test_media_type() -> None:
    assert MEDIA_TYPE == "application/x-npz"


def test_round_trip_mixed_dtypes() -> None:
    rng = np.random.default_rng(0)
    arrays: dict[str, np.ndarray[Any, Any]] = {
        "latent": rng.standard_normal((2, 8, 8, 4), dtype=np.float32),
        "image": rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8),
        "tokens": rng.integers(0, 49408, (2, 77), dtype=np.int32),
        "mask": np.array([True, False]),
    }
    spec = {
        "latent": TensorSpec("float32", (None, 8, 8, 4)),
        "image": TensorSpec("uint8", (None, None, None, 3)),
        "tokens": TensorSpec("int32", (None, 77)),
        "mask": TensorSpec("bool", (2,)),
    }
    out = decode_npz(encode_npz(arrays), spec, max_bytes=MAX)
    assert out.keys() == arrays.keys()
    for name, arr in arrays.items():
        assert out[name].dtype == arr.dtype
        np.testing.assert_array_equal(out[name], arr)


def test_encode_is_deterministic_and_makes_contiguous() -> None:
    arr = np.arange(12, dtype=np.float32).reshape(3, 4).T  # fortran-ordered view
    body = encode_npz({"x": arr})
    assert body == encode_npz({"x": arr})
    out = decode_npz(body, {"x": TensorSpec("float32", (4, 3))}, max_bytes=MAX)
    assert out["x"].flags.c_contiguous
    np.testing.assert_array_equal(out["x"], arr)


def test_fp16_transport_round_trip() -> None:
    arr = np.linspace(-4, 4, 30, dtype=np.float32).reshape(10, 3)
    body = encode_npz({"x": arr, "t": np.arange(3, dtype=np.int32)}, fp16=True)
    assert len(body) < len(encode_npz({"x": arr, "t": np.arange(3, dtype=np.int32)}))
    spec = {"x": TensorSpec("float32", (None, 3), allow_fp16=True), "t": TensorSpec("int32", (3,))}
    out = decode_npz(body, spec, max_bytes=MAX)
    assert out["x"].dtype == np.float32
    assert out["t"].dtype == np.int32  # only float32 is narrowed
    np.testing.assert_allclose(out["x"], arr, rtol=1e-3)


def test_fp16_refused_unless_allowed() -> None:
    body = encode_npz({"x": np.zeros((1, 3), np.float32)}, fp16=True)
    message = _refused(body, "x")
    assert "float32" in message and "<f2" in message


def test_fp16_overflow_is_refused_as_infinite() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        body = encode_npz({"x": np.full((1, 3), 1e6, np.float32)}, fp16=True)
    _refused(body, "x", {"x": TensorSpec("float32", (None, 3), allow_fp16=True)})


def test_accepts_np_savez_output() -> None:
    buf = io.BytesIO()
    np.savez(buf, x=np.ones((2, 3), np.float32))
    out = decode_npz(buf.getvalue(), SPEC, max_bytes=MAX)
    np.testing.assert_array_equal(out["x"], np.ones((2, 3), np.float32))


def test_finite_false_lets_nan_through() -> None:
    body = encode_npz({"x": np.full((1, 3), np.nan, np.float32)})
    out = decode_npz(body, {"x": TensorSpec("float32", (1, 3), finite=False)}, max_bytes=MAX)
    assert np.isnan(out["x"]).all()


def test_encode_refuses_bad_names() -> None:
    for name in ("../x", "allow_pickle x", "", "a" * 65):
        with pytest.raises(ValueError):
            encode_npz({name: np.zeros(1)})
    # names np.savez would choke on are fine here
    out = decode_npz(
        encode_npz({"file": np.zeros(1), "allow_pickle": np.zeros(1)}),
        {"file": TensorSpec("float64", (1,)), "allow_pickle": TensorSpec("float64", (1,))},
        max_bytes=MAX,
    )
    assert set(out) == {"file", "allow_pickle"}


def test_tensor_spec_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        TensorSpec("int32", (1,), allow_fp16=True)
    with pytest.raises(ValueError):
        TensorSpec("float32", (-1,))
    with pytest.raises(TypeError):
        TensorSpec("not_a_dtype", (1,), allow_fp16=True)


# --- pickles are never loaded ----------------------------------------------------------


def _mark(path: str) -> None:
    Path(path).write_text("unpickled")


class Evil:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (_mark, (str(self.path),))


def test_pickled_object_array_is_never_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    payload = _npy(
        np.array([Evil(marker), Evil(marker), Evil(marker)], dtype=object), allow_pickle=True
    )
    body = _zip([("x.npy", payload)])
    for spec in (SPEC, {"x": TensorSpec("float32", (3,))}, {"x": TensorSpec("object", (3,))}):
        message = _refused(body, "x", spec)
        assert "|O" in message
    assert not marker.exists()

    # The payload is live: unpickling it really would run the side effect.
    np.load(io.BytesIO(payload), allow_pickle=True)
    assert marker.read_text() == "unpickled"


# --- dtype, shape and value checks -----------------------------------------------------


def test_wrong_dtype() -> None:
    message = _refused(encode_npz({"x": np.zeros((2, 3), np.int64)}), "x")
    assert "float32" in message and "<i8" in message


def test_big_endian_refused() -> None:
    _refused(_zip([("x.npy", _npy(np.zeros((2, 3), ">f4")))]), "x")


def test_wrong_shape() -> None:
    message = _refused(encode_npz({"x": np.zeros((2, 4), np.float32)}), "x")
    assert "('*', 3)" in message and "(2, 4)" in message


def test_wrong_rank() -> None:
    _refused(encode_npz({"x": np.zeros((2, 3, 1), np.float32)}), "x")
    _refused(encode_npz({"x": np.zeros(3, np.float32)}), "x")
    _refused(encode_npz({"x": np.array(1.0, np.float32)}), "x")
    scalar = decode_npz(
        encode_npz({"s": np.array(1.0, np.float32)}),
        {"s": TensorSpec("float32", ())},
        max_bytes=MAX,
    )
    assert scalar["s"].shape == ()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite(bad: float) -> None:
    arr = np.zeros((2, 3), np.float32)
    arr[1, 2] = bad
    assert "NaN or infinity" in _refused(encode_npz({"x": arr}), "x")


def test_structured_dtype() -> None:
    arr = np.zeros((2, 3), dtype=[("a", "<f4")])
    _refused(_zip([("x.npy", _npy(arr))]), "x")
    _refused(_zip([("x.npy", _npy(arr))]), "x", {"x": TensorSpec("float32", (None, 3))})


def test_structured_subarray_dtype() -> None:
    arr = np.zeros(2, dtype=[("a", "<f4", (3,))])
    _refused(_zip([("x.npy", _npy(arr))]), "x")


def test_fortran_order_refused() -> None:
    arr = np.asfortranarray(np.zeros((2, 3), np.float32))
    assert "fortran" in _refused(_zip([("x.npy", _npy(arr))]), "x")


def test_truncated_member_data() -> None:
    payload = _npy(np.ones((4, 3), np.float32))
    _refused(_zip([("x.npy", payload[:-5])]), "x")
    _refused(_zip([("x.npy", payload + b"\0" * 4)]), "x")  # trailing bytes too


def _lying_header(shape: tuple[int, ...], data: bytes) -> bytes:
    header = np.lib.format.header_data_from_array_1_0(np.zeros(1, np.float32))
    header["shape"] = shape
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue() + data


def test_header_lies_about_shape() -> None:
    # Header claims a ~12 GB array over 48 bytes of data: refused before numpy allocates.
    assert "data bytes" in _refused(_zip([("x.npy", _lying_header((10**9, 3), b"\0" * 48))]), "x")


def test_header_not_a_literal() -> None:
    payload = _npy(np.ones((4, 3), np.float32)).replace(b"(4, 3)", b"(4**3)")
    _refused(_zip([("x.npy", payload)]), "x")


def test_negative_dims_refused() -> None:
    body = _zip([("x.npy", _lying_header((-1, -3), b"\0" * 12))])
    _refused(body, "x", {"x": TensorSpec("float32", (None, None))})


def test_bad_npy_magic() -> None:
    _refused(_zip([("x.npy", b"not an npy file at all")]), "x")


# --- archive-level attacks -------------------------------------------------------------


def test_oversize_body() -> None:
    body = encode_npz({"x": np.zeros((100, 3), np.float32)})
    _refused(body, "body", error=PayloadTooLarge, max_bytes=len(body) - 1)
    decode_npz(body, SPEC, max_bytes=len(body))


def test_oversize_declared_member_size() -> None:
    body = bytearray(encode_npz({"x": np.zeros((2, 3), np.float32)}))
    cd = body.rindex(b"PK\x01\x02")
    struct.pack_into("<LL", body, cd + 20, 0x7FFF_FFFF, 0x7FFF_FFFF)  # compress, file size
    assert "declares" in _refused(bytes(body), "x")


def test_declared_sizes_inconsistent() -> None:
    body = bytearray(encode_npz({"x": np.zeros((2, 3), np.float32)}))
    cd = body.rindex(b"PK\x01\x02")
    struct.pack_into("<L", body, cd + 24, 10_000)  # file size != compress size
    assert "inconsistent" in _refused(bytes(body), "x")


@pytest.mark.parametrize(
    "body",
    [b"", b"PK", np.random.default_rng(0).bytes(4096), b"PK\x05\x06" + b"\0" * 18 + b"x"],
    ids=["empty", "tiny", "random", "comment"],
)
def test_not_a_zip(body: bytes) -> None:
    _refused(body, "body")


def test_truncated_zip() -> None:
    body = encode_npz({"x": np.ones((8, 3), np.float32)})
    for cut in (1, 10, 22, len(body) // 2, len(body) - 1):
        _refused(body[:-cut], "body")
    # End record intact, bytes missing before it: the directory no longer parses, or its
    # offsets no longer reach the member (then the member is named).
    _refused(body[: -22 - 10] + body[-22:], "body")
    _refused(body[:100] + body[150:], "x")


def test_corrupt_member_crc() -> None:
    body = bytearray(encode_npz({"x": np.ones((8, 3), np.float32)}))
    body[200] ^= 0xFF  # inside x's data
    _refused(bytes(body), "x")


def test_corrupt_central_directory() -> None:
    body = bytearray(encode_npz({"x": np.ones((8, 3), np.float32)}))
    cd = body.rindex(b"PK\x01\x02")
    body[cd : cd + 4] = b"XXXX"
    _refused(bytes(body), "body")


def test_compressed_bomb_member_refused_without_decompressing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bomb = _npy(np.zeros((2048, 1024), np.float32))  # 8 MiB of zeros
    body = _zip([("x.npy", bomb)], zipfile.ZIP_DEFLATED)
    assert len(body) < 64 * 1024

    def no_read(*_: object, **__: object) -> bytes:
        raise AssertionError("member was read")

    monkeypatch.setattr(zipfile.ZipFile, "read", no_read)
    monkeypatch.setattr(zipfile.ZipFile, "open", no_read)
    assert "compressed" in _refused(body, "x", {"x": TensorSpec("float32", (None, 1024))})


def test_savez_compressed_refused() -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, x=np.ones((2, 3), np.float32))
    _refused(buf.getvalue(), "x")


def test_extra_member() -> None:
    body = encode_npz({"x": np.zeros((1, 3), np.float32), "y": np.zeros(1, np.float32)})
    assert "unexpected" in _refused(body, "y")


def test_missing_member() -> None:
    spec = {**SPEC, "y": TensorSpec("int32", (None,))}
    assert "missing" in _refused(encode_npz({"x": np.zeros((1, 3), np.float32)}), "y", spec)


@pytest.mark.parametrize(
    "name",
    [
        "../x.npy",
        "/x.npy",
        "a/x.npy",
        "x",
        "x.npz",
        "x.npy/",
        "1x.npy",
        "é.npy",
        "x y.npy",
        "a" * 65 + ".npy",
        ".npy",
    ],
)
def test_bad_member_names(name: str) -> None:
    _refused(_zip([(name, _npy(np.zeros((1, 3), np.float32)))]), "body")


def test_duplicate_member() -> None:
    payload = _npy(np.zeros((1, 3), np.float32))
    assert "duplicate" in _refused(_zip([("x.npy", payload), ("x.npy", payload)]), "x")


def test_too_many_members() -> None:
    arrays = {f"t{i}": np.zeros(1, np.float32) for i in range(5)}
    spec = {name: TensorSpec("float32", (1,)) for name in arrays}
    body = encode_npz(arrays)
    _refused(body, "body", spec, max_members=4)
    assert len(decode_npz(body, spec, max_bytes=MAX, max_members=5)) == 5


def test_lying_end_record_cannot_hide_many_entries() -> None:
    # Thousands of tiny entries with the end record's count patched to 1: the directory's
    # size still gives them away before ZipFile builds an object per entry.
    body = bytearray(_zip([(f"t{i}.npy", b"") for i in range(2000)]))
    struct.pack_into("<HH", body, len(body) - 22 + 8, 1, 1)
    _refused(bytes(body), "body", {"t0": TensorSpec("float32", (1,))})


def test_zip64_end_record_refused() -> None:
    body = encode_npz({"x": np.zeros((1, 3), np.float32)})
    fake = body[:-22] + b"PK\x06\x07" + b"\0" * 16 + body[-22:]
    _refused(fake, "body")


# --- check_same_batch ------------------------------------------------------------------


def test_check_same_batch() -> None:
    arrays = {"a": np.zeros((2, 3)), "b": np.zeros((2,)), "c": np.zeros((3, 1)), "s": np.zeros(())}
    assert check_same_batch(arrays, ["a", "b"]) == 2
    with pytest.raises(InvalidInput) as info:
        check_same_batch(arrays, ["a", "b", "c"])
    assert info.value.param == "c"
    with pytest.raises(InvalidInput) as info:
        check_same_batch(arrays, ["a", "s"])
    assert info.value.param == "s"
    with pytest.raises(ValueError):
        check_same_batch(arrays, [])
