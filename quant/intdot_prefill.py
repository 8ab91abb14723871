"""Prefill's integer products (prefill._int_matmul): the unpackers and the portable twins of
simd_prefill.py's four-by-two kernels, and the njit functions whose addresses the drivers take.

K-quants (jit.UNPACK16_SIG, jit.W4X2_SIG): unpack_<type>[_g1] turns a row into int16 weights times their sub-block
scales once, g blocks interleaved (activations.interleave_k), then w16_4x2[_g<g>]_<path> (simd_prefill.W16_4X2[_512])
takes the dot products of four such rows with two (AVX-512, g > 1: four) tokens' q16 at a time (pmaddwd,
vpdpwssd), the lanes-then-float32 scheme of intdot.py; Q4_K's and
Q5_K's mins in a kernel of their own (mins_*: simd_prefill.mins_rows, fused multiply-adds in 8 or 16 lanes,
tokens along, where inside the four-by-two kernel they took 8 lanes of row-by-token products and ~12% of the
time). Its rounding differs from decode's by ~1e-7.
The types with blocks of 32 (Q4_0, Q4_1, Q8_0, Q5_0, Q5_1): unpack32_<type> and w32_4x2[...], sixteen blocks
interleaved, one int32 lane per block (simd_prefill32.w32_4x2), against x quantized per 32
(activations.quantize_prefill32).
"""
import numpy as np

from .activations import group32, slot32
from .intdot import BLOCK, Q4_K_BYTES, Q5_K_BYTES, Q6_K_BYTES
from .jit import njit
from .simd import prefetch_block
from .simd_prefill import (W16_4X2, W16_4X2_512, fma32, mins_rows8, mins_rows16, q4_k_unpack16, q4_k_unpack16_g4,
                           q4_k_unpack_split, q5_k_unpack16, q5_k_unpack16_g2, q5_k_unpack_split, q6_k_unpack16,
                           q6_k_unpack16_g4, q6_k_unpack_split)
from .simd_prefill32 import (B32_BYTES, q4_0_unpack16, q4_1_unpack16, q5_0_unpack16, q5_1_unpack16, q8_0_unpack16,
                             w32_4x2, w32_4x2_512, w32_4x2_nomins, w32_4x2_nomins_512)


# --- K-quants: each row unpacked once to int16, then one dot product per token ---

ROW_PAD = 32   # int16 (one cache line) after each row of the split unpack


@njit(inline="always")
def k_unpack_loop(rows, r0, nr, n_out, u0, su, w16, dsc, msc, kind, g, split=False):
    """Groups u0 .. u0 + su (g blocks each) of Q4_K (kind 0), Q5_K (1) or Q6_K (2) rows r0 .. r0 + nr - 1 (n_out of
    them, the last one repeated) -> w16 int16 = q * scale[s] interleaved g blocks a group (activations.interleave_k;
    row i at 256 g su i), dsc = d by lane (row i at 16 su i), msc = dmin * min[s] (at 8 g su i; Q6_K: none).
    split (g = 1, for AMX): each block's 512 bytes of w16 hold its high bytes, then its low bytes (_write_group), and
    row i starts at (256 su + ROW_PAD) i: a row stride of 2^n bytes put the 16 rows of a tile in one L1 set.
    One call for many rows: a call per row (four sliced arrays, their reference counts) cost as much as
    unpacking it."""
    nbytes = (Q4_K_BYTES, Q5_K_BYTES, Q6_K_BYTES)[kind]
    for i in range(n_out):
        row = rows[r0 + min(i, nr - 1)]
        for u in range(su):
            o, j = g * (u0 + u) * nbytes, (i * su + u) * g   # the group's first block
            for b in range(g):
                prefetch_block(row, o + b * nbytes, nbytes)
            if split:
                y = (BLOCK * su + ROW_PAD) * i + BLOCK * u
                if kind == 2:
                    q6_k_unpack_split(row, o, w16, y, dsc, msc, j)
                elif kind == 1:
                    q5_k_unpack_split(row, o, w16, y, dsc, msc, j)
                else:
                    q4_k_unpack_split(row, o, w16, y, dsc, msc, j)
            elif kind == 2:
                if g == 4:
                    q6_k_unpack16_g4(row, o, w16, BLOCK * j, dsc, msc, j)
                else:
                    q6_k_unpack16(row, o, w16, BLOCK * j, dsc, msc, j)
            elif kind == 1:
                if g == 2:
                    q5_k_unpack16_g2(row, o, w16, BLOCK * j, dsc, msc, j)
                else:
                    q5_k_unpack16(row, o, w16, BLOCK * j, dsc, msc, j)
            elif g == 4:
                q4_k_unpack16_g4(row, o, w16, BLOCK * j, dsc, msc, j)
            else:
                q4_k_unpack16(row, o, w16, BLOCK * j, dsc, msc, j)


