"""Integer dot products of K-quant rows against 16-bit activations (activations.py).

Per super-block b the weights are w[e] = d * scale[s] * q[e] - dmin * min[s] (Q4_K) or
d * scale[j] * (u[e] - 32) (Q6_K, u = q + 32 in 0..63), the activations x[e] ~ xd[b] * q16[e], so
    Q4_K: sum_e w x = xd * (d * sum_s scale[s] * sum q q16 - dmin * sum_s min[s] * bsum[s])
    Q6_K: sum_e w x = xd * d * (sum_j scale[j] * sum u q16 - 32 * sum_j scale[j] * bsum[j])
(Q5_K is Q4_K with 5-bit quants; Q8_0 has blocks of 32, one scale each, no mins, and meets q16 directly.)
Decode (jit.DOT16_SIG): dot_<type>_avx2 is one intrinsic per row (simd.q4_k_row, q5_k_row, q6_k_row,
q8_0_row) that keeps exact integer sums in 8 lanes per block and accumulates them in float32 vectors,
with one horizontal sum per row (dot_q4_k_avx512, dot_q5_k_avx512, dot_q6_k_avx512: the same lanes with AVX-512 VNNI);
dot_<type> is the portable path for CPUs without AVX2, the same lanes and the same
float32 operations in the same order, so both give the same bits.
Several tokens at once (jit.DOT16T_SIG, dots_<type>): Q4_K and Q5_K unpack each block once for all of them.
Prefill's unpack and four-by-two kernels are in intdot_prefill.py.
Rows streamed from memory are prefetched ahead (simd.PREFETCH_AHEAD) in the SIMD paths; the portable
decode loops are compute-bound and do without.
"""
import numpy as np

from .jit import half_to_f32, njit
from .q6_k import quant
from .simd import (q4_k_row, q4_k_row512, q4_k_tokens, q4_k_tokens512, q5_k_row, q5_k_row512, q5_k_tokens,
                   q5_k_tokens512, q6_k_row, q6_k_row512, q8_0_row)
from .simd32 import q4_0_row32, q4_0_row32_512, q4_1_row32, q4_1_row32_512, q8_0_row32, q8_0_row32_512

BLOCK = 256
Q4_K_BYTES, Q5_K_BYTES, Q6_K_BYTES, Q8_0_BYTES = 144, 176, 210, 34


@njit(inline="always")
def q4_k_scales(w32, o4):
    """(scales, mins) of the Q4_K block whose 12 scale bytes are w32[o4:o4+3] (uint32 view), each
    packed 8 bytes in a uint64 (byte s = sub-block s), without branches (as ggml's utmp trick)."""
    b0, b1, b2 = np.uint64(w32[o4]), np.uint64(w32[o4 + 1]), np.uint64(w32[o4 + 2])
    sc = (b0 & 0x3F3F3F3F) | ((b2 & 0x0F0F0F0F) | ((b0 >> 6) & 0x03030303) << 4) << 32
    mn = (b1 & 0x3F3F3F3F) | (((b2 >> 4) & 0x0F0F0F0F) | ((b1 >> 6) & 0x03030303) << 4) << 32
    return sc, mn


@njit(inline="always")
def f16_bits(row, i):
    return np.uint16(row[i]) | np.uint16(row[i + 1]) << np.uint16(8)


@njit(inline="always")
def row_total(acc, accm):
    """sum_L acc[L] - sum_L accm[L] in float64, L in order (as simd._row_loop)."""
    sv = sm = 0.0
    for lane in range(8):
        sv += np.float64(acc[lane])
        sm += np.float64(accm[lane])
    return sv - sm


