"""Tensors on the wire: uncompressed .npz bodies, checked against a spec before use.

Bodies come from the network, so `decode_npz` treats them as hostile: it never unpickles,
only accepts stored (uncompressed) members, and checks the zip directory and every .npy
header against the spec and the body's real size before numpy allocates an array.
"""

from __future__ import annotations

import io
import math
import re
import struct
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from numpy.lib import format as npy_format

from shared.errors import InvalidInput, PayloadTooLarge

MEDIA_TYPE = "application/x-npz"

_MEMBER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}\.npy")
# End-of-central-directory record with no archive comment: what zipfile (and so np.savez)
# writes. Requiring it to be the last 22 bytes means we read the same record ZipFile will.
_EOCD = struct.Struct("<4s4H2LH")
_EOCD_SIG = b"PK\x05\x06"
_ZIP64_LOCATOR_SIG = b"PK\x06\x07"
# Fixed 46-byte central-directory entry + longest accepted name + slack for extra fields.
_MAX_CD_ENTRY = 46 + 68 + 64
_FIXED_DATE = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class TensorSpec:
    """What one member must be: dtype name, shape (None = any size on that axis).

    allow_fp16: also accept float16 ("fp16 transport") and upcast it to `dtype` on read.
    finite: refuse NaN/inf in float tensors.
    """

    dtype: str
    shape: tuple[int | None, ...]
    allow_fp16: bool = False
    finite: bool = True

    def __post_init__(self) -> None:
        # Programmer errors, caught at import time of the module declaring the spec.
        if self.allow_fp16 and np.dtype(self.dtype) != np.float32:
            raise ValueError("allow_fp16 is only meaningful for float32 tensors")
        if any(d is not None and d < 0 for d in self.shape):
            raise ValueError(f"negative axis in spec shape {self.shape}")


def encode_npz(arrays: Mapping[str, npt.NDArray[Any]], *, fp16: bool = False) -> bytes:
    """Uncompressed npz of `arrays`; with fp16=True float32 arrays travel as float16.

    Written with zipfile directly rather than np.savez, whose own keyword arguments
    (`file`, `allow_pickle`) would collide with member names; the bytes are the same format.
    """
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, value in arrays.items():
            if not _MEMBER.fullmatch(f"{name}.npy"):
                raise ValueError(f"invalid tensor name {name!r}")
            arr = np.asarray(value, order="C")  # not ascontiguousarray: it turns 0-d into 1-d
            if fp16 and arr.dtype == np.float32:
                arr = arr.astype(np.float16)  # values beyond +-65504 become inf
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_FIXED_DATE)
            info.external_attr = 0o600 << 16
            with zf.open(info, "w", force_zip64=True) as member:
                npy_format.write_array(member, arr, allow_pickle=False)
    return buf.getvalue()


def decode_npz(
    body: bytes,
    spec: Mapping[str, TensorSpec],
    *,
    max_bytes: int,
    max_members: int = 16,
) -> dict[str, npt.NDArray[Any]]:
    """Decode an npz body into exactly the arrays `spec` names, or raise.

    PayloadTooLarge(param="body") if the body exceeds max_bytes; InvalidInput naming the
    member (or "body" when the archive itself is at fault) for anything else.
    """
    if len(body) > max_bytes:
        raise PayloadTooLarge(f"body is {len(body)} bytes; the limit is {max_bytes}", param="body")
    _check_end_record(body, max_members)
    try:
        zf = zipfile.ZipFile(io.BytesIO(body))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError) as exc:
        raise InvalidInput(f"body is not a valid npz archive: {exc}", param="body") from exc
    with zf:
        infos = _check_directory(zf.infolist(), spec, len(body), max_members)
        return {name: _read_member(zf, info, name, spec[name]) for name, info in infos.items()}


def check_same_batch(arrays: Mapping[str, npt.NDArray[Any]], names: Sequence[str]) -> int:
    """Return the batch size shared by `names`' leading axes; InvalidInput if they differ."""
    if not names:
        raise ValueError("check_same_batch needs at least one name")
    batch: int | None = None
    for name in names:
        shape = arrays[name].shape
        if not shape:
            raise InvalidInput(f"{name} has no batch axis", param=name)
        if batch is None:
            batch = shape[0]
        elif shape[0] != batch:
            raise InvalidInput(
                f"{name} has batch size {shape[0]} but {names[0]} has {batch}", param=name
            )
    assert batch is not None
    return batch


