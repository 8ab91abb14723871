"""F32: plain float32 weights (norms, routers, small models).

4 bytes = 4 (little-endian IEEE float32); a "block" is one weight.
"""
import numpy as np
from gguf import GGMLQuantizationType

from .jit import njit, njit_fast

TYPE = GGMLQuantizationType.F32
BLOCK = 1
BYTES = 4


def dequantize_blocks(blocks: np.ndarray) -> np.ndarray:
    """(n, 4) uint8 -> (n, 1) float32."""
    return blocks.view(np.float32).copy()


@njit
def dequantize_row(row, out):
    w = row.view(np.float32)
    for i in range(w.size):
        out[i] = w[i]


@njit_fast
def dot_row(row, x):
    w = row.view(np.float32)
    acc = 0.0
    for b in range(0, w.size, 256):  # f32 partial sums of 256, f64 across them
        s = np.float32(0)
        for i in range(b, min(b + 256, w.size)):
            s += w[i] * x[i]
        acc += s
    return acc


def quantize_blocks(x: np.ndarray) -> np.ndarray:
    """(n, 1) float32 -> (n, 4) uint8 (a copy)."""
    return np.ascontiguousarray(x, np.float32).view(np.uint8).reshape(-1, 4)


@njit
def quantize_row(x, out):
    out.view(np.float32)[:] = x
