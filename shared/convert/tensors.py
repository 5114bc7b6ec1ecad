"""Reading and writing `.safetensors` files, tensor by tensor, without torch or pickle.

Tensors are read with the safetensors package's numpy API. numpy has no bfloat16, so a
BF16 tensor (common in LoRA files) is read from the file's own byte range (its offsets
are in the safetensors JSON header) and widened to float32: a bfloat16 is the top half of
a float32. Pickle-based formats are refused by name before anything is opened.

`write_tensors` streams a file one tensor at a time (the package's `save_file` holds every
tensor and then all their bytes in memory at once: three times a 3.4 GB UNet). The layout
is the format's own: an 8-byte little-endian header length, the JSON header (names,
dtypes, shapes, byte offsets, `__metadata__`) padded with spaces to 8 bytes, then the
tensors' bytes in header order; the tests read every file written back with the package.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from shared.errors import WeightsError

# What PyTorch checkpoints are saved as when they are not safetensors: every one of them
# is a pickle, which can run code when loaded, so none is ever opened here.
PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth", ".pkl", ".pickle")
PICKLE_ADVICE = (
    "is a pickle-based PyTorch file, which can run code when it is loaded, so sdserve never "
    "opens one; convert it to .safetensors first, in an environment you trust (for example "
    "with the safetensors project's convert script or diffusers' save_pretrained(..., "
    "safe_serialization=True))"
)


def refuse_pickle(path: Path) -> None:
    """WeightsError for a pickle-based file (by its suffix), naming it and what to do."""
    if path.name.lower().endswith(PICKLE_SUFFIXES):
        raise WeightsError(f"{path.name} {PICKLE_ADVICE}")


class TensorFiles:
    """The tensors of one or more safetensors files (one model's shards), by key.

    Opened lazily: keys, shapes and dtypes come from the headers; a tensor is read when
    asked for, as float32.
    """

    def __init__(self, paths: Iterable[Path]) -> None:
        self.paths = list(paths)
        self._stack = ExitStack()
        self._where: dict[str, Any] = {}
        self._path_of: dict[str, Path] = {}
        self.metadata: dict[str, str] = {}
        from safetensors import safe_open

        try:
            for path in self.paths:
                refuse_pickle(path)
                handle = self._stack.enter_context(safe_open(str(path), framework="numpy"))
                self.metadata.update(handle.metadata() or {})
                for key in handle.keys():  # noqa: SIM118 (a safe_open handle, not a dict)
                    self._where[key] = handle
                    self._path_of[key] = path
        except WeightsError:
            self.close()
            raise
        except Exception as exc:  # safetensors raises its own errors for bad files
            self.close()
            raise WeightsError(f"cannot read {path.name} as safetensors: {exc}") from None

    def __enter__(self) -> TensorFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stack.close()

    def __contains__(self, key: object) -> bool:
        return key in self._where

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._where[key].get_slice(key).get_shape())

    def dtype(self, key: str) -> str:
        """The stored dtype as safetensors names it: F32, F16, BF16, ..."""
        return str(self._where[key].get_slice(key).get_dtype())

    def get(self, key: str, *, keep_float16: bool = False) -> np.ndarray:
        """The tensor as float32 (a float16 one as it is, with `keep_float16`)."""
        dtype = self.dtype(key)
        if dtype == "BF16":
            return _read_bf16(self._path_of[key], key)
        tensor = self._where[key].get_tensor(key)
        if dtype == "F16" and keep_float16:
            return np.asarray(tensor)
        return np.asarray(tensor, dtype=np.float32)


_DTYPES = {np.dtype(np.float16): "F16", np.dtype(np.float32): "F32"}


def write_tensors(
    path: Path,
    specs: Sequence[tuple[str, tuple[int, ...], np.dtype[Any]]],
    arrays: Iterable[np.ndarray],
    metadata: dict[str, str],
) -> None:
    """Write `arrays` (produced one at a time, in the order of `specs`: name, shape,
    dtype) as one safetensors file; a ValueError if one does not match its spec."""
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for name, shape, dtype in specs:
        size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        header[name] = {
            "dtype": _DTYPES[np.dtype(dtype)],
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with path.open("wb") as handle:
        handle.write(struct.pack("<Q", len(encoded)))
        handle.write(encoded)
        count = 0
        for (name, shape, dtype), array in zip(specs, arrays, strict=True):
            if array.shape != tuple(shape) or array.dtype != np.dtype(dtype):
                raise ValueError(f"{name}: got {array.dtype}{array.shape}, header says {shape}")
            handle.write(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).data)
            count += 1
    assert count == len(specs)


def _read_bf16(path: Path, key: str) -> np.ndarray:
    """A BF16 tensor read from its bytes (safetensors' layout: an 8-byte little-endian
    header length, the JSON header, then the data), widened to float32."""
    with path.open("rb") as handle:
        (header_len,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(header_len))
        entry = header[key]
        start, end = entry["data_offsets"]
        handle.seek(8 + header_len + start)
        raw = np.frombuffer(handle.read(end - start), dtype="<u2")
    widened = raw.astype(np.uint32) << 16
    return widened.view(np.float32).reshape(entry["shape"])
