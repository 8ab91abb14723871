"""BF16: bfloat16 weights (the top 16 bits of a float32).

2 bytes = 2 (little-endian bfloat16); a "block" is one weight.
"""
import numpy as np
from gguf import GGMLQuantizationType

from .jit import njit, njit_fast, u32_as_f32

TYPE = GGMLQuantizationType.BF16
BLOCK = 1
BYTES = 2


def dequantize_blocks(blocks: np.ndarray) -> np.ndarray:
    """(n, 2) uint8 -> (n, 1) float32: shift the 16 bits into the top of a float32."""
    return (blocks.view(np.uint16).astype(np.uint32) << 16).view(np.float32)


@njit
def dequantize_row(row, out):
    h = row.view(np.uint16)
    for i in range(h.size):
        out[i] = u32_as_f32(np.uint32(h[i]) << 16)


@njit_fast
def dot_row(row, x):
    h = row.view(np.uint16)
    acc = 0.0
    for b in range(0, h.size, 256):  # f32 partial sums of 256, f64 across them
        s = np.float32(0)
        for i in range(b, min(b + 256, h.size)):
            s += u32_as_f32(np.uint32(h[i]) << 16) * x[i]
        acc += s
    return acc
