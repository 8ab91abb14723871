"""Q6_K: super-blocks of 256 weights in 16 sub-blocks of 16, each with an int8 scale.

210 bytes = 128 (ql: low 4 bits) + 64 (qh: high 2 bits) + 16 (int8 scales) + 2 (f16 d)
weight[e] = (d * scale[e // 16]) * (q[e] - 32), q in 0..63
for half h < 2, column c < 4, l < 32 (e = 128*h + 32*c + l):
    low bits  = ql[64*h + 32*(c % 2) + l] nibble c // 2 (low nibble first)
    high bits = (qh[32*h + l] >> 2*c) & 3
"""
import numpy as np
from gguf import GGMLQuantizationType

from .jit import f16_at, njit, njit_fast

TYPE = GGMLQuantizationType.Q6_K
BLOCK = 256
BYTES = 210
OFFSET = np.float32(32)  # as a float32 constant: an int would promote the sums to float64


def dequantize_blocks(blocks: np.ndarray) -> np.ndarray:
    """(n, 210) uint8 -> (n, 256) float32."""
    n = blocks.shape[0]
    ql = blocks[:, 0:128].reshape(n, 2, 64)
    low = np.concatenate([ql & 15, ql >> 4], axis=2)  # (n, h, 128): columns c = 0, 1, 2, 3
    qh = blocks[:, 128:192].reshape(n, 2, 1, 32) >> np.array([0, 2, 4, 6], dtype=np.uint8)[:, None]
    high = (qh & 3).reshape(n, 2, 128)
    q = ((low | high << 4).astype(np.int8) - np.int8(32)).reshape(n, 16, 16).astype(np.float32)
    scales = blocks[:, 192:208].view(np.int8).astype(np.float32)  # (n, 16)
    d = blocks[:, 208:210].view(np.float16).astype(np.float32)  # (n, 1)
    return ((d * scales)[:, :, None] * q).reshape(n, 256)


@njit(inline="always")
def quant(row, o, h, c, l):
    """q[128*h + 32*c + l] - 32 of the block at row[o:]."""
    v = np.int32(row[o + 64 * h + 32 * (c % 2) + l]) >> (4 * (c // 2))
    hi = np.int32(row[o + 128 + 32 * h + l]) >> (2 * c)
    return ((v & 15) | (hi & 3) << 4) - 32


@njit
def dequantize_row(row, out):
    sc = row.view(np.int8)
    for b in range(row.size // BYTES):
        o, y = b * BYTES, b * BLOCK
        d = f16_at(row, o + 208)
        for h in range(2):
            for c in range(4):
                z, s = y + 128 * h + 32 * c, o + 192 + 8 * h + 2 * c  # s: scale of l < 16
                d0, d1 = d * np.float32(sc[s]), d * np.float32(sc[s + 1])
                for l in range(16):
                    out[z + l] = d0 * np.float32(quant(row, o, h, c, l))
                    out[z + 16 + l] = d1 * np.float32(quant(row, o, h, c, l + 16))


@njit_fast
def dot_row(row, x):
    sc = row.view(np.int8)
    acc = 0.0
    for b in range(row.size // BYTES):
        o, y = b * BYTES, b * BLOCK
        d = f16_at(row, o + 208)
        for h in range(2):
            ql, qh, z = o + 64 * h, o + 128 + 32 * h, y + 128 * h
            for half in range(2):  # l < 16 and l >= 16 have their own four scales
                t = o + 192 + 8 * h + half
                d0, d1 = d * np.float32(sc[t]), d * np.float32(sc[t + 2])
                d2, d3 = d * np.float32(sc[t + 4]), d * np.float32(sc[t + 6])
                s = np.float32(0)
                for l in range(16 * half, 16 * half + 16):
                    a, c, e = row[ql + l], row[ql + 32 + l], row[qh + l]
                    # uint8(): lets LLVM do the bit twiddling in byte-wide vector lanes
                    s += (d0 * (np.float32(np.uint8((a & 15) | (e & 3) << 4)) - OFFSET) * x[z + l]
                          + d1 * (np.float32(np.uint8((c & 15) | (e & 12) << 2)) - OFFSET) * x[z + 32 + l]
                          + d2 * (np.float32(np.uint8((a >> 4) | (e & 48))) - OFFSET) * x[z + 64 + l]
                          + d3 * (np.float32(np.uint8((c >> 4) | (e & 192) >> 2)) - OFFSET) * x[z + 96 + l])
                acc += s
    return acc