def _check_end_record(body: bytes, max_members: int) -> None:
    """Bound the central directory before ZipFile parses it.

    ZipFile builds a ZipInfo per directory entry, however many there are; a small body
    packed with tiny entries would otherwise cost far more memory than its size.
    """
    if len(body) < _EOCD.size:
        raise InvalidInput("body is not a valid npz archive (too short)", param="body")
    sig, _, _, _, entries, cd_size, _, comment_len = _EOCD.unpack_from(body, len(body) - 22)
    if sig != _EOCD_SIG or comment_len != 0:
        raise InvalidInput("body is not a valid npz archive (no end record)", param="body")
    if body[-42:-38] == _ZIP64_LOCATOR_SIG:
        raise InvalidInput("zip64 archives are not accepted", param="body")
    if entries > max_members or cd_size > max_members * _MAX_CD_ENTRY:
        raise InvalidInput(f"archive has more than {max_members} members", param="body")


def _check_directory(
    infos: list[zipfile.ZipInfo],
    spec: Mapping[str, TensorSpec],
    body_len: int,
    max_members: int,
) -> dict[str, zipfile.ZipInfo]:
    """Check names, compression and declared sizes from the directory alone."""
    if len(infos) > max_members:
        raise InvalidInput(f"archive has more than {max_members} members", param="body")
    found: dict[str, zipfile.ZipInfo] = {}
    declared = 0
    for info in infos:
        if not _MEMBER.fullmatch(info.filename):
            raise InvalidInput(f"invalid member name {info.filename[:80]!r}", param="body")
        name = info.filename[: -len(".npy")]
        if name in found:
            raise InvalidInput(f"duplicate member {name}", param=name)
        if name not in spec:
            raise InvalidInput(f"unexpected member {name}; expected {sorted(spec)}", param=name)
        # Stored only: no decompression cost, and declared sizes can be checked against
        # the body, which defeats zip bombs.
        if info.compress_type != zipfile.ZIP_STORED:
            raise InvalidInput(f"member {name} is compressed; send it stored", param=name)
        if info.flag_bits & 0x1:
            raise InvalidInput(f"member {name} is encrypted", param=name)
        if info.file_size != info.compress_size:
            raise InvalidInput(f"member {name} has inconsistent declared sizes", param=name)
        declared += info.file_size
        if declared > body_len:
            raise InvalidInput(
                f"member {name} declares {info.file_size} bytes, more than the body holds",
                param=name,
            )
        found[name] = info
    for name in spec:
        if name not in found:
            raise InvalidInput(f"missing member {name}", param=name)
    return found


def _read_member(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, spec: TensorSpec
) -> npt.NDArray[Any]:
    # The raw member is at most the body's size (stored, checked above); the array numpy
    # allocates is sized from the header, so the header is checked against the data first.
    try:
        raw = zf.read(info)
        fp = io.BytesIO(raw)
        version = npy_format.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = npy_format.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, fortran, dtype = npy_format.read_array_header_2_0(fp)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, RuntimeError) as exc:
        raise InvalidInput(f"member {name} is not a valid .npy: {exc}", param=name) from exc

    _check_header(name, spec, shape, fortran, dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if len(raw) - fp.tell() != nbytes:
        raise InvalidInput(
            f"member {name} holds {len(raw) - fp.tell()} data bytes; its header needs {nbytes}",
            param=name,
        )
    try:
        loaded: object = np.load(io.BytesIO(raw), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InvalidInput(f"member {name} is not a valid .npy: {exc}", param=name) from exc
    if not isinstance(loaded, np.ndarray) or loaded.dtype != dtype or loaded.shape != shape:
        raise InvalidInput(f"member {name} does not match its header", param=name)
    arr: npt.NDArray[Any] = loaded
    if spec.finite and arr.dtype.kind in "fc" and not np.isfinite(arr).all():
        raise InvalidInput(f"{name} contains NaN or infinity", param=name)
    if arr.dtype != np.dtype(spec.dtype):
        arr = arr.astype(spec.dtype)  # fp16 transport, the only other dtype let through
    return arr


def _check_header(
    name: str, spec: TensorSpec, shape: tuple[int, ...], fortran: bool, dtype: np.dtype[Any]
) -> None:
    expected = np.dtype(spec.dtype)
    allowed = [expected, np.dtype(np.float16)] if spec.allow_fp16 else [expected]
    if dtype.hasobject or dtype.names is not None or dtype.subdtype is not None:
        raise InvalidInput(
            f"{name}: expected dtype {expected}, got unsupported dtype {dtype.str}", param=name
        )
    # Exact match, so non-native byte order is refused too: our encoder never writes it.
    if dtype not in allowed:
        want = " or ".join(str(d) for d in allowed)
        raise InvalidInput(f"{name}: expected dtype {want}, got {dtype.str}", param=name)
    # C order only: encode_npz always writes it and downstream code can rely on it.
    if fortran:
        raise InvalidInput(f"{name}: fortran-ordered arrays are not accepted", param=name)
    want_shape = tuple("*" if d is None else d for d in spec.shape)
    if len(shape) != len(spec.shape) or any(
        got < 0 or (want is not None and got != want)
        for got, want in zip(shape, spec.shape, strict=True)
    ):
        raise InvalidInput(f"{name}: expected shape {want_shape}, got {shape}", param=name)
