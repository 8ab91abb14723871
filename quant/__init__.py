"""Quantized GGML tensors and the kernels on them (see kernels.py; one module per format)."""
from .formats import SUPPORTED_TYPES, UnsupportedTypeError
from .jit import blas_threads, set_num_threads
from .kernels import dequantize, get_rows, matmul, matmuls, matvec
from .tensor import QuantizedTensor

__all__ = ["QuantizedTensor", "UnsupportedTypeError", "SUPPORTED_TYPES", "set_num_threads", "blas_threads",
           "matvec", "matmul", "matmuls", "get_rows", "dequantize"]
