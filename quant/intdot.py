"""Integer dot products of K-quant rows against 16-bit activations (activations.py).

Per super-block b the weights are w[e] = d * scale[s] * q[e] - dmin * min[s] (Q4_K) or
d * scale[j] * (u[e] - 32) (Q6_K, u = q + 32 in 0..63), the activations x[e] ~ xd[b] * q16[e], so
    Q4_K: sum_e w x = xd * (d * sum_s scale[s] * sum q q16 - dmin * sum_s min[s] * bsum[s])
    Q6_K: sum_e w x = xd * d * (sum_j scale[j] * sum u q16 - 32 * sum_j scale[j] * bsum[j])
Decode (jit.DOT16_SIG): dot_<type>_avx2 is one intrinsic per row (simd.q4_k_row, q6_k_row) that keeps
exact integer sums in 8 lanes per block and accumulates them in float32 vectors, with one horizontal
sum per row; dot_<type> is the portable path for CPUs without AVX2, the same lanes and the same
float32 operations in the same order, so both give the same bits.
Prefill (jit.DOTS16_SIG): dots_<type>[_avx2] take T tokens at once; each weight block is unpacked once
(as int16 weights times scales) and meets every token while in L1, with exact int64 sums per block
combined in float64. Its rounding differs from decode's by about 1e-7 of the result.
"""
import numpy as np

from .jit import half_to_f32, njit
from .q6_k import quant
from .simd import NT16, q4_k_isum, q4_k_isum_w16, q4_k_msum, q4_k_row, q6_k_isum, q6_k_isum_w16, q6_k_offset, q6_k_row

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
def f16_bits(row, i):
    return np.uint16(row[i]) | np.uint16(row[i + 1]) << np.uint16(8)


@njit(inline="always")
def f16_half(row, i):
    return half_to_f32(f16_bits(row, i))


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


@njit(inline="always")
def row_total(acc, accm):
    """sum_L acc[L] - sum_L accm[L] in float64, L in order (as simd._row_loop)."""
    sv = sm = 0.0
    for lane in range(8):
        sv += np.float64(acc[lane])
        sm += np.float64(accm[lane])
    return sv - sm


@njit
def dot_q4_k(row, xd, x16, xh, xl, bsums):
    """Portable simd.q4_k_row: the same integer lanes and the same float32 operations in the same order."""
    w32 = row.view(np.uint32)
    acc, accm = np.zeros(8, np.float32), np.zeros(8, np.float32)
    lane = np.empty(8, np.int32)
    for b in range(row.size // Q4_K_BYTES):
        o = b * Q4_K_BYTES
        sc, mn = q4_k_scales(w32, o // 4 + 1)
        lane[:] = 0
        for s in range(8):
            c = np.int32((sc >> np.uint64(8 * s)) & np.uint64(255))
            base, shift, y = o + 16 + 32 * (s // 2), 4 * (s % 2), b * BLOCK + 32 * s
            for l in range(32):
                lane[l // 4] += c * ((np.int32(row[base + l]) >> shift) & 15) * np.int32(x16[y + l])
        xdb = np.float32(xd[b])
        dd, dm = xdb * half_to_f32(f16_bits(row, o)), xdb * half_to_f32(f16_bits(row, o + 2))
        for s in range(8):
            m = np.int32((mn >> np.uint64(8 * s)) & np.uint64(255)) * (bsums[16 * b + 2 * s] + bsums[16 * b + 2 * s + 1])
            acc[s] += np.float32(lane[s]) * dd
            accm[s] += np.float32(m) * dm
    return row_total(acc, accm)


@njit
def dot_q4_k_avx2(row, xd, x16, xh, xl, bsums):
    return q4_k_row(row, xd, xh, xl, bsums)


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
    """Portable simd.q6_k_row (same lanes, same float32 operations in the same order)."""
    sc = row.view(np.int8)
    acc, accm = np.zeros(8, np.float32), np.zeros(8, np.float32)
    hi, lo = np.empty(8, np.int32), np.empty(8, np.int32)
    for b in range(row.size // Q6_K_BYTES):
        o = b * Q6_K_BYTES
        hi[:] = 0
        lo[:] = 0
        for h in range(2):
            for c in range(4):
                for l in range(32):
                    e = b * BLOCK + 128 * h + 32 * c + l
                    w = np.int32(sc[o + 192 + 8 * h + 2 * c + l // 16]) * (quant(row, o, h, c, l) + 32)
                    hi[(l % 32) // 4] += w * np.int32(xh[e])
                    lo[(l % 32) // 4] += w * np.int32(xl[e])
        dd = np.float32(xd[b]) * half_to_f32(f16_bits(row, o + 208))
        dm = dd * np.float32(32)
        for lane in range(8):
            m = np.int32(sc[o + 192 + lane]) * bsums[16 * b + lane] + np.int32(sc[o + 200 + lane]) * bsums[16 * b + 8 + lane]
            acc[lane] += (np.float32(hi[lane]) * np.float32(256) + np.float32(lo[lane])) * dd
            accm[lane] += np.float32(m) * dm
    return row_total(acc, accm)


@njit
def dot_q6_k_avx2(row, xd, x16, xh, xl, bsums):
    return q6_k_row(row, xd, xh, xl, bsums)


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
