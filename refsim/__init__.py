"""refsim: a bit-exact reference simulator for low-precision deep-learning numerics."""

from refsim.accumulate import conv2d, dot, matmul, sum
from refsim.quantize import quantize
from refsim.specs import AccumSpec, Cast, GemmSpec

__all__ = ["AccumSpec", "Cast", "GemmSpec", "conv2d", "dot", "matmul", "quantize", "sum"]
