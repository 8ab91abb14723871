"""Q4_K: super-blocks of 256 weights in 8 sub-blocks of 32, each with a 6-bit scale and 6-bit min.

144 bytes = 2 (f16 d) + 2 (f16 dmin) + 12 (8 scales + 8 mins, 6 bits each) + 128 (4-bit quants)
weight[32*s + l] = (d * scale[s]) * q[32*s + l] - dmin * min[s]
quants: byte l of 32-byte group g (g < 4) holds q[64*g + l] (low nibble), q[64*g + 32 + l] (high)
scales bytes b[0..11]: s < 4: scale = b[s] & 63,                     min = b[s+4] & 63
                       s >= 4: scale = b[s+4] & 15 | (b[s-4] >> 6) << 4, min = b[s+4] >> 4 | (b[s] >> 6) << 4
"""
import numpy as np
from gguf import GGMLQuantizationType

from .jit import f16_at, njit, njit_fast, span

TYPE = GGMLQuantizationType.Q4_K
BLOCK = 256
BYTES = 144


def scales_and_mins(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, 12) packed bytes -> scales (n, 8), mins (n, 8) as uint8 in 0..63."""
    lo, mid, hi = b[:, 0:4], b[:, 4:8], b[:, 8:12]
    scales = np.concatenate([lo & 63, (hi & 15) | (lo >> 6) << 4], axis=1)
    mins = np.concatenate([mid & 63, (hi >> 4) | (mid >> 6) << 4], axis=1)
    return scales, mins


def dequantize_blocks(blocks: np.ndarray) -> np.ndarray:
    """(n, 144) uint8 -> (n, 256) float32."""
    n = blocks.shape[0]
    d = blocks[:, 0:2].view(np.float16).astype(np.float32)  # (n, 1)
    dmin = blocks[:, 2:4].view(np.float16).astype(np.float32)
    scales, mins = scales_and_mins(blocks[:, 4:16])
    qs = blocks[:, 16:144].reshape(n, 4, 1, 32)
    q = np.concatenate([qs & 15, qs >> 4], axis=2).reshape(n, 8, 32).astype(np.float32)
    dl = (d * scales.astype(np.float32))[:, :, None]  # (n, 8, 1)
    ml = (dmin * mins.astype(np.float32))[:, :, None]
    return (dl * q - ml).reshape(n, 256)


@njit(inline="always")
def scale_min(row, p, s):
    """Scale and min of sub-block s from the 12 packed bytes at row[p:p+12]."""
    if s < 4:
        return np.int32(row[p + s] & 63), np.int32(row[p + s + 4] & 63)
    sc = (row[p + s + 4] & 15) | (row[p + s - 4] >> 6) << 4
    mn = (row[p + s + 4] >> 4) | (row[p + s] >> 6) << 4
    return np.int32(sc), np.int32(mn)


@njit
def dequantize_row(row, out):
    for b in range(row.size // BYTES):
        o, y = b * BYTES, b * BLOCK
        d, dmin = f16_at(row, o), f16_at(row, o + 2)
        for g in range(4):
            sc0, m0 = scale_min(row, o + 4, 2 * g)
            sc1, m1 = scale_min(row, o + 4, 2 * g + 1)
            d0, n0 = d * np.float32(sc0), dmin * np.float32(m0)
            d1, n1 = d * np.float32(sc1), dmin * np.float32(m1)
            d16 = d1 * np.float32(1 / 16)  # high nibble in place, as 16 * q: same products
            q, z = o + 16 + 32 * g, y + 64 * g
            for l in range(span(32, out, z + 32)):
                v = np.int32(row[q + l])
                out[z + l] = d0 * np.float32(v & 15) - n0
                out[z + 32 + l] = d16 * np.float32(v & 0xF0) - n1


@njit_fast
def dot_row(row, x):
    acc = 0.0
    for b in range(row.size // BYTES):
        o, y = b * BYTES, b * BLOCK
        d, dmin = f16_at(row, o), f16_at(row, o + 2)
        for g in range(4):
            sc0, m0 = scale_min(row, o + 4, 2 * g)
            sc1, m1 = scale_min(row, o + 4, 2 * g + 1)
            d0, n0 = d * np.float32(sc0), dmin * np.float32(m0)
            d1, n1 = d * np.float32(sc1), dmin * np.float32(m1)
            d1 *= np.float32(1 / 16)  # high nibble used in place, as 16 * q (no shift)
            q, z = o + 16 + 32 * g, y + 64 * g
            s = np.float32(0)  # weights rebuilt in registers, f32 sum over 64, f64 across groups
            for l in range(32):
                v = np.int32(row[q + l])
                s += (d0 * np.float32(v & 15) - n0) * x[z + l] + (d1 * np.float32(v & 0xF0) - n1) * x[z + 32 + l]
            acc += s
    return acc
