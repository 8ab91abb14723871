"""Q8_0: blocks of 32 weights, one f16 scale, int8 quants.

34 bytes = 2 (f16 d) + 32 (int8 q)
weight[i] = q[i] * d
"""
import numpy as np
from gguf import GGMLQuantizationType

from .fit import f16_bits, f16_bits_np, put_f16, round_away, roundf
from .jit import LANE_BLOCKS, f16_at, flush, njit, njit_fast, span

TYPE = GGMLQuantizationType.Q8_0
BLOCK = 32
BYTES = 34


def dequantize_blocks(blocks: np.ndarray) -> np.ndarray:
    """(n, 34) uint8 -> (n, 32) float32."""
    d = blocks[:, 0:2].view(np.float16).astype(np.float32)  # (n, 1)
    q = blocks[:, 2:34].view(np.int8).astype(np.float32)
    return q * d


@njit
def dequantize_row(row, out):
    q = row.view(np.int8)
    for b in range(row.size // BYTES):
        o, y = b * BYTES, b * BLOCK
        d = f16_at(row, o)
        for i in range(span(32, out, y)):
            out[y + i] = np.float32(q[o + 2 + i]) * d


@njit_fast
def dot_row(row, x):
    q = row.view(np.int8)
    lanes = np.zeros(BLOCK, np.float32)
    acc = 0.0
    n = row.size // BYTES
    for b in range(n):
        o, y = b * BYTES, b * BLOCK
        d = f16_at(row, o)
        for i in range(32):
            lanes[i] += d * (np.float32(q[o + 2 + i]) * x[y + i])
        if b % LANE_BLOCKS == LANE_BLOCKS - 1 or b == n - 1:
            acc += flush(lanes)
    return acc


# --- quantization (ggml's quantize_row_q8_0_ref): d = max|x| / 127, q = roundf(x / d) -----------

def quantize_blocks(x: np.ndarray) -> np.ndarray:
    """(n, 32) float32 -> (n, 34) uint8."""
    d = np.abs(x).max(axis=1) / np.float32(127)
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, np.float32(1) / d, np.float32(0))
    q = round_away(x * inv[:, None]).astype(np.int8)
    return np.concatenate([f16_bits_np(d).view(np.uint8).reshape(-1, 2), q.view(np.uint8)], axis=1)


@njit
def quantize_row(x, out):
    for b in range(x.size // BLOCK):
        o, y = b * BYTES, b * BLOCK
        amax = np.float32(0)
        for i in range(32):
            amax = max(amax, abs(x[y + i]))
        d = amax / np.float32(127)
        inv = np.float32(1) / d if d != 0 else np.float32(0)
        put_f16(out, o, f16_bits(d))
        for i in range(32):
            out[o + 2 + i] = roundf(x[y + i] * inv) & 0xFF
