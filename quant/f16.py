"""F16: IEEE half-precision weights.

2 bytes = 2 (little-endian IEEE float16); a "block" is one weight.
"""
import numpy as np
from gguf import GGMLQuantizationType

from .fit import f16_bits, f16_bits_np, put_f16
from .jit import f16_to_f32, half_to_f32, njit, njit_fast

TYPE = GGMLQuantizationType.F16
BLOCK = 1
BYTES = 2


def dequantize_blocks(blocks: np.ndarray) -> np.ndarray:
    """(n, 2) uint8 -> (n, 1) float32."""
    return blocks.view(np.float16).astype(np.float32)


@njit
def dequantize_row(row, out):
    h = row.view(np.uint16)
    for i in range(h.size):
        out[i] = f16_to_f32(h[i])


@njit_fast
def dot_row(row, x):
    h = row.view(np.uint16)
    acc = 0.0
    for b in range(0, h.size, 256):  # f32 partial sums of 256, f64 across them
        s = np.float32(0)
        for i in range(b, min(b + 256, h.size)):
            s += half_to_f32(h[i]) * x[i]
        acc += s
    return acc


def quantize_blocks(x: np.ndarray) -> np.ndarray:
    """(n, 1) float32 -> (n, 2) uint8: round to nearest even (ggml_fp32_to_fp16_row)."""
    return f16_bits_np(x[:, 0]).view(np.uint8).reshape(-1, 2)


@njit
def quantize_row(x, out):
    for i in range(x.size):
        put_f16(out, 2 * i, f16_bits(x[i]))
