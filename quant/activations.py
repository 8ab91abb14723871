"""Activation quantization for the integer dot products of K-quant weights (decode: quantize; prefill:
quantize_prefill, the same d and q16 for a chunk of tokens).

Per block of 256 activations (a K-quant super-block): d = max|x| / 32512 (float32), and
q16[e] = rint(x[e] / d) in [-32512, 32512], stored four ways: q16 itself (portable loops, Q8_0); qp,
the even-indexed and the odd-indexed elements of each 32 (sub-block s) as chunks of 16, in the order
qp_chunk gives (the Q4_K / Q5_K kernels take two weights from each 16-bit word of quants, the low
byte's and the high byte's, with shifts and masks only; AVX-512 reads sub-blocks s and s + 2 at once,
so their chunks sit side by side); two int8 planes hi = (q16 + 128) >> 8, lo = q16 - 256 * hi (hi in
[-127, 127], lo in [-128, 127]) for x86 pmaddubsw (Q6_K); bsums[16 * b + j] = sum of q16 over elements 16j..16j+15 of block b (the Q4_K
mins and the Q6_K offset of 32 use them).
Why 16 bits and not llama.cpp's 8 (Q8_K): int8 activations cost ~0.7% relative error per dot
product (random data), 16 bits ~3e-5, within the 1e-3 bar, for twice the (cache-resident)
activation reads; weights, the memory-bound part, are read once either way. Prefill against Q6_K in
groups of four blocks takes 14 bits (QMAX14, ~1e-4), so that int32 lanes hold 64 of its products.
"""
import numpy as np

from numba import prange

from .jit import njit, njit_parallel, u32_as_f32

BLOCK = 256
QMAX = 32512  # 127 * 256: hi stays within int8


