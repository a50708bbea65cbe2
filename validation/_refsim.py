"""The one seam through which validation/ calls refsim.

mypy checks formats/ and validation/ only (pyproject.toml): refsim is Numba code typed loosely.
A static `from refsim import ...` would make mypy follow and check refsim as well, so the
reference is looked up at run time here, as an untyped callable.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from typing import Any


def quantize(x: Any, fmt: Any, rounding: str = "rne", **kwargs: Any) -> Any:
    """refsim.quantize (see its docstring)."""
    return importlib.import_module("refsim").quantize(x, fmt, rounding, **kwargs)


def quantize_blocks(x: Any, fmt: Any, rounding: str = "rne", **kwargs: Any) -> Any:
    """refsim.quantize_blocks (see its docstring)."""
    return importlib.import_module("refsim").quantize_blocks(x, fmt, rounding, **kwargs)


@contextlib.contextmanager
def torch_ops_on_cpu() -> Iterator[None]:
    """Run refsim's torch path on CPU tensors in torch ops (what every other device runs), not
    through the Numba kernels that CPU tensors take by default (they are the reference)."""
    backend: Any = importlib.import_module("refsim.backends.torch_backend")
    previous = backend.CPU_KERNEL
    backend.CPU_KERNEL = "torch"
    try:
        yield
    finally:
        backend.CPU_KERNEL = previous