@njit
def unpack_q4_k(rows, r0, nr, n_out, u0, su, w16, dsc, msc):   # four blocks a group
    k_unpack_loop(rows, r0, nr, n_out, u0, su, w16, dsc, msc, 0, 4)


@njit
def unpack_q4_k_g1(rows, r0, nr, n_out, u0, su, w16, dsc, msc):   # K no multiple of 1024
    k_unpack_loop(rows, r0, nr, n_out, u0, su, w16, dsc, msc, 0, 1)


@njit
def unpack_q5_k(rows, r0, nr, n_out, u0, su, w16, dsc, msc):   # two blocks a group
    k_unpack_loop(rows, r0, nr, n_out, u0, su, w16, dsc, msc, 1, 2)


@njit
def unpack_q5_k_g1(rows, r0, nr, n_out, u0, su, w16, dsc, msc):   # K no multiple of 512
    k_unpack_loop(rows, r0, nr, n_out, u0, su, w16, dsc, msc, 1, 1)


@njit
def unpack_q6_k(rows, r0, nr, n_out, u0, su, w16, dsc, msc):
    k_unpack_loop(rows, r0, nr, n_out, u0, su, w16, dsc, msc, 2, 1)


@njit
def unpack_q6_k_g4(rows, r0, nr, n_out, u0, su, w16, dsc, msc):   # four blocks a group, for 14-bit activations
    k_unpack_loop(rows, r0, nr, n_out, u0, su, w16, dsc, msc, 2, 4)


@njit
def unpack_q4_k_split(rows, r0, nr, n_out, u0, su, w16, dsc, msc):   # AMX: one block a group, in bytes
    k_unpack_loop(rows, r0, nr, n_out, u0, su, w16, dsc, msc, 0, 1, True)


@njit
def unpack_q5_k_split(rows, r0, nr, n_out, u0, su, w16, dsc, msc):
    k_unpack_loop(rows, r0, nr, n_out, u0, su, w16, dsc, msc, 1, 1, True)


@njit
def unpack_q6_k_split(rows, r0, nr, n_out, u0, su, w16, dsc, msc):
    k_unpack_loop(rows, r0, nr, n_out, u0, su, w16, dsc, msc, 2, 1, True)


