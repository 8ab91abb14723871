"""Integer dot products of K-quant rows against 16-bit activations (activations.py), for decode.

Per super-block b the weights are w[e] = d * scale[s] * q[e] - dmin * min[s] (Q4_K) or
d * scale[j] * (u[e] - 32) (Q6_K, u = q + 32 in 0..63), the activations x[e] ~ xd[b] * q16[e], so
    Q4_K: sum_e w x = xd * (d * sum_s scale[s] * sum q q16 - dmin * sum_s min[s] * bsum[s])
    Q6_K: sum_e w x = xd * d * (sum_j scale[j] * sum u q16 - 32 * sum_j scale[j] * bsum[j])
The integer sums are exact (int64), computed either by the AVX2 intrinsics of simd.py or by the
portable loops here, so both paths give bit-identical results; only the f64 combination rounds.
Two kernels per type with the signature jit.DOT16_SIG: dot_<type> (portable), dot_<type>_avx2, and
two for prefill with jit.DOTS16_SIG, dots_<type>[_avx2], the same sums for T tokens at once: each
weight block is unpacked once and stays in L1 while it meets every token (same order, same bits).
"""
import numpy as np

from .jit import half_to_f32, njit
from .q6_k import quant
from .simd import NT16, q4_k_isum, q4_k_isum_w16, q4_k_msum, q6_k_isum, q6_k_isum_w16, q6_k_offset

BLOCK = 256
Q4_K_BYTES, Q6_K_BYTES = 144, 210


@njit(inline="always")
def q4_k_scales(w32, o4):
    """(scales, mins) of the Q4_K block whose 12 scale bytes are w32[o4:o4+3] (uint32 view), each
    packed 8 bytes in a uint64 (byte s = sub-block s), without branches (as ggml's utmp trick)."""
    b0, b1, b2 = np.uint64(w32[o4]), np.uint64(w32[o4 + 1]), np.uint64(w32[o4 + 2])
    sc = (b0 & 0x3F3F3F3F) | ((b2 & 0x0F0F0F0F) | ((b0 >> 6) & 0x03030303) << 4) << 32
    mn = (b1 & 0x3F3F3F3F) | (((b2 >> 4) & 0x0F0F0F0F) | ((b1 >> 6) & 0x03030303) << 4) << 32
    return sc, mn


@njit(inline="always")
def q4_k_combine(row, o, b, xd, bsums, mn, isum):
    msum = np.int64(0)
    for s in range(8):
        msum += np.int64((mn >> np.uint64(8 * s)) & np.uint64(255)) * (bsums[16 * b + 2 * s] + bsums[16 * b + 2 * s + 1])
    return q4_k_scaled(row, o, xd[b], isum, msum)


@njit(inline="always")
def q4_k_scaled(row, o, xd, isum, msum):
    d, dmin = np.float64(f16_half(row, o)), np.float64(f16_half(row, o + 2))
    return np.float64(xd) * (d * np.float64(isum) - dmin * np.float64(msum))


@njit(inline="always")
def f16_half(row, i):
    return half_to_f32(np.uint16(row[i]) | np.uint16(row[i + 1]) << np.uint16(8))


@njit(inline="always")
def q4_k_isum_loop(row, o, sc, x16, y):
    """Portable q4_k_isum: sum of scale[s] * q[e] * q16[y + e] over the block."""
    total = np.int64(0)
    for g in range(4):
        s0 = s1 = np.int32(0)
        for l in range(32):
            v = np.int32(row[o + 16 + 32 * g + l])
            s0 += (v & 15) * np.int32(x16[y + 64 * g + l])
            s1 += (v >> 4) * np.int32(x16[y + 64 * g + 32 + l])
        c0 = np.int64((sc >> np.uint64(16 * g)) & np.uint64(255))
        c1 = np.int64((sc >> np.uint64(16 * g + 8)) & np.uint64(255))
        total += c0 * s0 + c1 * s1
    return total


