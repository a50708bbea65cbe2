"""refsim: a bit-exact reference simulator for low-precision deep-learning numerics."""

from refsim.quantize import quantize

__all__ = ["quantize"]
