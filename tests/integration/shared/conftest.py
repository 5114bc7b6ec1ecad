"""Keep triton out of this process.

torch (the reference tests' diffusers / transformers stack) imports triton, its GPU
kernel compiler, whenever it is installed, and triton's native library
(`triton._C.libtriton`, built on its own LLVM) crashes the process with a segmentation
fault when it is loaded after TensorFlow, which most of the suite has imported by then.
These tests run PyTorch on the CPU, where triton is never used, so `import triton` is
made to fail: torch then simply reports that triton is unavailable.
"""

import sys

sys.modules.setdefault("triton", None)  # type: ignore[arg-type]
