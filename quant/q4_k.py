"""Q4_K: super-blocks of 256 weights in 8 sub-blocks of 32, each with a 6-bit scale and 6-bit min.

144 bytes = 2 (f16 d) + 2 (f16 dmin) + 12 (8 scales + 8 mins, 6 bits each) + 128 (4-bit quants)
weight[32*s + l] = (d * scale[s]) * q[32*s + l] - dmin * min[s]
quants: byte l of 32-byte group g (g < 4) holds q[64*g + l] (low nibble), q[64*g + 32 + l] (high)
scales bytes b[0..11]: s < 4: scale = b[s] & 63,                     min = b[s+4] & 63
                       s >= 4: scale = b[s+4] & 15 | (b[s-4] >> 6) << 4, min = b[s+4] >> 4 | (b[s] >> 6) << 4
"""
import numpy as np
from gguf import GGMLQuantizationType

from .fit import (F0, f16_bits, f16_bits_np, f16_value, make_qkx2_blocks, make_qkx2_groups, nearest, nearest_int,
                  nearest_ints, put_f16, running_max)
from .jit import f16_at, f16_to_f32, njit, njit_fast, span

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


# --- quantization (ggml's quantize_row_q4_K_ref; Q5_K shares the fit with its own constants) ----
# Each sub-block of 32 gets a scale and a minimum from make_qkx2 (weights: rms of the sub-block
# + |x|); the 8 scales and 8 mins are then quantized to 6 bits against the largest of each, and
# the weights re-quantized against the rounded scales (a sub-block whose scale rounds to 0 keeps
# the quants of its fit).
NMAX, RMIN, RDELTA, NSTEP = 15, np.float32(-1.0), np.float32(0.1), 20


