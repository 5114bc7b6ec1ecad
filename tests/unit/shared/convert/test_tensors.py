"""Reading and writing safetensors tensor by tensor."""

import json
import struct

import numpy as np
import pytest
from safetensors import safe_open

from shared.convert.tensors import TensorFiles, write_tensors


def test_streamed_files_read_back_with_the_safetensors_package(tmp_path):
    arrays = {
        "b.weight": np.arange(6, dtype=np.float16).reshape(2, 3),
        "a.bias": np.linspace(-1, 1, 5, dtype=np.float32),
        "c.scalar_like": np.ones((1,), np.float32),
    }
    specs = [(name, a.shape, a.dtype) for name, a in arrays.items()]
    path = tmp_path / "x.safetensors"
    write_tensors(path, specs, iter(arrays.values()), {"family": "sd-v1"})
    header_len = struct.unpack("<Q", path.read_bytes()[:8])[0]
    assert header_len % 8 == 0
    with safe_open(str(path), framework="numpy") as handle:
        assert handle.metadata() == {"family": "sd-v1"}
        assert set(handle.keys()) == set(arrays)
        for name, array in arrays.items():
            read = handle.get_tensor(name)
            assert read.dtype == array.dtype and np.array_equal(read, array)


def test_a_tensor_unlike_its_spec_is_refused(tmp_path):
    spec = [("w", (2, 2), np.dtype(np.float16))]
    with pytest.raises(ValueError, match="header says"):
        write_tensors(tmp_path / "x.safetensors", spec, [np.zeros((2, 2), np.float32)], {})


def test_bfloat16_tensors_are_read_as_float32(tmp_path):
    values = np.asarray([[1.5, -2.0], [0.15625, 3e38]], dtype=np.float32)
    raw = (values.view(np.uint32) >> 16).astype("<u2").tobytes()  # exact in bfloat16
    header = json.dumps({"w": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 8]}})
    path = tmp_path / "bf16.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header.encode() + raw)
    with TensorFiles([path]) as files:
        assert files.dtype("w") == "BF16"
        read = files.get("w")
    expected = (values.view(np.uint32) & 0xFFFF0000).view(np.float32)
    assert read.dtype == np.float32 and np.array_equal(read, expected)
