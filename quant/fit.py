"""Shared pieces of the quantizers: rounding, float32 -> f16, and fitting a scale (and a minimum)
to a group of weights, as ggml's reference quantizers do without an importance matrix
(ggml-quants.c: nearest_int, make_qx_quants, make_qkx2_quants).

The results must be byte-identical to llama.cpp's, so every value is a float32 computed in ggml's
order: sums run left to right, products keep C's grouping ((w * l) * x), no fused multiply-adds
(ggml's reference code is plain SSE). Ints are converted with np.float32() explicitly (in Numba
int * float32 is float64).

The fits come twice: numpy over the rows of a 2-D array (the readable reference), and Numba over
the columns of a transposed (n, G) array. Either way many groups are fitted at once, each group's
sums still running over its positions in order; in Numba the loops over groups are innermost, so
LLVM turns them into SIMD code, one group per lane (about 5x the speed of ggml's scalar loops).
"""
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from .jit import f32_bits, njit, u32_as_f32

MAGIC = np.float32(12582912.0)  # 1.5 * 2**23: adding it leaves round(v) in the low mantissa bits
GROUP_MAX_EPS = np.float32(1e-15)
F0 = np.float32(0)


# --- rounding and f16 ---------------------------------------------------------------------------

@njit(inline="always")
def nearest_int(v):
    """float32 -> int, rounding half to even (valid for |v| < 2**22, like ggml's nearest_int)."""
    return np.int32(f32_bits(v + MAGIC) & 0x7FFFFF) - 0x400000


@intrinsic
def nearest(typingctx, v):
    """nearest_int(v) as a float32 (exact: an integer of magnitude <= 2**22), in 32-bit integer
    ops so that loops over it vectorize (AVX2 has no int64 -> float conversion)."""
    def codegen(context, builder, sig, args):
        i32 = ir.IntType(32)
        bits = builder.bitcast(builder.fadd(args[0], ir.Constant(ir.FloatType(), float(MAGIC))), i32)
        low = builder.sub(builder.and_(bits, ir.Constant(i32, 0x7FFFFF)), ir.Constant(i32, 0x400000))
        return builder.sitofp(low, ir.FloatType())

    if v == types.float32:
        return types.float32(v), codegen
    return None