def pack_scales_mins(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """6-bit scales and mins (n, 8) -> the 12 packed bytes (n, 12) (inverse of scales_and_mins)."""
    ls, lm = ls.astype(np.uint8), lm.astype(np.uint8)
    lo = ls[:, :4] | (ls[:, 4:] >> 4) << 6
    mid = lm[:, :4] | (lm[:, 4:] >> 4) << 6
    hi = (ls[:, 4:] & 15) | (lm[:, 4:] & 15) << 4
    return np.concatenate([lo, mid, hi], axis=1)


def fit_blocks(x: np.ndarray, nmax: int, rmin, rdelta, nstep: int):
    """x (n, 256) float32 -> (d bits (n,), dmin bits (n,), packed scales (n, 12), L (n, 256))."""
    n = x.shape[0]
    xs = x.reshape(n * 8, 32)
    sum_x2 = np.zeros(n * 8, np.float32)
    for i in range(32):
        sum_x2 += xs[:, i] * xs[:, i]
    weights = np.sqrt(sum_x2 / np.float32(32))[:, None] + np.abs(xs)
    L, scales, mins = make_qkx2_blocks(xs, weights, nmax, rmin, rdelta, nstep)
    scales, mins = scales.reshape(n, 8), mins.reshape(n, 8)
    max_scale, max_min = running_max(scales), running_max(mins)
    with np.errstate(divide="ignore"):
        inv_scale = np.where(max_scale > 0, np.float32(63) / max_scale, F0)
        inv_min = np.where(max_min > 0, np.float32(63) / max_min, F0)
    ls = np.minimum(63, nearest_ints(inv_scale[:, None] * scales) & 0xFF)
    lm = np.minimum(63, nearest_ints(inv_min[:, None] * mins) & 0xFF)
    d_bits, m_bits = f16_bits_np(max_scale / np.float32(63)), f16_bits_np(max_min / np.float32(63))
    d = f16_value(d_bits)[:, None] * ls.astype(np.float32)  # (n, 8)
    dm = f16_value(m_bits)[:, None] * lm.astype(np.float32)
    with np.errstate(all="ignore"):
        requant = np.clip(nearest_ints((x.reshape(n, 8, 32) + dm[:, :, None]) / d[:, :, None]), 0, nmax)
    L = np.where((d != 0)[:, :, None], requant, L.reshape(n, 8, 32)).reshape(n, 256)
    return d_bits, m_bits, pack_scales_mins(ls, lm), L.astype(np.uint8)


def quantize_blocks(x: np.ndarray) -> np.ndarray:
    """(n, 256) float32 -> (n, 144) uint8."""
    n = x.shape[0]
    d, dmin, scales, L = fit_blocks(x, NMAX, RMIN, RDELTA, NSTEP)
    L = L.reshape(n, 4, 2, 32)
    qs = (L[:, :, 0] | L[:, :, 1] << 4).reshape(n, 128)
    return np.concatenate([d.view(np.uint8).reshape(n, 2), dmin.view(np.uint8).reshape(n, 2), scales, qs], axis=1)


BATCH = 16  # super-blocks fitted together: their 128 sub-blocks are the vector lanes


@njit
def fit_row(x, out, block_bytes, L, nmax, rmin, rdelta, nstep):
    """Fit every super-block of the row x: writes d, dmin and the packed scales at the start of
    each block of out (block b at b * block_bytes) and the quants (0..nmax) to L (x.size,)."""
    nb = x.size // BLOCK
    for b0 in range(0, nb, BATCH):
        G = 8 * min(BATCH, nb - b0)  # sub-blocks in this batch
        xt, wt = np.empty((32, G), np.float32), np.empty((32, G), np.float32)
        sum_x2 = np.zeros(G, np.float32)
        for g in range(G):
            for i in range(32):
                xt[i, g] = x[BLOCK * b0 + 32 * g + i]
        for i in range(32):
            for g in range(G):
                sum_x2[g] += xt[i, g] * xt[i, g]
        for g in range(G):
            sum_x2[g] = np.sqrt(sum_x2[g] / np.float32(32))  # now the sub-block's rms
        for i in range(32):
            for g in range(G):
                wt[i, g] = sum_x2[g] + abs(xt[i, g])
        Lt, scales, mins = np.empty((32, G), np.float32), np.empty(G, np.float32), np.empty(G, np.float32)
        make_qkx2_groups(xt, wt, Lt, nmax, rmin, rdelta, nstep, scales, mins)
        for b in range(b0, b0 + G // 8):
            _finish_block(x, out, b * block_bytes, b, L, Lt, scales, mins, 8 * (b - b0), nmax)


@njit
def _finish_block(x, out, o, b, L, Lt, scales, mins, g0, nmax):
    """Super-block b (its sub-blocks are columns g0..g0+7 of the fit): 6-bit scales and mins, d,
    dmin, then the weights re-quantized against the rounded scales."""
    max_scale, max_min = F0, F0
    for j in range(8):
        max_scale = scales[g0 + j] if scales[g0 + j] > max_scale else max_scale
        max_min = mins[g0 + j] if mins[g0 + j] > max_min else max_min
    inv_scale = np.float32(63) / max_scale if max_scale > 0 else F0
    inv_min = np.float32(63) / max_min if max_min > 0 else F0
    p = o + 4
    for j in range(8):
        ls = min(63, nearest_int(inv_scale * scales[g0 + j]) & 0xFF)
        lm = min(63, nearest_int(inv_min * mins[g0 + j]) & 0xFF)
        if j < 4:
            out[p + j], out[p + j + 4] = ls, lm
        else:
            out[p + j + 4] = (ls & 15) | (lm & 15) << 4
            out[p + j - 4] |= (ls >> 4) << 6
            out[p + j] |= (lm >> 4) << 6
    d_bits, m_bits = f16_bits(max_scale / np.float32(63)), f16_bits(max_min / np.float32(63))
    put_f16(out, o, d_bits)
    put_f16(out, o + 2, m_bits)
    d, dmin, fn = f16_to_f32(d_bits), f16_to_f32(m_bits), np.float32(nmax)
    for j in range(8):
        sc, m = scale_min(out, p, j)
        dj, dm, y = d * np.float32(sc), dmin * np.float32(m), BLOCK * b + 32 * j
        if dj == 0:  # keep the fit's quants
            for i in range(32):
                L[y + i] = np.uint8(Lt[i, g0 + j])
        else:
            for i in range(32):
                L[y + i] = np.uint8(min(fn, max(F0, nearest((x[y + i] + dm) / dj))))


@njit
def quantize_row(x, out):
    L = np.empty(x.size, np.uint8)
    fit_row(x, out, BYTES, L, NMAX, RMIN, RDELTA, NSTEP)
    for b in range(x.size // BLOCK):
        o, y = b * BYTES, b * BLOCK
        for g in range(4):
            for i in range(32):
                out[o + 16 + 32 * g + i] = L[y + 64 * g + i] | L[y + 64 * g + 32 + i] << 4
