"""Q4_0: blocks of 32 weights, one f16 scale, 4-bit quants centred on 8.

18 bytes = 2 (f16 d) + 16 (4-bit quants: byte i holds q[i] in its low and q[i + 16] in its high nibble)
weight[i] = d * (q[i] - 8)
"""
import numpy as np
from gguf import GGMLQuantizationType

from .fit import (f16_bits, f16_bits_np, inverse, pack_nibbles, put_f16, put_nibbles, signed_absmax,
                  signed_absmax_np, trunc_int)
from .jit import LANE_BLOCKS, f16_at, flush, njit, njit_fast, span

TYPE = GGMLQuantizationType.Q4_0
BLOCK = 32
BYTES = 18


def dequantize_blocks(blocks: np.ndarray) -> np.ndarray:
    """(n, 18) uint8 -> (n, 32) float32."""
    d = blocks[:, 0:2].view(np.float16).astype(np.float32)  # (n, 1)
    qs = blocks[:, 2:18]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.int8) - np.int8(8)
    return d * q.astype(np.float32)


# The kernels read the high nibble in place, as 16 * q (v & 0xF0), with d / 16 as its scale: the
# products are the same numbers (exact power-of-two scaling) and no right shift is needed.

@njit
def dequantize_row(row, out):
    for b in range(row.size // BYTES):
        o, y = b * BYTES, b * BLOCK
        d = f16_at(row, o)
        d16 = d * np.float32(1 / 16)
        for i in range(span(16, out, y + 16)):
            v = np.int32(row[o + 2 + i])
            out[y + i] = d * np.float32((v & 0x0F) - 8)
            out[y + i + 16] = d16 * np.float32((v & 0xF0) - 128)


@njit_fast
def dot_row(row, x):
    lanes = np.zeros(BLOCK, np.float32)
    acc = 0.0
    n = row.size // BYTES
    for b in range(n):
        o, y = b * BYTES, b * BLOCK
        d = f16_at(row, o)
        d16 = d * np.float32(1 / 16)
        for i in range(16):
            v = np.int32(row[o + 2 + i])
            lanes[i] += d * (np.float32((v & 0x0F) - 8) * x[y + i])
            lanes[i + 16] += d16 * (np.float32((v & 0xF0) - 128) * x[y + i + 16])
        if b % LANE_BLOCKS == LANE_BLOCKS - 1 or b == n - 1:
            acc += flush(lanes)
    return acc


# --- quantization (ggml's quantize_row_q4_0_ref): d = -(value of largest magnitude) / 8,
# q = min(15, int(x / d + 8.5)) with C's truncation.

def quantize_blocks(x: np.ndarray) -> np.ndarray:
    """(n, 32) float32 -> (n, 18) uint8."""
    d = signed_absmax_np(x) / np.float32(-8)
    q = np.minimum(15, trunc_int(x * inverse(d)[:, None] + np.float32(8.5)))
    return np.concatenate([f16_bits_np(d).view(np.uint8).reshape(-1, 2), pack_nibbles(q)], axis=1)


@njit
def quantize_row(x, out):
    for b in range(x.size // BLOCK):
        o, y = b * BYTES, b * BLOCK
        d = signed_absmax(x, y) / np.float32(-8)
        inv = np.float32(1) / d if d != 0 else np.float32(0)
        put_f16(out, o, f16_bits(d))
        for j in range(16):
            q0 = min(15, np.int32(x[y + j] * inv + np.float32(8.5)))
            q1 = min(15, np.int32(x[y + 16 + j] * inv + np.float32(8.5)))
            put_nibbles(out, o + 2, q0, q1, j)
