"""The one seam through which validation/ calls refsim.

mypy checks formats/ and validation/ only (pyproject.toml): refsim is Numba code typed loosely.
A static `from refsim import ...` would make mypy follow and check refsim as well, so the
reference is looked up at run time here, as an untyped callable.
"""

from __future__ import annotations

import importlib
from typing import Any


def quantize(x: Any, fmt: Any, rounding: str = "rne", **kwargs: Any) -> Any:
    """refsim.quantize (see its docstring)."""
    return importlib.import_module("refsim").quantize(x, fmt, rounding, **kwargs)


def quantize_blocks(x: Any, fmt: Any, rounding: str = "rne", **kwargs: Any) -> Any:
    """refsim.quantize_blocks (see its docstring)."""
    return importlib.import_module("refsim").quantize_blocks(x, fmt, rounding, **kwargs)


def quantize_torch_ops(x: Any, fmt: Any, rounding: str = "rne", **kwargs: Any) -> Any:
    """refsim's torch path in torch ops (route "torch", what every device but the CPU runs),
    on CPU tensors too, which would otherwise take the Numba kernels (they are the reference)."""
    backend: Any = importlib.import_module("refsim.backends.torch_backend")
    return backend.quantize(x, fmt, rounding, route="torch", **kwargs)
