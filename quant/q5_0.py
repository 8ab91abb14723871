"""Q5_0: blocks of 32 weights, one f16 scale, 5-bit quants centred on 16.

22 bytes = 2 (f16 d) + 4 (u32 qh: bit i is the 5th bit of q[i]) + 16 (low 4 bits: byte i holds
q[i] low, q[i + 16] high)
weight[i] = d * (q[i] - 16)
"""
import numpy as np
from gguf import GGMLQuantizationType

from .fit import (f16_bits, f16_bits_np, inverse, pack_high_bits, pack_nibbles, put_f16, put_nibbles, put_u32,
                  signed_absmax, signed_absmax_np, trunc_int)
from .jit import LANE_BLOCKS, f16_at, flush, njit, njit_fast, span

TYPE = GGMLQuantizationType.Q5_0
BLOCK = 32
BYTES = 22


def dequantize_blocks(blocks: np.ndarray) -> np.ndarray:
    """(n, 22) uint8 -> (n, 32) float32."""
    d = blocks[:, 0:2].view(np.float16).astype(np.float32)  # (n, 1)
    qh = blocks[:, 2:6].view(np.uint32)  # (n, 1)
    high = ((qh >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8) << 4  # (n, 32)
    qs = blocks[:, 6:22]
    q = (np.concatenate([qs & 0x0F, qs >> 4], axis=1) | high).astype(np.int8) - np.int8(16)
    return d * q.astype(np.float32)


@njit(inline="always")
def qh_at(row, o):
    """The little-endian uint32 of 5th bits at row[o:o+4]."""
    return np.int64(row[o]) | np.int64(row[o + 1]) << 8 | np.int64(row[o + 2]) << 16 | np.int64(row[o + 3]) << 24


@njit(inline="always")
def quants(row, o, qh, i):
    """(q[i], 16 * q[i + 16]) of the block whose 16 nibble bytes start at row[o]; the high one is
    read in place (v & 0xF0) and scaled by d / 16 (same products, no right shift; see q4_0)."""
    v = np.int32(row[o + i])
    lo = (v & 0x0F) | np.int32((qh >> i) & 1) << 4
    hi = (v & 0xF0) | np.int32((qh >> (i + 16)) & 1) << 8
    return lo, hi


@njit
def dequantize_row(row, out):
    for b in range(row.size // BYTES):
        o, y = b * BYTES, b * BLOCK
        d, qh = f16_at(row, o), qh_at(row, o + 2)
        d16 = d * np.float32(1 / 16)
        for i in range(span(16, out, y + 16)):
            lo, hi = quants(row, o + 6, qh, i)
            out[y + i] = d * np.float32(lo - 16)
            out[y + i + 16] = d16 * np.float32(hi - 256)


@njit_fast
def dot_row(row, x):
    lanes = np.zeros(BLOCK, np.float32)
    acc = 0.0
    n = row.size // BYTES
    for b in range(n):
        o, y = b * BYTES, b * BLOCK
        d, qh = f16_at(row, o), qh_at(row, o + 2)
        d16 = d * np.float32(1 / 16)
        for i in range(16):
            lo, hi = quants(row, o + 6, qh, i)
            lanes[i] += d * (np.float32(lo - 16) * x[y + i])
            lanes[i + 16] += d16 * (np.float32(hi - 256) * x[y + i + 16])
        if b % LANE_BLOCKS == LANE_BLOCKS - 1 or b == n - 1:
            acc += flush(lanes)
    return acc


# --- quantization (ggml's quantize_row_q5_0_ref): d = -(value of largest magnitude) / 16,
# q = min(31, int(x / d + 16.5)) with C's truncation.

def quantize_blocks(x: np.ndarray) -> np.ndarray:
    """(n, 32) float32 -> (n, 22) uint8."""
    d = signed_absmax_np(x) / np.float32(-16)
    q = np.minimum(31, trunc_int(x * inverse(d)[:, None] + np.float32(16.5)))
    return np.concatenate([f16_bits_np(d).view(np.uint8).reshape(-1, 2), pack_high_bits(q), pack_nibbles(q)], axis=1)


@njit
def quantize_row(x, out):
    for b in range(x.size // BLOCK):
        o, y = b * BYTES, b * BLOCK
        d = signed_absmax(x, y) / np.float32(-16)
        inv = np.float32(1) / d if d != 0 else np.float32(0)
        put_f16(out, o, f16_bits(d))
        qh = 0
        for j in range(16):
            q0 = min(31, np.int32(x[y + j] * inv + np.float32(16.5)))
            q1 = min(31, np.int32(x[y + 16 + j] * inv + np.float32(16.5)))
            put_nibbles(out, o + 6, q0, q1, j)
            qh |= (q0 >> 4 & 1) << j | (q1 >> 4 & 1) << (j + 16)
        put_u32(out, o + 2, qh)
