"""Q4_1: blocks of 32 weights, an f16 scale and an f16 minimum, 4-bit quants.

20 bytes = 2 (f16 d) + 2 (f16 m) + 16 (4-bit quants: byte i holds q[i] low, q[i + 16] high)
weight[i] = d * q[i] + m
"""
import numpy as np
from gguf import GGMLQuantizationType

from .fit import f16_bits, f16_bits_np, inverse, min_max, min_max_np, pack_nibbles, put_f16, put_nibbles, trunc_int
from .jit import LANE_BLOCKS, f16_at, flush, njit, njit_fast, span

TYPE = GGMLQuantizationType.Q4_1
BLOCK = 32
BYTES = 20


def dequantize_blocks(blocks: np.ndarray) -> np.ndarray:
    """(n, 20) uint8 -> (n, 32) float32."""
    d = blocks[:, 0:2].view(np.float16).astype(np.float32)  # (n, 1)
    m = blocks[:, 2:4].view(np.float16).astype(np.float32)
    qs = blocks[:, 4:20]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32)
    return d * q + m


# High nibbles are read in place as 16 * q with scale d / 16 (same products, no shift); see q4_0.

@njit
def dequantize_row(row, out):
    for b in range(row.size // BYTES):
        o, y = b * BYTES, b * BLOCK
        d, m = f16_at(row, o), f16_at(row, o + 2)
        d16 = d * np.float32(1 / 16)
        for i in range(span(16, out, y + 16)):
            v = np.int32(row[o + 4 + i])
            out[y + i] = d * np.float32(v & 0x0F) + m
            out[y + i + 16] = d16 * np.float32(v & 0xF0) + m


@njit_fast
def dot_row(row, x):
    lanes = np.zeros(BLOCK, np.float32)
    acc = 0.0
    n = row.size // BYTES
    for b in range(n):
        o, y = b * BYTES, b * BLOCK
        d, m = f16_at(row, o), f16_at(row, o + 2)
        d16 = d * np.float32(1 / 16)
        for i in range(16):
            v = np.int32(row[o + 4 + i])
            lanes[i] += (d * np.float32(v & 0x0F) + m) * x[y + i]
            lanes[i + 16] += (d16 * np.float32(v & 0xF0) + m) * x[y + i + 16]
        if b % LANE_BLOCKS == LANE_BLOCKS - 1 or b == n - 1:
            acc += flush(lanes)
    return acc


# --- quantization (ggml's quantize_row_q4_1_ref): m = min, d = (max - min) / 15,
# q = min(15, int((x - m) / d + 0.5)) with C's truncation.

def quantize_blocks(x: np.ndarray) -> np.ndarray:
    """(n, 32) float32 -> (n, 20) uint8."""
    vmin, vmax = min_max_np(x)
    d = (vmax - vmin) / np.float32(15)
    q = np.minimum(15, trunc_int((x - vmin[:, None]) * inverse(d)[:, None] + np.float32(0.5)))
    head = np.stack([f16_bits_np(d), f16_bits_np(vmin)], axis=1).view(np.uint8)
    return np.concatenate([head, pack_nibbles(q)], axis=1)


@njit
def quantize_row(x, out):
    for b in range(x.size // BLOCK):
        o, y = b * BYTES, b * BLOCK
        vmin, vmax = min_max(x, y)
        d = (vmax - vmin) / np.float32(15)
        inv = np.float32(1) / d if d != 0 else np.float32(0)
        put_f16(out, o, f16_bits(d))
        put_f16(out, o + 2, f16_bits(vmin))
        for j in range(16):
            q0 = min(15, np.int32((x[y + j] - vmin) * inv + np.float32(0.5)))
            q1 = min(15, np.int32((x[y + 16 + j] - vmin) * inv + np.float32(0.5)))
            put_nibbles(out, o + 4, q0, q1, j)