def nearest_ints(v: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", over="ignore"):
        return ((v.astype(np.float32) + MAGIC).view(np.uint32) & 0x7FFFFF).astype(np.int32) - 0x400000


@njit(inline="always")
def f16_bits(f):
    """float32 -> IEEE half bits, round to nearest even; nan -> 0x7E00 with the sign (ggml's
    branch-free conversion: scale into the half range so the float adder does the rounding)."""
    w = np.int64(f32_bits(f))
    base = (abs(f) * u32_as_f32(np.uint32(0x77800000))) * u32_as_f32(np.uint32(0x08800000))
    shl1 = (w + w) & 0xFFFFFFFF
    bias = max(shl1 & 0xFF000000, 0x71000000)
    bits = np.int64(f32_bits(u32_as_f32(np.uint32((bias >> 1) + 0x07800000)) + base))
    nonsign = ((bits >> 13) & 0x7C00) + (bits & 0x0FFF)
    return np.uint16(((w & 0x80000000) >> 16) | (0x7E00 if shl1 > 0xFF000000 else nonsign))


def f16_bits_np(f: np.ndarray) -> np.ndarray:
    """numpy's float16 cast is the same rounding; only nans differ (ggml: sign | 0x7E00)."""
    with np.errstate(over="ignore", invalid="ignore"):
        h = np.asarray(f, np.float32).astype(np.float16).view(np.uint16)
    sign = (np.asarray(f, np.float32).view(np.uint32) >> 16).astype(np.uint16) & 0x8000
    return np.where(np.isnan(f), sign | 0x7E00, h).astype(np.uint16)


@njit(inline="always")
def put_f16(out, o, bits):
    """Store half bits little-endian at out[o:o+2]."""
    out[o], out[o + 1] = bits & 0xFF, bits >> 8


def f16_value(bits: np.ndarray) -> np.ndarray:
    return bits.astype(np.uint16).view(np.float16).astype(np.float32)


def round_away(v: np.ndarray) -> np.ndarray:
    """C roundf: halves away from zero (np.round rounds them to even)."""
    t = np.trunc(v)
    return np.where(np.abs(v - t) >= 0.5, t + np.sign(v), t)


@njit(inline="always")
def roundf(v):
    """C roundf as an int: halves away from zero."""
    t = np.trunc(v)
    return np.int32(t) + (np.int32(np.sign(v)) if abs(v - t) >= np.float32(0.5) else 0)


# --- 32-weight blocks (Q4_0, Q4_1, Q5_0, Q5_1) -----------------------------------------------

@njit(inline="always")
def signed_absmax(x, y):
    """The first value of largest magnitude in x[y:y+32] (+0.0 if all are zero)."""
    amax, vmax = F0, F0
    for i in range(y, y + 32):
        if amax < abs(x[i]):
            amax, vmax = abs(x[i]), x[i]
    return vmax


def signed_absmax_np(x: np.ndarray) -> np.ndarray:
    a = np.abs(x)
    first = np.take_along_axis(x, a.argmax(axis=1)[:, None], axis=1)[:, 0]
    return np.where(a.max(axis=1) > 0, first, F0)


@njit(inline="always")
def min_max(x, y):
    vmin, vmax = np.float32(np.inf), np.float32(-np.inf)  # FLT_MAX in ggml: same for finite x
    for i in range(y, y + 32):
        if x[i] < vmin:
            vmin = x[i]
        if x[i] > vmax:
            vmax = x[i]
    return vmin, vmax


def min_max_np(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    vmin, vmax = x[:, 0].copy(), x[:, 0].copy()
    for i in range(1, x.shape[1]):  # first of equal values wins, as in ggml's loop (+0.0 vs -0.0)
        vmin, vmax = np.where(x[:, i] < vmin, x[:, i], vmin), np.where(x[:, i] > vmax, x[:, i], vmax)
    return vmin, vmax


def inverse(d: np.ndarray) -> np.ndarray:
    """1 / d, or 0 where d == 0."""
    with np.errstate(divide="ignore"):
        return np.where(d != 0, np.float32(1) / d, F0).astype(np.float32)


def trunc_int(v: np.ndarray) -> np.ndarray:
    """C's float -> int conversion (towards zero)."""
    return np.trunc(v).astype(np.int32)


def pack_nibbles(q: np.ndarray) -> np.ndarray:
    """(n, 32) quants -> (n, 16) bytes: byte j holds q[j] (low nibble) and q[j + 16] (high)."""
    q = q.astype(np.uint8)
    return (q[:, :16] & 15) | (q[:, 16:] & 15) << 4


def pack_high_bits(q: np.ndarray) -> np.ndarray:
    """(n, 32) 5-bit quants -> (n, 4) bytes: the u32 whose bit j is bit 4 of q[j]."""
    bits = (q.astype(np.uint32) >> 4 & 1) << np.arange(32, dtype=np.uint32)
    return np.bitwise_or.reduce(bits, axis=1).astype("<u4").view(np.uint8).reshape(-1, 4)


@njit(inline="always")
def put_nibbles(out, o, q0, q1, j):
    """Quants q0 = q[j], q1 = q[j + 16] of a block whose nibble bytes start at out[o]."""
    out[o + j] = (q0 & 15) | (q1 & 15) << 4


@njit(inline="always")
def put_u32(out, o, v):
    for k in range(4):
        out[o + k] = (v >> 8 * k) & 0xFF


# --- Q6_K sub-blocks: symmetric, weights x**2 (make_qx_quants with rmse_type 1) ---------------

@njit
def _qx_trial(xt, iscale, Laux, sumlx, suml2, nmax):
    """Quantize every column of xt against its iscale: Laux = l + nmax, and the sums of x**2 * x * l
    and x**2 * l * l (ggml's weights x**2, rmse_type 1)."""
    n, G = xt.shape
    lo, hi = np.float32(-nmax), np.float32(nmax - 1)
    sumlx[:] = F0
    suml2[:] = F0
    for i in range(n):
        for g in range(G):
            l = min(hi, max(lo, nearest(iscale[g] * xt[i, g])))
            Laux[i, g] = l + np.float32(nmax)
            w = xt[i, g] * xt[i, g]
            sumlx[g] += w * xt[i, g] * l
            suml2[g] += w * l * l


@njit
def make_qx_groups(xt, Lt, nmax, scale):
    """make_qx on each column of xt (n, G) -> Lt (n, G) quants (0..2*nmax-1) as floats, scale (G,).
    The 19 trial scales do not depend on each other; each is tried on all groups at once."""
    n, G = xt.shape
    fn = np.float32(nmax)
    amax, vmax, iscale = np.zeros(G, np.float32), np.zeros(G, np.float32), np.empty(G, np.float32)
    sumlx, suml2, best = np.empty(G, np.float32), np.empty(G, np.float32), np.empty(G, np.float32)
    for i in range(n):
        for g in range(G):
            ax = abs(xt[i, g])
            vmax[g] = xt[i, g] if ax > amax[g] else vmax[g]
            amax[g] = ax if ax > amax[g] else amax[g]
    for g in range(G):
        iscale[g] = -fn / vmax[g]
    _qx_trial(xt, iscale, Lt, sumlx, suml2, nmax)
    for g in range(G):
        scale[g] = sumlx[g] / suml2[g] if suml2[g] != 0 else F0
        best[g] = scale[g] * sumlx[g]
    Laux = np.empty((n, G), np.float32)
    for step in range(-9, 10):
        if step == 0:
            continue
        for g in range(G):
            iscale[g] = -(fn + np.float32(0.1) * np.float32(step)) / vmax[g]
        _qx_trial(xt, iscale, Laux, sumlx, suml2, nmax)
        for g in range(G):
            if suml2[g] > 0 and sumlx[g] * sumlx[g] > best[g] * suml2[g]:
                scale[g] = sumlx[g] / suml2[g]
                best[g] = scale[g] * sumlx[g]
                for i in range(n):
                    Lt[i, g] = Laux[i, g]
    for g in range(G):
        if amax[g] < GROUP_MAX_EPS:  # all (near) zero
            scale[g] = F0
            for i in range(n):
                Lt[i, g] = F0


def make_qx_blocks(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """make_qx on each row of x (m, n) float32 -> L (m, n) int32, scale (m,) float32."""
    m, n = x.shape
    amax, vmax = np.zeros(m, np.float32), np.zeros(m, np.float32)
    for i in range(n):
        bigger = np.abs(x[:, i]) > amax
        amax, vmax = np.where(bigger, np.abs(x[:, i]), amax), np.where(bigger, x[:, i], vmax)
    fn = np.float32(nmax)

    def trial(iscale):
        with np.errstate(all="ignore"):
            l = np.clip(nearest_ints(iscale[:, None] * x), -nmax, nmax - 1).astype(np.float32)
        sumlx, suml2 = np.zeros(m, np.float32), np.zeros(m, np.float32)
        for i in range(n):
            w = x[:, i] * x[:, i]
            sumlx += w * x[:, i] * l[:, i]
            suml2 += w * l[:, i] * l[:, i]
        return l.astype(np.int32) + nmax, sumlx, suml2

    with np.errstate(all="ignore"):
        L, sumlx, suml2 = trial(-fn / vmax)
        scale = np.where(suml2 != 0, sumlx / suml2, F0).astype(np.float32)
        best = scale * sumlx
        for step in [s for s in range(-9, 10) if s]:
            Lt, sumlx, suml2 = trial(-(fn + np.float32(0.1) * np.float32(step)) / vmax)
            better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
            L = np.where(better[:, None], Lt, L)
            scale = np.where(better, sumlx / suml2, scale)
            best = np.where(better, scale * sumlx, best)
    zero = amax < GROUP_MAX_EPS
    return np.where(zero[:, None], 0, L), np.where(zero, F0, scale)


# --- Q4_K / Q5_K sub-blocks: scale and minimum, weighted (make_qkx2_quants, squared error) ------

@njit
def make_qkx2_groups(xt, wt, Lt, nmax, rmin, rdelta, nstep, scale, the_min):
    """make_qkx2 on each column of xt (n, G) with weights wt (n, G) -> Lt (n, G) quants (0..nmax)
    as floats, scale (G,), the_min (G,). Each trial starts from the minimum the earlier ones
    settled on, as in ggml."""
    n, G = xt.shape
    fn = np.float32(nmax)
    vmin, vmax, sum_w, sum_x = xt[0].copy(), xt[0].copy(), wt[0].copy(), np.empty(G, np.float32)
    iscale, best, err = np.empty(G, np.float32), np.zeros(G, np.float32), np.empty(G, np.float32)
    sum_l, sum_l2, sum_xl = np.empty(G, np.float32), np.empty(G, np.float32), np.empty(G, np.float32)
    D, this_scale, this_min = np.empty(G, np.float32), np.empty(G, np.float32), np.empty(G, np.float32)
    flat = np.empty(G, np.bool_)
    Laux = np.empty((n, G), np.float32)
    for g in range(G):
        sum_x[g] = sum_w[g] * xt[0, g]
    for i in range(1, n):
        for g in range(G):
            v = xt[i, g]
            vmin[g] = v if v < vmin[g] else vmin[g]
            vmax[g] = v if v > vmax[g] else vmax[g]
            sum_w[g] += wt[i, g]
            sum_x[g] += wt[i, g] * v
    for g in range(G):
        vmin[g] = F0 if vmin[g] > 0 else vmin[g]
        flat[g] = vmax[g] == vmin[g]  # ggml returns at once: quants 0, scale 0
        iscale[g] = fn / (vmax[g] - vmin[g])
        scale[g] = np.float32(1) / iscale[g]
    for i in range(n):
        for g in range(G):
            l = min(fn, max(F0, nearest(iscale[g] * (xt[i, g] - vmin[g]))))
            Lt[i, g] = l
            diff = scale[g] * l + vmin[g] - xt[i, g]
            best[g] += wt[i, g] * (diff * diff)
    for step in range(nstep + 1):
        num = rmin + rdelta * np.float32(step) + fn
        for g in range(G):
            iscale[g] = num / (vmax[g] - vmin[g])
            sum_l[g], sum_l2[g], sum_xl[g], err[g] = F0, F0, F0, F0
        for i in range(n):
            for g in range(G):
                l = min(fn, max(F0, nearest(iscale[g] * (xt[i, g] - vmin[g]))))
                Laux[i, g] = l
                wl = wt[i, g] * l
                sum_l[g] += wl
                sum_l2[g] += wl * l
                sum_xl[g] += wl * xt[i, g]
        for g in range(G):
            D[g] = sum_w[g] * sum_l2[g] - sum_l[g] * sum_l[g]
            this_scale[g] = (sum_w[g] * sum_xl[g] - sum_x[g] * sum_l[g]) / D[g]
            this_min[g] = (sum_l2[g] * sum_x[g] - sum_l[g] * sum_xl[g]) / D[g]
            if this_min[g] > 0:
                this_min[g] = F0
                this_scale[g] = sum_xl[g] / sum_l2[g]
        for i in range(n):
            for g in range(G):
                diff = this_scale[g] * Laux[i, g] + this_min[g] - xt[i, g]
                err[g] += wt[i, g] * (diff * diff)
        for g in range(G):
            if D[g] > 0 and err[g] < best[g] and not flat[g]:
                best[g], scale[g], vmin[g] = err[g], this_scale[g], this_min[g]
                for i in range(n):
                    Lt[i, g] = Laux[i, g]
    for g in range(G):
        the_min[g] = -vmin[g]
        if flat[g]:
            scale[g] = F0
            for i in range(n):
                Lt[i, g] = F0


def make_qkx2_blocks(x, weights, nmax, rmin, rdelta, nstep):
    """make_qkx2 on each row of x (m, n) -> L (m, n) int32, scale (m,), the_min (m,) float32."""
    m, n = x.shape
    vmin, vmax, sum_w = x[:, 0].copy(), x[:, 0].copy(), weights[:, 0].copy()
    sum_x = sum_w * x[:, 0]
    for i in range(1, n):
        vmin = np.where(x[:, i] < vmin, x[:, i], vmin)
        vmax = np.where(x[:, i] > vmax, x[:, i], vmax)
        sum_w += weights[:, i]
        sum_x += weights[:, i] * x[:, i]
    vmin = np.where(vmin > 0, F0, vmin)
    flat = vmax == vmin
    fn, rmin, rdelta = np.float32(nmax), np.float32(rmin), np.float32(rdelta)

    def quants(iscale, vmin):
        return np.clip(nearest_ints(iscale[:, None] * (x - vmin[:, None])), 0, nmax).astype(np.float32)

    def error(scale, vmin, L):
        err = np.zeros(m, np.float32)
        for i in range(n):
            diff = scale * L[:, i] + vmin - x[:, i]
            err += weights[:, i] * (diff * diff)
        return err

    with np.errstate(all="ignore"):
        iscale = fn / (vmax - vmin)
        scale = np.float32(1) / iscale
        L = quants(iscale, vmin)
        best = error(scale, vmin, L)
        for step in range(nstep + 1):
            iscale = (rmin + rdelta * np.float32(step) + fn) / (vmax - vmin)
            Laux = quants(iscale, vmin)
            sum_l, sum_l2, sum_xl = (np.zeros(m, np.float32) for _ in range(3))
            for i in range(n):
                wl = weights[:, i] * Laux[:, i]
                sum_l += wl
                sum_l2 += wl * Laux[:, i]
                sum_xl += wl * x[:, i]
            D = sum_w * sum_l2 - sum_l * sum_l
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            clamp = this_min > 0
            this_min = np.where(clamp, F0, this_min)
            this_scale = np.where(clamp, sum_xl / sum_l2, this_scale)
            err = error(this_scale, this_min, Laux)
            better = (D > 0) & (err < best) & ~flat
            L = np.where(better[:, None], Laux, L)
            best, scale, vmin = (np.where(better, a, b) for a, b in
                                 ((err, best), (this_scale, scale), (this_min, vmin)))
    L = np.where(flat[:, None], 0, L).astype(np.int32)
    return L, np.where(flat, F0, scale).astype(np.float32), (-vmin).astype(np.float32)


def running_max(v: np.ndarray) -> np.ndarray:
    """max(0, v[:, 0], v[:, 1], ...) as ggml's `if (s > m) m = s` loop, per row."""
    m = np.zeros(v.shape[0], np.float32)
    for j in range(v.shape[1]):
        m = np.where(v[:, j] > m, v[:, j], m)
    return m
