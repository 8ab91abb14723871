"""Q6_K: super-blocks of 256 weights in 16 sub-blocks of 16, each with an int8 scale.

210 bytes = 128 (ql: low 4 bits) + 64 (qh: high 2 bits) + 16 (int8 scales) + 2 (f16 d)
weight[e] = (d * scale[e // 16]) * (q[e] - 32), q in 0..63
for half h < 2, column c < 4, l < 32 (e = 128*h + 32*c + l):
    low bits  = ql[64*h + 32*(c % 2) + l] nibble c // 2 (low nibble first)
    high bits = (qh[32*h + l] >> 2*c) & 3
"""
import numpy as np
from gguf import GGMLQuantizationType

from .fit import (F0, GROUP_MAX_EPS, f16_bits, f16_bits_np, f16_value, make_qx_blocks, make_qx_groups, nearest,
                  nearest_int, nearest_ints, put_f16)
from .jit import f16_at, f16_to_f32, njit, njit_fast

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


# --- quantization (ggml's quantize_row_q6_K_ref) ------------------------------------------------
# Each sub-block of 16 gets a scale from make_qx (weights x**2); the 16 scales become int8 against
# the one of largest magnitude (-128 / it), and the weights are re-quantized against the rounded
# scales (a sub-block whose scale rounds to 0 keeps the quants of its fit).

def quantize_blocks(x: np.ndarray) -> np.ndarray:
    """(n, 256) float32 -> (n, 210) uint8."""
    n = x.shape[0]
    L, scales = make_qx_blocks(x.reshape(n * 16, 16), 32)
    L, scales = L.reshape(n, 16, 16), scales.reshape(n, 16)
    amax, vmax = np.zeros(n, np.float32), np.zeros(n, np.float32)
    for j in range(16):
        bigger = np.abs(scales[:, j]) > amax
        amax, vmax = np.where(bigger, np.abs(scales[:, j]), amax), np.where(bigger, scales[:, j], vmax)
    with np.errstate(all="ignore"):
        iscale = np.float32(-128) / vmax
        d_bits = f16_bits_np(np.float32(1) / iscale)
        sc = np.minimum(127, nearest_ints(iscale[:, None] * scales))  # (n, 16) in -128..127
        d = f16_value(d_bits)[:, None] * sc.astype(np.float32)
        requant = np.clip(nearest_ints(x.reshape(n, 16, 16) / d[:, :, None]), -32, 31) + 32
    L = np.where((d != 0)[:, :, None], requant, L).reshape(n, 2, 4, 32).astype(np.uint8)
    ql = np.concatenate([L[:, :, 0] & 15 | (L[:, :, 2] & 15) << 4, L[:, :, 1] & 15 | (L[:, :, 3] & 15) << 4], axis=2)
    qh = np.bitwise_or.reduce((L >> 4) << (2 * np.arange(4, dtype=np.uint8))[:, None], axis=2)  # (n, 2, 32)
    blocks = np.concatenate([ql.reshape(n, 128), qh.reshape(n, 64), sc.astype(np.int8).view(np.uint8),
                             d_bits.view(np.uint8).reshape(n, 2)], axis=1)
    blocks[amax < GROUP_MAX_EPS] = 0
    return blocks


BATCH = 16  # super-blocks fitted together: their 256 sub-blocks are the vector lanes


@njit
def quantize_row(x, out):
    L = np.empty(x.size, np.uint8)
    nb = x.size // BLOCK
    for b0 in range(0, nb, BATCH):
        G = 16 * min(BATCH, nb - b0)
        xt, Lt, scales = np.empty((16, G), np.float32), np.empty((16, G), np.float32), np.empty(G, np.float32)
        for g in range(G):
            for i in range(16):
                xt[i, g] = x[BLOCK * b0 + 16 * g + i]
        make_qx_groups(xt, Lt, 32, scales)
        for b in range(b0, b0 + G // 16):
            _finish_block(x, out, b, L, Lt, scales, 16 * (b - b0))
    for b in range(nb):
        o, y = b * BYTES, b * BLOCK
        for h in range(2):
            for i in range(32):
                e = y + 128 * h + i
                q1, q2, q3, q4 = L[e], L[e + 32], L[e + 64], L[e + 96]
                out[o + 64 * h + i] = (q1 & 15) | (q3 & 15) << 4
                out[o + 64 * h + 32 + i] = (q2 & 15) | (q4 & 15) << 4
                out[o + 128 + 32 * h + i] = q1 >> 4 | (q2 >> 4) << 2 | (q3 >> 4) << 4 | (q4 >> 4) << 6


@njit
def _finish_block(x, out, b, L, Lt, scales, g0):
    """Super-block b (its sub-blocks are columns g0..g0+15 of the fit): int8 scales, d, then the
    weights re-quantized against the rounded scales. All-zero blocks become zero bytes."""
    o, y = b * BYTES, b * BLOCK
    amax, vmax = F0, F0
    for j in range(16):
        if abs(scales[g0 + j]) > amax:
            amax, vmax = abs(scales[g0 + j]), scales[g0 + j]
    if amax < GROUP_MAX_EPS:
        out[o:o + BYTES] = 0
        L[y:y + BLOCK] = 0
        return
    iscale = np.float32(-128) / vmax
    d_bits = f16_bits(np.float32(1) / iscale)
    put_f16(out, o + 208, d_bits)
    d = f16_to_f32(d_bits)
    for j in range(16):
        sc = min(127, nearest_int(iscale * scales[g0 + j]))
        out[o + 192 + j] = sc & 0xFF
        dj, z = d * np.float32(sc), y + 16 * j
        if dj == 0:  # keep the fit's quants
            for i in range(16):
                L[z + i] = np.uint8(Lt[i, g0 + j])
        else:
            for i in range(16):
                L[z + i] = np.uint8(min(np.float32(31), max(np.float32(-32), nearest(x[z + i] / dj))) + np.float32(32))