@njit(inline="always")
def k_row_loop(row, xd, x16, bsums, nbytes, qh_at, qs_at):
    """Portable simd._q4_5_k_row (Q4_K: qh_at < 0): the same integer lanes and the same float32
    operations in the same order."""
    w32 = row.view(np.uint32)
    acc, accm = np.zeros(8, np.float32), np.zeros(8, np.float32)
    lane = np.empty(8, np.int32)
    for b in range(row.size // nbytes):
        o = b * nbytes
        sc, mn = q4_k_scales(w32, o // 4 + 1)
        lane[:] = 0
        for s in range(8):
            c = np.int32((sc >> np.uint64(8 * s)) & np.uint64(255))
            base, shift, y = o + qs_at + 32 * (s // 2), 4 * (s % 2), b * BLOCK + 32 * s
            for l in range(32):
                q = (np.int32(row[base + l]) >> shift) & 15
                if qh_at >= 0:
                    q |= ((np.int32(row[o + qh_at + l]) >> s) & 1) << 4
                lane[l // 4] += c * q * np.int32(x16[y + l])
        xdb = np.float32(xd[b])
        dd, dm = xdb * half_to_f32(f16_bits(row, o)), xdb * half_to_f32(f16_bits(row, o + 2))
        for s in range(8):
            m = np.int32((mn >> np.uint64(8 * s)) & np.uint64(255)) * (bsums[16 * b + 2 * s] + bsums[16 * b + 2 * s + 1])
            acc[s] += np.float32(lane[s]) * dd
            accm[s] += np.float32(m) * dm
    return row_total(acc, accm)


@njit
def dot_q4_k(row, xd, x16, xp, xh, xl, bsums):
    return k_row_loop(row, xd, x16, bsums, Q4_K_BYTES, -1, 16)


@njit
def dot_q4_k_avx2(row, xd, x16, xp, xh, xl, bsums):
    return q4_k_row(row, xd, xp, bsums)


@njit
def dot_q4_k_avx512(row, xd, x16, xp, xh, xl, bsums):
    return q4_k_row512(row, xd, xp, bsums)


@njit
def dot_q5_k(row, xd, x16, xp, xh, xl, bsums):
    return k_row_loop(row, xd, x16, bsums, Q5_K_BYTES, 16, 48)


@njit
def dot_q5_k_avx2(row, xd, x16, xp, xh, xl, bsums):
    return q5_k_row(row, xd, xp, bsums)


@njit
def dot_q5_k_avx512(row, xd, x16, xp, xh, xl, bsums):
    return q5_k_row512(row, xd, xp, bsums)


# Several tokens (jit.DOT16T_SIG, activations stacked): out[t, r] = the one-token kernel's result for token t,
# bit for bit. The SIMD ones unpack each block once for all the tokens (simd.q4_k_tokens); the portable ones
# loop over the tokens.
@njit
def dots_q4_k(row, xd, x16, xp, xh, xl, bsums, out, r):
    for t in range(out.shape[0]):
        out[t, r] = dot_q4_k(row, xd[t], x16[t], xp[t], xh[t], xl[t], bsums[t])


@njit
def dots_q4_k_avx2(row, xd, x16, xp, xh, xl, bsums, out, r):
    q4_k_tokens(row, xd, xp, bsums, out, r)


@njit
def dots_q4_k_avx512(row, xd, x16, xp, xh, xl, bsums, out, r):
    q4_k_tokens512(row, xd, xp, bsums, out, r)


@njit
def dots_q5_k(row, xd, x16, xp, xh, xl, bsums, out, r):
    for t in range(out.shape[0]):
        out[t, r] = dot_q5_k(row, xd[t], x16[t], xp[t], xh[t], xl[t], bsums[t])


@njit
def dots_q5_k_avx2(row, xd, x16, xp, xh, xl, bsums, out, r):
    q5_k_tokens(row, xd, xp, bsums, out, r)


@njit
def dots_q5_k_avx512(row, xd, x16, xp, xh, xl, bsums, out, r):
    q5_k_tokens512(row, xd, xp, bsums, out, r)


@njit
def dot_q8_0(row, xd, x16, xp, xh, xl, bsums):
    """Portable simd.q8_0_row."""
    q8 = row.view(np.int8)
    acc, lanes = np.zeros(8, np.float32), np.empty(8, np.int32)
    for b in range(row.size // Q8_0_BYTES):
        o, y = b * Q8_0_BYTES, 32 * b
        lanes[:] = 0
        for e in range(32):   # lane i: elements 2i, 2i+1 of each 16
            lanes[(e % 16) // 2] += np.int32(q8[o + 2 + e]) * np.int32(x16[y + e])
        s = half_to_f32(f16_bits(row, o)) * np.float32(xd[b // 8])
        for i in range(8):
            acc[i] += np.float32(lanes[i]) * s
    return row_total(acc, np.zeros(8, np.float32))


@njit
def dot_q8_0_avx2(row, xd, x16, xp, xh, xl, bsums):
    return q8_0_row(row, xd, x16)


@njit
def dot_q6_k(row, xd, x16, xp, xh, xl, bsums):
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
def dot_q6_k_avx2(row, xd, x16, xp, xh, xl, bsums):
    return q6_k_row(row, xd, xh, xl, bsums)


@njit
def dot_q6_k_avx512(row, xd, x16, xp, xh, xl, bsums):
    return q6_k_row512(row, xd, xh, xl, bsums)


# --- decode of the types with blocks of 32, against activations quantized per 32 (activations.quantize32) ---

@njit(inline="always")
def b32_row_loop(row, xd, x16, s32, nbytes, kind):
    """Portable simd._b32_row for Q4_0 (kind 0: w = d (q - 8)), Q4_1 (1: w = d q + m), Q8_0 (2: w = d q):
    lane i sums the products of elements 2i, 2i + 1, 16 + 2i, 17 + 2i of each block (exact in int32);
    acc[i] += f32(lane i) * (xd * d), and Q4_1's m meets the sum of the block's q16 in accm[0]; even and odd
    blocks in accumulators of their own, added lane by lane at the end."""
    acc, accm = np.zeros((2, 8), np.float32), np.zeros((2, 8), np.float32)
    lane = np.empty(8, np.int32)
    q8 = row.view(np.int8)
    for b in range(row.size // nbytes):
        o, y = b * nbytes, 32 * b
        lane[:] = 0
        if kind == 2:
            for e in range(32):
                lane[(e % 16) // 2] += np.int32(q8[o + 2 + e]) * np.int32(x16[y + e])
        else:
            for i in range(16):
                v = np.int32(row[o + 2 + 2 * kind + i])
                lo, hi = (v & 15) - 8 * (kind == 0), (v >> 4) - 8 * (kind == 0)
                lane[i // 2] += lo * np.int32(x16[y + i]) + hi * np.int32(x16[y + 16 + i])
        xdb = np.float32(xd[b])
        dd = xdb * half_to_f32(f16_bits(row, o))
        for i in range(8):
            acc[b % 2, i] += np.float32(lane[i]) * dd
        if kind == 1:
            accm[b % 2, 0] += np.float32(s32[b]) * -(xdb * half_to_f32(f16_bits(row, o + 2)))
    return row_total(acc[0] + acc[1], accm[0] + accm[1])


@njit
def dot32_q4_0(row, xd, x16, s32):
    return b32_row_loop(row, xd, x16, s32, 18, 0)


@njit
def dot32_q4_1(row, xd, x16, s32):
    return b32_row_loop(row, xd, x16, s32, 20, 1)


@njit
def dot32_q8_0(row, xd, x16, s32):
    return b32_row_loop(row, xd, x16, s32, 34, 2)


@njit
def dot32_q4_0_avx2(row, xd, x16, s32):
    return q4_0_row32(row, xd, x16, s32)


@njit
def dot32_q4_1_avx2(row, xd, x16, s32):
    return q4_1_row32(row, xd, x16, s32)


@njit
def dot32_q8_0_avx2(row, xd, x16, s32):
    return q8_0_row32(row, xd, x16, s32)


@njit
def dot32_q4_0_avx512(row, xd, x16, s32):
    return q4_0_row32_512(row, xd, x16, s32)


@njit
def dot32_q4_1_avx512(row, xd, x16, s32):
    return q4_1_row32_512(row, xd, x16, s32)


@njit
def dot32_q8_0_avx512(row, xd, x16, s32):
    return q8_0_row32_512(row, xd, x16, s32)
