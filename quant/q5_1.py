"""Q5_1: blocks of 32 weights, an f16 scale and an f16 minimum, 5-bit quants.

24 bytes = 2 (f16 d) + 2 (f16 m) + 4 (u32 qh: bit i is the 5th bit of q[i]) + 16 (low 4 bits:
byte i holds q[i] low, q[i + 16] high)
weight[i] = d * q[i] + m
"""
import numpy as np
from gguf import GGMLQuantizationType

from .fit import (f16_bits, f16_bits_np, inverse, min_max, min_max_np, pack_high_bits, pack_nibbles, put_f16,
                  put_nibbles, put_u32, trunc_int)
from .jit import LANE_BLOCKS, f16_at, flush, njit, njit_fast, span
from .q5_0 import qh_at, quants

TYPE = GGMLQuantizationType.Q5_1
BLOCK = 32
BYTES = 24


def dequantize_blocks(blocks: np.ndarray) -> np.ndarray:
    """(n, 24) uint8 -> (n, 32) float32."""
    d = blocks[:, 0:2].view(np.float16).astype(np.float32)  # (n, 1)
    m = blocks[:, 2:4].view(np.float16).astype(np.float32)
    qh = blocks[:, 4:8].view(np.uint32)  # (n, 1)
    high = ((qh >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8) << 4  # (n, 32)
    qs = blocks[:, 8:24]
    q = (np.concatenate([qs & 0x0F, qs >> 4], axis=1) | high).astype(np.float32)
    return d * q + m


@njit
def dequantize_row(row, out):
    for b in range(row.size // BYTES):
        o, y = b * BYTES, b * BLOCK
        d, m, qh = f16_at(row, o), f16_at(row, o + 2), qh_at(row, o + 4)
        d16 = d * np.float32(1 / 16)
        for i in range(span(16, out, y + 16)):
            lo, hi = quants(row, o + 8, qh, i)
            out[y + i] = d * np.float32(lo) + m
            out[y + i + 16] = d16 * np.float32(hi) + m


@njit_fast
def dot_row(row, x):
    lanes = np.zeros(BLOCK, np.float32)
    acc = 0.0
    n = row.size // BYTES
    for b in range(n):
        o, y = b * BYTES, b * BLOCK
        d, m, qh = f16_at(row, o), f16_at(row, o + 2), qh_at(row, o + 4)
        d16 = d * np.float32(1 / 16)
        for i in range(16):
            lo, hi = quants(row, o + 8, qh, i)
            lanes[i] += (d * np.float32(lo) + m) * x[y + i]
            lanes[i + 16] += (d16 * np.float32(hi) + m) * x[y + i + 16]
        if b % LANE_BLOCKS == LANE_BLOCKS - 1 or b == n - 1:
            acc += flush(lanes)
    return acc


# --- quantization (ggml's quantize_row_q5_1_ref): m = min, d = (max - min) / 31,
# q = uint8(int((x - m) / d + 0.5)) with C's truncation (no clamp, as in ggml).

def quantize_blocks(x: np.ndarray) -> np.ndarray:
    """(n, 32) float32 -> (n, 24) uint8."""
    vmin, vmax = min_max_np(x)
    d = (vmax - vmin) / np.float32(31)
    q = trunc_int((x - vmin[:, None]) * inverse(d)[:, None] + np.float32(0.5)) & 0xFF
    head = np.stack([f16_bits_np(d), f16_bits_np(vmin)], axis=1).view(np.uint8)
    return np.concatenate([head, pack_high_bits(q), pack_nibbles(q)], axis=1)


@njit
def quantize_row(x, out):
    for b in range(x.size // BLOCK):
        o, y = b * BYTES, b * BLOCK
        vmin, vmax = min_max(x, y)
        d = (vmax - vmin) / np.float32(31)
        inv = np.float32(1) / d if d != 0 else np.float32(0)
        put_f16(out, o, f16_bits(d))
        put_f16(out, o + 2, f16_bits(vmin))
        qh = 0
        for j in range(16):
            q0 = np.int32((x[y + j] - vmin) * inv + np.float32(0.5)) & 0xFF
            q1 = np.int32((x[y + 16 + j] - vmin) * inv + np.float32(0.5)) & 0xFF
            put_nibbles(out, o + 8, q0, q1, j)
            qh |= (q0 >> 4 & 1) << j | (q1 >> 4 & 1) << (j + 16)
        put_u32(out, o + 4, qh)