@njit
def dot_q4_k(row, xd, x16, xh, xl, bsums):
    w32 = row.view(np.uint32)
    acc = 0.0
    for b in range(row.size // Q4_K_BYTES):
        o = b * Q4_K_BYTES
        sc, mn = q4_k_scales(w32, o // 4 + 1)
        acc += q4_k_combine(row, o, b, xd, bsums, mn, q4_k_isum_loop(row, o, sc, x16, b * BLOCK))
    return acc


@njit
def dot_q4_k_avx2(row, xd, x16, xh, xl, bsums):
    w32 = row.view(np.uint32)
    acc = 0.0
    for b in range(row.size // Q4_K_BYTES):
        o = b * Q4_K_BYTES
        sc, mn = q4_k_scales(w32, o // 4 + 1)
        acc += q4_k_scaled(row, o, xd[b], q4_k_isum(row, o, sc, xh, xl, b * BLOCK), q4_k_msum(mn, bsums, 16 * b))
    return acc


@njit(inline="always")
def q6_k_combine(row, o, b, xd, bsums, isum):
    sc = row.view(np.int8)
    off = np.int64(0)
    for j in range(16):
        off += np.int64(sc[o + 192 + j]) * bsums[16 * b + j]
    return q6_k_scaled(row, o, xd[b], isum, off)


@njit(inline="always")
def q6_k_scaled(row, o, xd, isum, off):
    return np.float64(xd) * np.float64(f16_half(row, o + 208)) * np.float64(isum - 32 * off)


@njit(inline="always")
def q6_k_isum_loop(row, o, x16, y):
    """Portable q6_k_isum: sum of scale[j] * u[e] * q16[y + e] over the block."""
    sc = row.view(np.int8)
    total = np.int64(0)
    for h in range(2):
        for c in range(4):
            for half in range(2):
                s = np.int32(0)
                for l in range(16 * half, 16 * half + 16):
                    s += (quant(row, o, h, c, l) + 32) * np.int32(x16[y + 128 * h + 32 * c + l])
                total += np.int64(sc[o + 192 + 8 * h + 2 * c + half]) * s
    return total


@njit
def dot_q6_k(row, xd, x16, xh, xl, bsums):
    acc = 0.0
    for b in range(row.size // Q6_K_BYTES):
        o = b * Q6_K_BYTES
        acc += q6_k_combine(row, o, b, xd, bsums, q6_k_isum_loop(row, o, x16, b * BLOCK))
    return acc


@njit
def dot_q6_k_avx2(row, xd, x16, xh, xl, bsums):
    acc = 0.0
    for b in range(row.size // Q6_K_BYTES):
        o = b * Q6_K_BYTES
        acc += q6_k_scaled(row, o, xd[b], q6_k_isum(row, o, xh, xl, b * BLOCK), q6_k_offset(row, o, bsums, 16 * b))
    return acc


@njit
def dots_q4_k(row, xd, x16, xh, xl, bsums, out):
    w32 = row.view(np.uint32)
    acc = np.zeros(xd.shape[0])
    for b in range(row.size // Q4_K_BYTES):
        o = b * Q4_K_BYTES
        sc, mn = q4_k_scales(w32, o // 4 + 1)
        for t in range(xd.shape[0]):
            acc[t] += q4_k_combine(row, o, b, xd[t], bsums[t], mn, q4_k_isum_loop(row, o, sc, x16[t], b * BLOCK))
    out[:] = acc


@njit
def dots_q4_k_avx2(row, xd, x16, xh, xl, bsums, out):
    w32 = row.view(np.uint32)
    n, k = xd.shape[0], x16.shape[1]
    acc, isum = np.zeros(n), np.empty(NT16, np.int64)
    f16, fh, fl, fb = x16.reshape(x16.size), xh.reshape(xh.size), xl.reshape(xl.size), bsums.reshape(bsums.size)
    for b in range(row.size // Q4_K_BYTES):  # (flat views made once: no views in the loop)
        o = b * Q4_K_BYTES
        sc, mn = q4_k_scales(w32, o // 4 + 1)
        d, dmin = np.float64(f16_half(row, o)), np.float64(f16_half(row, o + 2))
        for t0 in range(0, n - NT16 + 1, NT16):  # NT16 tokens per call, then the rest one at a time
            q4_k_isum_w16(row, o, sc, f16, t0 * k + b * BLOCK, k, isum)
            for t in range(t0, t0 + NT16):  # = q4_k_scaled, with d and dmin loaded once
                msum = q4_k_msum(mn, fb, t * k // 16 + 16 * b)
                acc[t] += np.float64(xd[t, b]) * (d * np.float64(isum[t - t0]) - dmin * np.float64(msum))
        for t in range(n - n % NT16, n):
            acc[t] += q4_k_scaled(row, o, xd[t, b], q4_k_isum(row, o, sc, fh, fl, t * k + b * BLOCK),
                                  q4_k_msum(mn, fb, t * k // 16 + 16 * b))
    out[:] = acc


@njit
def dots_q6_k(row, xd, x16, xh, xl, bsums, out):
    acc = np.zeros(xd.shape[0])
    for b in range(row.size // Q6_K_BYTES):
        o = b * Q6_K_BYTES
        for t in range(xd.shape[0]):
            acc[t] += q6_k_combine(row, o, b, xd[t], bsums[t], q6_k_isum_loop(row, o, x16[t], b * BLOCK))
    out[:] = acc


@njit
def dots_q6_k_avx2(row, xd, x16, xh, xl, bsums, out):
    n, k = xd.shape[0], x16.shape[1]
    acc, isum = np.zeros(n), np.empty(NT16, np.int64)
    f16, fh, fl, fb = x16.reshape(x16.size), xh.reshape(xh.size), xl.reshape(xl.size), bsums.reshape(bsums.size)
    for b in range(row.size // Q6_K_BYTES):
        o = b * Q6_K_BYTES
        d = np.float64(f16_half(row, o + 208))
        for t0 in range(0, n - NT16 + 1, NT16):
            q6_k_isum_w16(row, o, f16, t0 * k + b * BLOCK, k, isum)  # signed quants: no offset term
            for t in range(t0, t0 + NT16):  # = q6_k_scaled with d loaded once
                acc[t] += np.float64(xd[t, b]) * d * np.float64(isum[t - t0])
        for t in range(n - n % NT16, n):
            acc[t] += q6_k_scaled(row, o, xd[t, b], q6_k_isum(row, o, fh, fl, t * k + b * BLOCK),
                                  q6_k_offset(row, o, fb, t * k // 16 + 16 * b))
    out[:] = acc
