"""Q4_1: blocks of 32 weights, an f16 scale and an f16 minimum, 4-bit quants.

20 bytes = 2 (f16 d) + 2 (f16 m) + 16 (4-bit quants: byte i holds q[i] low, q[i + 16] high)
weight[i] = d * q[i] + m
"""
import numpy as np
from gguf import GGMLQuantizationType

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
