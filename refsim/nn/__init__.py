"""refsim.nn: a small deterministic reverse-mode autodiff engine whose every matrix product is
simulated (refsim.matmul) under a per-layer, per-role plan. Guide: docs/nn.md."""

from refsim.nn import ops
from refsim.nn.data import digits, sequence_task
from refsim.nn.layers import Module
from refsim.nn.models import CNN, MLP, Transformer
from refsim.nn.numerics import (
                                PRESETS,
                                ROLES,
                                Context,
                                Numerics,
                                Product,
                                gemm_seed,
                                load_numerics,
                                preset,
)
from refsim.nn.optim import SGD, Adam
from refsim.nn.tensor import Tensor
from refsim.nn.train import TrainConfig, evaluate, train

__all__ = ["CNN", "MLP", "PRESETS", "ROLES", "SGD", "Adam", "Context", "Module", "Numerics",
           "Product", "Tensor", "TrainConfig", "Transformer", "digits", "evaluate", "gemm_seed",
           "load_numerics", "ops", "preset", "sequence_task", "train"]