@njit(inline="always")
def lanes_acc_loop(w16, dsc, msc, x16, xd, px, xo, bo, mins, unit, per):
    """Portable simd_prefill.w16_4x2 and simd_prefill32.w32_4x2 for one (row, token): int32 lane i (elements 2i, 2i + 1 of
    each 32) sums a group of unit weights (the last may be shorter: activations.group32), then
    acc[i] += f32(lane i) * (xd * d) with the lane's scales (per = 16 a group; 1: the group's), and for w32's mins
    acc[i] += m * sx; the same float32 operations in the same order; tree8(acc[i] + acc[i + 8])."""
    acc, lanes = np.zeros(16, np.float32), np.empty(16, np.int32)
    for g in range(-(-w16.size // unit)):
        lanes[:] = 0
        for e in range(unit * g, min(w16.size, unit * g + unit)):
            lanes[(e % 32) // 2] += np.int32(w16[e]) * np.int32(x16[xo + e])
        for i in range(16):
            b = per * g + (i if per == 16 else 0)
            acc[i] += np.float32(lanes[i]) * (xd[bo + b] * dsc[b])
            if mins:
                acc[i] += msc[b] * px[bo + b]
    return np.float64(_tree8(acc[:8] + acc[8:]))


@njit(inline="always")
def _tree8(v):
    """sum of 8 float32 as simd_prefill._sum8x8 adds them: h4[i] = v[i] + v[i + 4], h2[i] = h4[i] + h4[i + 2]."""
    h4 = v[:4] + v[4:]
    h2 = h4[:2] + h4[2:]
    return h2[0] + h2[1]


@njit(inline="always")
def w4x2_loop(w16, dsc, msc, x16, xd, px, xo, bo, xs, out, mins, unit, per=16):
    """Portable simd_prefill.w16_4x2 (unit 256 g: g K-quant blocks interleaved) and simd_prefill32.w32_4x2 (unit 512: sixteen
    blocks of 32, mins for Q4_1 / Q5_1), per scales a unit (16: by lane): out[t, r] += row r = w16[r K:][:K] with
    token t at xo + t xs."""
    k = w16.size // out.shape[1]
    nsc, xsb = per * -(-k // unit), per * -(-xs // unit)   # scales a row, a token
    for r in range(out.shape[1]):
        for t in range(out.shape[0]):
            ws, ds, ms = w16[r * k:(r + 1) * k], dsc[r * nsc:(r + 1) * nsc], msc[r * nsc:(r + 1) * nsc]
            out[t, r] += lanes_acc_loop(ws, ds, ms, x16, xd, px, xo + t * xs, bo + t * xsb, mins, unit, per)


_avx2_g1, _avx2_g2, _avx2_g4 = (W16_4X2[g] for g in (1, 2, 4))   # module names, for Numba
_avx512_g1, _avx512_g2, _avx512_g4 = (W16_4X2_512[g] for g in (1, 2, 4))


@njit
def w16_4x2_portable(w16, dsc, msc, x16, xd, px, xo, bo, xs, out):
    w4x2_loop(w16, dsc, msc, x16, xd, px, xo, bo, xs, out, False, BLOCK, 1)


@njit
def w16_4x2_g2_portable(w16, dsc, msc, x16, xd, px, xo, bo, xs, out):
    w4x2_loop(w16, dsc, msc, x16, xd, px, xo, bo, xs, out, False, 2 * BLOCK)


@njit
def w16_4x2_g4_portable(w16, dsc, msc, x16, xd, px, xo, bo, xs, out):
    w4x2_loop(w16, dsc, msc, x16, xd, px, xo, bo, xs, out, False, 4 * BLOCK)


@njit
def w16_4x2_avx2(w16, dsc, msc, x16, xd, px, xo, bo, xs, out):
    _avx2_g1(w16, dsc, msc, x16, xd, px, xo, bo, xs, out)


@njit
def w16_4x2_g2_avx2(w16, dsc, msc, x16, xd, px, xo, bo, xs, out):
    _avx2_g2(w16, dsc, msc, x16, xd, px, xo, bo, xs, out)


@njit
def w16_4x2_g4_avx2(w16, dsc, msc, x16, xd, px, xo, bo, xs, out):
    _avx2_g4(w16, dsc, msc, x16, xd, px, xo, bo, xs, out)


@njit
def w16_4x2_avx512(w16, dsc, msc, x16, xd, px, xo, bo, xs, out):
    _avx512_g1(w16, dsc, msc, x16, xd, px, xo, bo, xs, out)


@njit
def w16_4x2_g2_avx512(w16, dsc, msc, x16, xd, px, xo, bo, xs, out):
    _avx512_g2(w16, dsc, msc, x16, xd, px, xo, bo, xs, out)


@njit
def w16_4x2_g4_avx512(w16, dsc, msc, x16, xd, px, xo, bo, xs, out):
    _avx512_g4(w16, dsc, msc, x16, xd, px, xo, bo, xs, out)


# --- prefill of the types with blocks of 32: sixteen blocks interleaved (simd_prefill32.w32_4x2) ---

@njit(inline="always")
def b32_unpack_loop(rows, r0, nr, n_out, g0, sg, w16, dsc, msc, kind):
    """Groups g0 .. g0 + sg of Q4_0 / Q4_1 / Q8_0 / Q5_0 / Q5_1 rows (kind 0 .. 4) r0 .. r0 + nr - 1 (n_out of
    them, the last one repeated) -> w16 interleaved as activations.slot32 lays them out (row i at i times the
    segment's length), dsc = d and msc = m (Q4_1 and Q5_1; else 0) by lane (16 per group; row i at 16 sg i).
    A partial last group is unpacked from a zero-padded copy as sixteen blocks, then moved to its lanes
    (a lane repeating a block gets its d and m = 0); padding blocks get d = m = 0."""
    nbytes = B32_BYTES[kind]
    nb = rows.shape[1] // nbytes
    last = group32(g0 + sg - 1, nb)
    seg = 512 * (sg - 1) + 32 * last
    pad = np.zeros(16 * nbytes, np.uint8)
    tw, td, tm = np.empty(512, np.int16), np.empty(16, np.float32), np.empty(16, np.float32)
    for i in range(n_out):
        row = rows[r0 + min(i, nr - 1)]
        for gg in range(sg):
            g, j, y = g0 + gg, (i * sg + gg) * 16, i * seg + 512 * gg
            nv = min(16, nb - 16 * g)
            if nv == 16:
                for line in range(0, 16 * nbytes, 64):
                    prefetch_block(row, 16 * g * nbytes + line, 64)
                _b32_unpack(kind, row, 16 * g * nbytes, w16, y, dsc, msc, j)
                continue
            pad[:nv * nbytes] = row[16 * g * nbytes:(16 * g + nv) * nbytes]
            _b32_unpack(kind, pad, 0, tw, 0, td, tm, 0)
            n = group32(g, nb)
            for b in range(n):
                for p in range(16):
                    at = y + slot32(b, p, n)
                    w16[at], w16[at + 1] = tw[32 * p + 2 * b], tw[32 * p + 2 * b + 1]
            for lane in range(16):
                dsc[j + lane], msc[j + lane] = td[lane % n], (tm[lane] if lane < n else 0)


@njit(inline="always")
def _b32_unpack(kind, src, o, w16, y, dsc, msc, j):
    if kind == 0:
        q4_0_unpack16(src, o, w16, y, dsc, msc, j)
    elif kind == 1:
        q4_1_unpack16(src, o, w16, y, dsc, msc, j)
    elif kind == 2:
        q8_0_unpack16(src, o, w16, y, dsc, msc, j)
    elif kind == 3:
        q5_0_unpack16(src, o, w16, y, dsc, msc, j)
    else:
        q5_1_unpack16(src, o, w16, y, dsc, msc, j)


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


@njit
def w32_4x2_portable(w16, dsc, msc, x16, xd, px, xo, bo, xs, out):
    w4x2_loop(w16, dsc, msc, x16, xd, px, xo, bo, xs, out, True, 512)


@njit
def w32_4x2_nomins_portable(w16, dsc, msc, x16, xd, px, xo, bo, xs, out):
    w4x2_loop(w16, dsc, msc, x16, xd, px, xo, bo, xs, out, False, 512)


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


# --- the K-quants' mins, apart (simd_prefill.mins_rows): accm[r, t] += the segment's sum of dmin * min * sx ---

@njit
def mins_portable(msc, pxt, s0, ldp, accm):
    """Portable simd_prefill.mins_rows: the same fused multiply-adds in the same order."""
    n_rows, n_tok = accm.shape
    n_s = msc.size // n_rows
    for r in range(n_rows):
        for t in range(n_tok):
            a = np.float32(0)
            for s in range(n_s):
                a = fma32(msc[r * n_s + s], pxt[(s0 + s) * ldp + t], a)
            accm[r, t] += np.float64(a)


@njit
def mins_avx2(msc, pxt, s0, ldp, accm):
    mins_rows8(msc, pxt, s0, ldp, accm)


@njit
def mins_avx512(msc, pxt, s0, ldp, accm):
    mins_rows16(msc, pxt, s0, ldp, accm)
