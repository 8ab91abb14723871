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
Prefill (jit.UNPACK16_SIG, jit.W4X2_SIG): unpack_<type> turns a row into int16 weights times their
sub-block scales once, then w16_4x2[_avx2|_avx512] (simd_prefill.w16_4x2[_512]) takes the dot products of four such rows
with two tokens' q16 at a time (pmaddwd), the same lanes-then-float32 scheme, Q4_K's mins in the same pass
(the _nomins kernels leave them out, for Q6_K). Its rounding differs from decode's by ~1e-7.
The types with blocks of 32 (Q4_0, Q4_1, Q8_0, Q5_0, Q5_1) prefill through unpack32_<type> and w32_4x2[...]:
sixteen blocks interleaved, one int32 lane per block (simd_prefill.w32_4x2), against x quantized per 32.
Several tokens at once (jit.DOT16T_SIG, dots_<type>): Q4_K and Q5_K unpack each block once for all of them.
Rows streamed from memory are prefetched ahead (simd.PREFETCH_AHEAD) in the AVX2 and unpack paths; the
portable decode loops are compute-bound and do without.
"""
import numpy as np

from .jit import half_to_f32, njit
from .q6_k import quant
from .simd import (prefetch_block, q4_0_row32, q4_0_row32_512, q4_1_row32, q4_1_row32_512, q4_k_row, q4_k_row512, q4_k_tokens,
                   q4_k_tokens512, q5_k_row, q5_k_row512, q5_k_tokens, q5_k_tokens512, q6_k_row, q6_k_row512, q8_0_row,
                   q8_0_row32, q8_0_row32_512)
from .simd_prefill import (B32_BYTES, mins8, q4_0_unpack16, q4_1_unpack16, q4_k_unpack16, q5_0_unpack16, q5_1_unpack16,
                           q5_k_unpack16, q6_k_unpack16, q8_0_unpack16, w16_4x2, w16_4x2_512, w16_4x2_nomins,
                           w16_4x2_nomins_512, w32_4x2, w32_4x2_512, w32_4x2_nomins, w32_4x2_nomins_512)

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


# --- prefill: each row unpacked once to int16, then one dot product per token ---

@njit(inline="always")
def k_unpack_loop(rows, r0, nr, n_out, b0, sb, w16, dsc, msc, five):
    """Blocks b0 .. b0 + sb of Q4_K (five False) or Q5_K rows r0 .. r0 + nr - 1 (n_out of them, the last one repeated)
    -> w16 int16 = q * scale[s] (row i at 256 sb i), dsc = d (row i at sb i), msc = dmin * min[s] (at 8 sb i).
    One call for many rows: a call per row (four sliced arrays, their reference counts) cost as much as
    unpacking it."""
    nbytes = Q5_K_BYTES if five else Q4_K_BYTES
    for i in range(n_out):
        row = rows[r0 + min(i, nr - 1)]
        w32 = row.view(np.uint32)
        for b in range(sb):
            o, j = (b0 + b) * nbytes, i * sb + b
            prefetch_block(row, o, nbytes)
            sc, mn = q4_k_scales(w32, o // 4 + 1)
            dsc[j] = half_to_f32(f16_bits(row, o))
            mins8(mn, half_to_f32(f16_bits(row, o + 2)), msc, 8 * j)
            if five:
                q5_k_unpack16(row, o, sc, w16, j * BLOCK)
            else:
                q4_k_unpack16(row, o, sc, w16, j * BLOCK)


@njit
def unpack_q4_k(rows, r0, nr, n_out, b0, sb, w16, dsc, msc):
    k_unpack_loop(rows, r0, nr, n_out, b0, sb, w16, dsc, msc, False)


@njit
def unpack_q5_k(rows, r0, nr, n_out, b0, sb, w16, dsc, msc):
    k_unpack_loop(rows, r0, nr, n_out, b0, sb, w16, dsc, msc, True)


@njit
def unpack_q6_k(rows, r0, nr, n_out, b0, sb, w16, dsc, msc):
    """As unpack_q4_k for Q6_K rows: w16 = scale[j] * q (signed), dsc = d, msc zeros."""
    msc[:8 * n_out * sb] = 0
    for i in range(n_out):
        row = rows[r0 + min(i, nr - 1)]
        for b in range(sb):
            o, j = (b0 + b) * Q6_K_BYTES, i * sb + b
            prefetch_block(row, o, Q6_K_BYTES)
            dsc[j] = half_to_f32(f16_bits(row, o + 208))
            q6_k_unpack16(row, o, w16, j * BLOCK)


@njit(inline="always")
def w16_acc_loop(w16, dsc, msc, x16, xd, px, xo, bo, mins):
    """Portable simd_prefill.w16_4x2 for one (row, token): the same int32 lanes (lane i: elements 2i, 2i + 1 of
    each 32) and float32 operations in the same order."""
    acc, accm = np.zeros(16, np.float32), np.zeros(8, np.float32)
    lanes = np.empty(16, np.int32)
    for b in range(w16.size // BLOCK):
        lanes[:] = 0
        for e in range(b * BLOCK, b * BLOCK + BLOCK):
            lanes[(e % 32) // 2] += np.int32(w16[e]) * np.int32(x16[xo + e])
        s = xd[bo + b] * dsc[b]
        for i in range(16):
            acc[i] += np.float32(lanes[i]) * s
        if mins:
            for i in range(8):
                accm[i] += msc[8 * b + i] * px[8 * (bo + b) + i]
    return np.float64(_tree8(acc[:8] + acc[8:]) - _tree8(accm))


@njit(inline="always")
def _tree8(v):
    """sum of 8 float32 as simd_prefill._sum8x8 adds them: h4[i] = v[i] + v[i + 4], h2[i] = h4[i] + h4[i + 2]."""
    h4 = v[:4] + v[4:]
    h2 = h4[:2] + h4[2:]
    return h2[0] + h2[1]


@njit(inline="always")
def w16_4x2_loop(w16, dsc, msc, x16, xd, px, xo, bo, xs, out, mins):
    """Portable simd_prefill.w16_4x2: rows 4 q + r = w16[(4 q + r) K:][:K], token pair j at xo + 2 j xs and xo + (2 j + 1) xs."""
    n_rows = 4 * out.shape[0]
    k = w16.size // n_rows
    nb = k // BLOCK
    for q in range(out.shape[0]):
        for j in range(out.shape[1] // 8):
            for p in range(8):
                r, t = 4 * q + p // 2, 2 * j + p % 2
                out[q, 8 * j + p] += w16_acc_loop(w16[r * k:(r + 1) * k], dsc[r * nb:(r + 1) * nb], msc[8 * r * nb:8 * (r + 1) * nb],
                                                  x16, xd, px, xo + t * xs, bo + t * (xs // BLOCK), mins)


@njit
def w16_4x2_portable(w16, dsc, msc, x16, xd, px, xo, bo, xs, out):
    w16_4x2_loop(w16, dsc, msc, x16, xd, px, xo, bo, xs, out, True)


@njit
def w16_4x2_nomins_portable(w16, dsc, msc, x16, xd, px, xo, bo, xs, out):   # Q6_K: no mins
    w16_4x2_loop(w16, dsc, msc, x16, xd, px, xo, bo, xs, out, False)


@njit
def w16_4x2_avx2(w16, dsc, msc, x16, xd, px, xo, bo, xs, out):
    w16_4x2(w16, dsc, msc, x16, xd, px, xo, bo, xs, out)


@njit
def w16_4x2_nomins_avx2(w16, dsc, msc, x16, xd, px, xo, bo, xs, out):
    w16_4x2_nomins(w16, dsc, msc, x16, xd, px, xo, bo, xs, out)


@njit
def w16_4x2_avx512(w16, dsc, msc, x16, xd, px, xo, bo, xs, out):
    w16_4x2_512(w16, dsc, msc, x16, xd, px, xo, bo, xs, out)


@njit
def w16_4x2_nomins_avx512(w16, dsc, msc, x16, xd, px, xo, bo, xs, out):
    w16_4x2_nomins_512(w16, dsc, msc, x16, xd, px, xo, bo, xs, out)


# --- prefill of the types with blocks of 32: sixteen blocks interleaved (simd_prefill.w32_4x2) ---

@njit(inline="always")
def b32_unpack_loop(rows, r0, nr, n_out, g0, sg, w16, dsc, msc, kind):
    """Groups g0 .. g0 + sg (16 blocks each) of Q4_0 / Q4_1 / Q8_0 / Q5_0 / Q5_1 rows (kind 0 .. 4) r0 .. r0 + nr - 1
    (n_out of them, the last one repeated) -> w16 interleaved (row i at 512 sg i), dsc = d and msc = m
    (Q4_1 and Q5_1; else 0) by block (row i at 16 sg i). Blocks past the row's end get d = m = 0 (and whatever
    weights: their activations are 0); a partial last group is unpacked from a zero-padded copy."""
    nbytes = B32_BYTES[kind]
    nb = rows.shape[1] // nbytes
    pad = np.zeros(16 * nbytes, np.uint8)
    for i in range(n_out):
        row = rows[r0 + min(i, nr - 1)]
        for gg in range(sg):
            g, j = g0 + gg, (i * sg + gg) * 16
            nv = min(16, nb - 16 * g)
            for bi in range(16):
                o = (16 * g + bi) * nbytes
                dsc[j + bi] = half_to_f32(f16_bits(row, o)) if bi < nv else np.float32(0)
                msc[j + bi] = half_to_f32(f16_bits(row, o + 2)) if bi < nv and (kind == 1 or kind == 4) else np.float32(0)
            src, o = row, 16 * g * nbytes
            if nv < 16:
                pad[:nv * nbytes] = row[o:o + nv * nbytes]
                src, o = pad, 0
            else:
                for line in range(0, 16 * nbytes, 64):
                    prefetch_block(row, o + line, 64)
            if kind == 0:
                q4_0_unpack16(src, o, w16, 32 * j)
            elif kind == 1:
                q4_1_unpack16(src, o, w16, 32 * j)
            elif kind == 2:
                q8_0_unpack16(src, o, w16, 32 * j)
            elif kind == 3:
                q5_0_unpack16(src, o, w16, 32 * j)
            else:
                q5_1_unpack16(src, o, w16, 32 * j)


@njit
def unpack32_q4_0(rows, r0, nr, n_out, g0, sg, w16, dsc, msc):
    b32_unpack_loop(rows, r0, nr, n_out, g0, sg, w16, dsc, msc, 0)


@njit
def unpack32_q4_1(rows, r0, nr, n_out, g0, sg, w16, dsc, msc):
    b32_unpack_loop(rows, r0, nr, n_out, g0, sg, w16, dsc, msc, 1)


@njit
def unpack32_q8_0(rows, r0, nr, n_out, g0, sg, w16, dsc, msc):
    b32_unpack_loop(rows, r0, nr, n_out, g0, sg, w16, dsc, msc, 2)


@njit
def unpack32_q5_0(rows, r0, nr, n_out, g0, sg, w16, dsc, msc):
    b32_unpack_loop(rows, r0, nr, n_out, g0, sg, w16, dsc, msc, 3)


@njit
def unpack32_q5_1(rows, r0, nr, n_out, g0, sg, w16, dsc, msc):
    b32_unpack_loop(rows, r0, nr, n_out, g0, sg, w16, dsc, msc, 4)


@njit(inline="always")
def w32_acc_loop(w16, dsc, msc, x16, xd, px, xo, bo, mins):
    """Portable simd_prefill.w32_4x2 for one (row, token): lane i sums block 16 g + i of group g exactly,
    acc[i] += f32(lane i) * (xd * d), then (mins) acc[i] += m * sx, group by group; tree8(acc[i] + acc[i + 8])."""
    acc, lanes = np.zeros(16, np.float32), np.empty(16, np.int32)
    for g in range(w16.size // 512):
        lanes[:] = 0
        for e in range(512 * g, 512 * g + 512):
            lanes[(e % 32) // 2] += np.int32(w16[e]) * np.int32(x16[xo + e])
        for i in range(16):
            b = 16 * g + i
            acc[i] += np.float32(lanes[i]) * (xd[bo + b] * dsc[b])
            if mins:
                acc[i] += msc[b] * px[bo + b]
    return np.float64(_tree8(acc[:8] + acc[8:]))


@njit(inline="always")
def w32_4x2_loop(w16, dsc, msc, x16, xd, px, xo, bo, xs, out, mins):
    """Portable simd_prefill.w32_4x2, as w16_4x2_loop."""
    k = w16.size // (4 * out.shape[0])
    nbk = k // 32
    for q in range(out.shape[0]):
        for j in range(out.shape[1] // 8):
            for p in range(8):
                r, t = 4 * q + p // 2, 2 * j + p % 2
                out[q, 8 * j + p] += w32_acc_loop(w16[r * k:(r + 1) * k], dsc[r * nbk:(r + 1) * nbk], msc[r * nbk:(r + 1) * nbk],
                                                  x16, xd, px, xo + t * xs, bo + t * (xs // 32), mins)


@njit
def w32_4x2_portable(w16, dsc, msc, x16, xd, px, xo, bo, xs, out):
    w32_4x2_loop(w16, dsc, msc, x16, xd, px, xo, bo, xs, out, True)


@njit
def w32_4x2_nomins_portable(w16, dsc, msc, x16, xd, px, xo, bo, xs, out):
    w32_4x2_loop(w16, dsc, msc, x16, xd, px, xo, bo, xs, out, False)


@njit
def w32_4x2_avx2(w16, dsc, msc, x16, xd, px, xo, bo, xs, out):
    w32_4x2(w16, dsc, msc, x16, xd, px, xo, bo, xs, out)


@njit
def w32_4x2_nomins_avx2(w16, dsc, msc, x16, xd, px, xo, bo, xs, out):
    w32_4x2_nomins(w16, dsc, msc, x16, xd, px, xo, bo, xs, out)


@njit
def w32_4x2_avx512(w16, dsc, msc, x16, xd, px, xo, bo, xs, out):
    w32_4x2_512(w16, dsc, msc, x16, xd, px, xo, bo, xs, out)


@njit
def w32_4x2_nomins_avx512(w16, dsc, msc, x16, xd, px, xo, bo, xs, out):
    w32_4x2_nomins_512(w16, dsc, msc, x16, xd, px, xo, bo, xs, out)
