"""Q5_1: blocks of 32 weights, an f16 scale and an f16 minimum, 5-bit quants.

24 bytes = 2 (f16 d) + 2 (f16 m) + 4 (u32 qh: bit i is the 5th bit of q[i]) + 16 (low 4 bits:
byte i holds q[i] low, q[i + 16] high)
weight[i] = d * q[i] + m
"""
import numpy as np
from gguf import GGMLQuantizationType

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
