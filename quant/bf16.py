"""BF16: bfloat16 weights (the top 16 bits of a float32).

2 bytes = 2 (little-endian bfloat16); a "block" is one weight.
"""
import numpy as np
from gguf import GGMLQuantizationType

from .fit import put_f16
from .jit import f32_bits, njit, njit_fast, u32_as_f32

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


def quantize_blocks(x: np.ndarray) -> np.ndarray:
    """(n, 1) float32 -> (n, 2) uint8: round to nearest even; nans stay nans, made quiet
    (ggml_fp32_to_bf16_row_ref)."""
    u = x[:, 0].view(np.uint32).astype(np.uint64)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    bits = np.where((u & 0x7FFFFFFF) > 0x7F800000, (u >> 16) | 64, rounded)
    return bits.astype(np.uint16).view(np.uint8).reshape(-1, 2)


@njit
def quantize_row(x, out):
    for i in range(x.size):
        u = np.int64(f32_bits(x[i]))
        bits = (u >> 16) | 64 if (u & 0x7FFFFFFF) > 0x7F800000 else (u + 0x7FFF + ((u >> 16) & 1)) >> 16
        put_f16(out, 2 * i, bits)