def qp_chunk(s: int, parity: int) -> int:
    """Where in a block of qp the 16 elements 32 s + parity, + 2, ..., + 30 start: sub-blocks 4P + h
    and 4P + h + 2 (P, h in 0, 1) are neighbours, parity by parity."""
    return 16 * (8 * (s // 4) + 4 * (s % 2) + 2 * parity + (s % 4) // 2)


_QP_FROM = np.array([32 * s + p + 2 * j for s in range(8) for p in range(2) for j in range(16)])
QP_ORDER = np.empty(BLOCK, np.int64)   # qp[y + i] = q16[y + QP_ORDER[i]]
QP_ORDER[np.array([qp_chunk(s, p) + j for s in range(8) for p in range(2) for j in range(16)])] = _QP_FROM


def _reference_blocks(x: np.ndarray, n: int):
    """x (K,) in blocks of n -> d (K/n,) float32 = max|x| / QMAX per block, q (K/n, n) int32 = rint(x / d)."""
    xb = x.astype(np.float32).reshape(-1, n)
    amax = np.abs(xb).max(axis=1)
    d = (amax / np.float32(QMAX)).astype(np.float32)
    inv = np.where(amax > 0, np.float32(QMAX) / np.where(amax > 0, amax, 1), 0).astype(np.float32)
    return d, np.clip(np.rint(xb * inv[:, None]), -QMAX, QMAX).astype(np.int32)


def quantize_reference(x: np.ndarray):
    """x (K,) float32, K % 256 == 0 -> d (K/256,) f32, q16 int16, qp int16, hi int8, lo int8, bsums int32 (K/16,)."""
    d, q = _reference_blocks(x, BLOCK)
    hi = (q + 128) >> 8
    lo = q - 256 * hi
    bsums = q.reshape(-1, 16).sum(axis=1).astype(np.int32)
    qp = np.empty_like(q)
    for s in range(8):
        for p in range(2):
            qp[:, qp_chunk(s, p):qp_chunk(s, p) + 16] = q[:, 32 * s + p:32 * s + 32:2]
    return (d, q.reshape(-1).astype(np.int16), qp.reshape(-1).astype(np.int16), hi.reshape(-1).astype(np.int8),
            lo.reshape(-1).astype(np.int8), bsums)


@njit(inline="always")
def _block_scale(bits, y, n, qmax=QMAX):
    """Of x[y:y + n] (as bits): d = max|x| / qmax and 1 / d (0 for an all-zero block). max |x| is the largest
    magnitude bit pattern: an integer max, which LLVM vectorizes (a float max reduction is not reordered
    without fast-math)."""
    m = np.uint32(0)
    for i in range(y, y + n):
        m = max(m, bits[i] & np.uint32(0x7FFFFFFF))
    amax = u32_as_f32(m)
    return amax / np.float32(qmax), (np.float32(qmax) / amax if amax > 0 else np.float32(0))


@njit(inline="always")
def _round(v, inv, qmax=QMAX):
    return min(max(np.int32(np.rint(v * inv)), -qmax), qmax)


@njit
def quantize(x, d, q16, qp, hi, lo, bsums):
    """Four loops per block that LLVM vectorizes (about 3x faster than one scalar loop): max |x|
    (_block_scale), the rounding, the sums of 16, then qp."""
    bits = x.view(np.uint32)
    for b in range(x.size // BLOCK):
        y = b * BLOCK
        d[b], inv = _block_scale(bits, y, BLOCK)
        for i in range(y, y + BLOCK):
            q = _round(x[i], inv)
            h = (q + 128) >> 8
            q16[i], hi[i], lo[i] = q, h, q - 256 * h
        for j in range(y // 16, y // 16 + 16):
            s = np.int32(0)
            for i in range(16 * j, 16 * j + 16):
                s += np.int32(q16[i])
            bsums[j] = s
        for i in range(BLOCK):
            qp[y + i] = q16[y + QP_ORDER[i]]


@njit
def aligned_int16(n):
    """An int16 array of n whose data starts on a 64-byte cache line: each 64-byte load of the AVX-512
    prefill kernel then reads one line, not two (numpy's and Numba's large allocations are 16 past one)."""
    buf = np.empty(n + 32, np.int16)
    skip = ((-buf.ctypes.data) % 64) // 2
    return buf[skip:skip + n]


@njit
def aligned_int8(n):
    """An int8 array of n on a 64-byte cache line (aligned_int16's bytes): each 64-byte row of an AMX tile load
    then reads one line, not two (twice as fast)."""
    return aligned_int16((n + 1) // 2).view(np.int8)[:n]


def quantize_activations(x: np.ndarray):
    """x (K,) float32 contiguous -> (d, q16, qp, hi, lo, bsums) as in quantize_reference."""
    k = x.size
    d, bsums = np.empty(k // BLOCK, np.float32), np.empty(k // 16, np.int32)
    q16, qp = np.empty(k, np.int16), np.empty(k, np.int16)
    hi, lo = np.empty(k, np.int8), np.empty(k, np.int8)
    quantize(x, d, q16, qp, hi, lo, bsums)
    return d, q16, qp, hi, lo, bsums


# --- prefill: q16 and d as quantize gives them, g blocks interleaved, and pxt = d * (sum of the 32 q16) per 32 ---

@njit(inline="always")
def interleave_k(src, dst, lanes):
    """A group of g = 16/lanes K-quant blocks (256 int16 each) from natural order (src) to prefill's layout (dst):
    block i's int32 pairs p = lanes r .. lanes (r + 1) - 1 (elements 2 lanes r on) go to row r of 16 pairs,
    lanes lanes i on, so that each lane of a pairwise multiply-add meets one block only and sums 16 g of its
    products (int32 holds 64 of Q4_K's, 32 of Q5_K's, 16 of Q6_K's against 16-bit activations). Contiguous
    runs, which LLVM vectorizes; g = 1 is the natural order."""
    for i in range(16 // lanes):
        for r in range(BLOCK // (2 * lanes)):
            for m in range(2 * lanes):
                dst[32 * r + 2 * lanes * i + m] = src[BLOCK * i + 2 * lanes * r + m]


@njit(inline="always")
def _round_block(x, b, inv, db, out, y, px, qmax):
    """Block b of x rounded to out[y:y + 256], px[8 b + j] = db * the sum of its 32 j .. 32 j + 31."""
    for j in range(8):
        s = np.int32(0)
        for e in range(32 * j, 32 * j + 32):
            q = _round(x[b * BLOCK + e], inv, qmax)
            out[y + e] = q
            s += q
        px[8 * b + j] = np.float32(s) * db


@njit_parallel
def _quantize_prefill(x, d, q16, pxt, g, qmax):
    lanes = 16 // g
    for t in prange(x.shape[0]):
        bits = x[t].view(np.uint32)
        tmp = np.empty(BLOCK * g, np.int16)
        for b in range(x.shape[1] // BLOCK):
            db, inv = _block_scale(bits, b * BLOCK, BLOCK, qmax)
            if g == 1:   # one block a group: one d, q16 in place
                d[t, b] = db
                _round_block(x[t], b, inv, db, q16[t], b * BLOCK, pxt[:, t], qmax)
                continue
            for lane in range(lanes):   # the block's d on each of its lanes
                d[t, 16 * (b // g) + lanes * (b % g) + lane] = db
            _round_block(x[t], b, inv, db, tmp, (b % g) * BLOCK, pxt[:, t], qmax)
            if b % g == g - 1:   # the group's blocks are in tmp: to their slots
                group = q16[t, BLOCK * (b - g + 1):BLOCK * (b + 1)]
                if g == 4:   # lanes a constant, for LLVM
                    interleave_k(tmp, group, 4)
                else:
                    interleave_k(tmp, group, 8)


TOKENS_PAD = 16   # pxt's tokens, padded with zeros: the mins kernel takes vectors of 16 (AVX2: 8)


QMAX14 = 8191   # 14-bit activations: int32 lanes then hold 64 products of Q6_K's |w16| <= 4096 (2^12 * 8191 * 64 < 2^31)


def quantize_prefill(x: np.ndarray, g: int = 1, qmax: int = QMAX):
    """x (T, K) float32 contiguous, K % (256 g) == 0 -> the d and q16 of quantize_activations (with qmax: q16 in
    [-qmax, qmax], d = max|x| / qmax) in prefill's layout:
    d f32 by lane for g > 1, (T, 16 K / (256 g)) (a block's d on each of its 16/g lanes), else (T, K/256), q16 (T, K) int16 with g blocks
    interleaved (interleave_k; cache-line aligned); pxt (K/32, T rounded up to TOKENS_PAD, + TOKENS_PAD) f32: the sums of q16 over
    each 32 times d, in K's order, tokens along (the mins kernel's layout), zero past T."""
    t, k = x.shape
    d, q16 = np.empty((t, (16 if g > 1 else 1) * k // (BLOCK * g)), np.float32), aligned_int16(t * k).reshape(t, k)
    # one more vector of columns: a row stride of 2^n floats put the mins kernel's rows in a few L1 sets
    pxt = np.zeros((k // 32, -(-t // TOKENS_PAD) * TOKENS_PAD + TOKENS_PAD), np.float32)
    _quantize_prefill(x, d, q16, pxt, g, qmax)
    return d, q16, pxt


# --- per 32 (the row types with blocks of 32: Q4_0, Q4_1, Q8_0 when K is not a multiple of 256) ---
# d32 = max|x| / 32512 per 32 activations, q16 as above, s32 = sum of the 32 q16.

def quantize32_reference(x: np.ndarray):
    """x (K,) float32, K % 32 == 0 -> d32 (K/32,) f32, q16 (K,) int16, s32 (K/32,) int32."""
    d, q = _reference_blocks(x, 32)
    return d, q.reshape(-1).astype(np.int16), q.sum(axis=1).astype(np.int32)


@njit
def quantize32(x, d, q16, s32):
    bits = x.view(np.uint32)
    for b in range(x.size // 32):
        y = 32 * b
        d[b], inv = _block_scale(bits, y, 32)
        s = np.int32(0)
        for i in range(y, y + 32):
            q = _round(x[i], inv)
            q16[i] = q
            s += q
        s32[b] = s


def quantize_activations32(x: np.ndarray):
    """x (K,) float32 contiguous -> (d32, q16, s32) as in quantize32_reference."""
    d, s32 = np.empty(x.size // 32, np.float32), np.empty(x.size // 32, np.int32)
    q16 = np.empty(x.size, np.int16)
    quantize32(x, d, q16, s32)
    return d, q16, s32


# --- prefill of the 32-block types (prefill._int_matmul, layout 512): blocks interleaved sixteen at a time ---

@njit(inline="always")
def group32(g, nb):
    """Blocks in group g of a row of nb blocks of 32 (interleaved layout): 16, or for a last group of r < 16
    the power of two r rounds up to (1, 2, 4, 8 or 16; the rest padding)."""
    r = min(16, nb - 16 * g)
    n = 1
    while n < r:
        n *= 2
    return n


@njit(inline="always")
def slot32(i, p, n):
    """Where int32 pair p (elements 2 p, 2 p + 1) of block i of a group of n blocks sits in it, in int16:
    lane i + n (p mod 16/n) of pair row p // (16/n), so that each of the 16 lanes of a pairwise multiply-add
    meets one block only: for n = 16 lane i is block i; in a smaller last group, blocks repeat across the lanes
    (lane l: block l mod n) and the group is 32 n long, not 512."""
    m = 16 // n
    return 32 * (p // m) + 2 * (i + n * (p % m))


def interleave32(k: int) -> int:
    """The row length of the interleaved layout for K (a multiple of 32): 512 per whole group of 16 blocks,
    32 n for a last group of n (group32), so K = 576 stays 576 and K = 608 becomes 640."""
    nb = k // 32
    return 512 * (nb // 16) + (32 * group32(nb // 16, nb) if nb % 16 else 0)


def scales32(k: int) -> int:
    """Entries per row (or token) of the interleaved layout's d and sx arrays: 16 per group, one per lane."""
    return 16 * -(-k // 512)


@njit_parallel
def _quantize_prefill32(x, d, q16, sx):
    nb = x.shape[1] // 32
    for t in prange(x.shape[0]):
        bits = x[t].view(np.uint32)
        for g in range(d.shape[1] // 16):
            n, base, j = group32(g, nb), 512 * g, 16 * g
            for i in range(n):
                b = j + i
                if b >= nb:   # padding: d = 0, q16 = 0
                    d[t, j + i], sx[t, j + i] = 0, 0
                    for p in range(16):
                        q16[t, base + slot32(i, p, n)] = q16[t, base + slot32(i, p, n) + 1] = 0
                    continue
                d[t, j + i], inv = _block_scale(bits, 32 * b, 32)
                s = np.int32(0)
                if n == 16:   # slot32 with constants: pair p at 32 p + 2 i
                    for e in range(32):
                        q = _round(x[t, 32 * b + e], inv)
                        q16[t, base + 32 * (e // 2) + 2 * i + e % 2] = q
                        s += q
                else:
                    for e in range(32):
                        q = _round(x[t, 32 * b + e], inv)
                        q16[t, base + slot32(i, e // 2, n) + e % 2] = q
                        s += q
                sx[t, j + i] = np.float32(s) * d[t, j + i]
            for lane in range(n, 16):   # lanes that repeat a block: its d, and sx 0 (the block's offset counts once)
                d[t, j + lane], sx[t, j + lane] = d[t, j + lane % n], 0


def quantize_prefill32(x: np.ndarray):
    """x (T, K) float32 contiguous, K % 32 == 0 -> d (T, scales32(K)) f32 per lane (as quantize32 per block), q16
    (T, Kp) int16 interleaved (slot32, cache-line aligned), sx (T, scales32(K)) f32: d times the block's sum of
    q16 (on one lane per block); Kp = interleave32(K), the padding zero."""
    t, k = x.shape
    kp, ns = interleave32(k), scales32(k)
    d, sx = np.empty((t, ns), np.float32), np.empty((t, ns), np.float32)
    q16 = aligned_int16(t * kp).reshape(t, kp)
    _quantize_prefill32(x, d, q16, sx)
    return d, q16, sx
