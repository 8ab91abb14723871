"""Q5_K: super-blocks of 256 weights in 8 sub-blocks of 32, each with a 6-bit scale and 6-bit min.

176 bytes = 2 (f16 d) + 2 (f16 dmin) + 12 (scales and mins, packed as in Q4_K) + 32 (qh: bit s of
byte l is the 5th bit of q[32*s + l]) + 128 (low 4 bits, nibbles arranged as in Q4_K)
weight[32*s + l] = (d * scale[s]) * q[32*s + l] - dmin * min[s]
"""
import numpy as np
from gguf import GGMLQuantizationType

from .jit import f16_at, njit, njit_fast
from .q4_k import fit_blocks, fit_row, scale_min, scales_and_mins

TYPE = GGMLQuantizationType.Q5_K
BLOCK = 256
BYTES = 176


def dequantize_blocks(blocks: np.ndarray) -> np.ndarray:
    """(n, 176) uint8 -> (n, 256) float32."""
    n = blocks.shape[0]
    d = blocks[:, 0:2].view(np.float16).astype(np.float32)  # (n, 1)
    dmin = blocks[:, 2:4].view(np.float16).astype(np.float32)
    scales, mins = scales_and_mins(blocks[:, 4:16])
    qh = blocks[:, 16:48].reshape(n, 1, 32) >> np.arange(8, dtype=np.uint8)[:, None]  # (n, 8, 32)
    qs = blocks[:, 48:176].reshape(n, 4, 1, 32)
    low = np.concatenate([qs & 15, qs >> 4], axis=2).reshape(n, 8, 32)
    q = (low | (qh & 1) << 4).astype(np.float32)
    dl = (d * scales.astype(np.float32))[:, :, None]  # (n, 8, 1)
    ml = (dmin * mins.astype(np.float32))[:, :, None]
    return (dl * q - ml).reshape(n, 256)


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
            q, z = o + 48 + 32 * g, y + 64 * g
            for l in range(32):
                v, h = np.int32(row[q + l]), np.int32(row[o + 16 + l]) >> (2 * g)
                out[z + l] = d0 * np.float32((v & 15) | (h & 1) << 4) - n0
                out[z + 32 + l] = d1 * np.float32((v >> 4) | (h & 2) << 3) - n1


@njit_fast
def dot_row(row, x):
    # Bits are used in place, each with its own float scale (no shifts: LLVM then keeps the
    # vector lanes narrow): q = (v & 15) + 16 * [qh & bit0], 16 * q = (v & 0xF0) + 256 * [qh & bit1].
    acc = 0.0
    for b in range(row.size // BYTES):
        o, y = b * BYTES, b * BLOCK
        d, dmin = f16_at(row, o), f16_at(row, o + 2)
        for g in range(4):
            sc0, m0 = scale_min(row, o + 4, 2 * g)
            sc1, m1 = scale_min(row, o + 4, 2 * g + 1)
            d0, n0 = d * np.float32(sc0), dmin * np.float32(m0)
            d1, n1 = d * np.float32(sc1), dmin * np.float32(m1)
            bit0, bit1 = np.uint8(1 << 2 * g), np.uint8(2 << 2 * g)  # uint8: narrow vector lanes
            e0, e1 = d0 * np.float32(16 / bit0), d1 * np.float32(16 / bit1)
            d1 *= np.float32(1 / 16)
            q, z = o + 48 + 32 * g, y + 64 * g
            s = np.float32(0)  # weights rebuilt in registers, f32 sum over 64, f64 across groups
            for l in range(32):
                v, h = row[q + l], row[o + 16 + l]
                w0 = d0 * np.float32(v & 15) + e0 * np.float32(h & bit0) - n0
                w1 = d1 * np.float32(v & 0xF0) + e1 * np.float32(h & bit1) - n1
                s += w0 * x[z + l] + w1 * x[z + 32 + l]
            acc += s
    return acc


# --- quantization (ggml's quantize_row_q5_K_ref): Q4_K's fit with 5-bit quants -----------------
NMAX, RMIN, RDELTA, NSTEP = 31, np.float32(-0.5), np.float32(0.1), 15


def quantize_blocks(x: np.ndarray) -> np.ndarray:
    """(n, 256) float32 -> (n, 176) uint8."""
    n = x.shape[0]
    d, dmin, scales, L = fit_blocks(x, NMAX, RMIN, RDELTA, NSTEP)
    L = L.reshape(n, 4, 2, 32)
    qh = ((L >> 4) << (2 * np.arange(4, dtype=np.uint8)[:, None, None] + np.arange(2, dtype=np.uint8)[:, None]))
    qh = np.bitwise_or.reduce(qh.reshape(n, 8, 32), axis=1)
    qs = ((L[:, :, 0] & 15) | (L[:, :, 1] & 15) << 4).reshape(n, 128)
    return np.concatenate([d.view(np.uint8).reshape(n, 2), dmin.view(np.uint8).reshape(n, 2), scales,
                           qh.astype(np.uint8), qs], axis=1)


@njit
def quantize_row(x, out):
    L = np.empty(x.size, np.uint8)
    fit_row(x, out, BYTES, L, NMAX, RMIN, RDELTA, NSTEP)
    for b in range(x.size // BLOCK):
        o, y = b * BYTES, b * BLOCK
        out[o + 16:o + 48] = 0
        for g in range(4):
            for i in range(32):
                l1, l2 = L[y + 64 * g + i], L[y + 64 * g + 32 + i]
                out[o + 16 + i] |= (l1 >> 4) << (2 * g) | (l2 >> 4) << (2 * g + 1)
                out[o + 48 + 32 * g + i] = (l1 & 15) | (l2 & 15) << 4
