"""refsim: a bit-exact reference simulator for low-precision deep-learning numerics."""

from refsim import hardware
from refsim.accumulate import conv2d, dot, matmul, sum
from refsim.blocks import quantize_blocks
from refsim.quantize import quantize
from refsim.scaled_gemm import scaled_matmul
from refsim.scaling import DelayedScaling, quantize_affine, quantize_scaled
from refsim.specs import AccumSpec, Cast, GemmSpec
from refsim.transforms import RandomHadamard

__all__ = ["AccumSpec", "Cast", "DelayedScaling", "GemmSpec", "RandomHadamard", "conv2d", "dot",
           "hardware", "matmul", "quantize", "quantize_affine", "quantize_blocks",
           "quantize_scaled", "scaled_matmul", "sum"]
