"""Integer prefill of the K-quants on Intel AMX (simd_amx.py): the tokens' layout, the driver and the portable twin.

The tokens are quantized as for the other paths (activations.quantize_prefill, one block a group, 16-bit), their
high and low bytes in the layout of TMUL's B tiles (quantize_amx). Each thread takes a block of rows at a time
and unpacks a segment of K of them with the split unpackers (q times sub-block scale as each block's high bytes,
then its low bytes; each block's d; the mins); simd_amx.k_tiles meets every 16 of those rows with all the tokens
of the chunk; Q4_K's and Q5_K's mins go through the mins kernel as on the other paths. Each output row is
computed by one thread in a fixed order, so results do not depend on the thread count.
"""
import numpy as np
from numba import prange

from .activations import BLOCK, TOKENS_PAD, _block_scale, _round, aligned_int8, aligned_int16
from .intdot_prefill import ROW_PAD
from .jit import MINS_SIG, UNPACK16_SIG, njit, njit_parallel, pointer_call
from .simd_amx import TILE_CONFIG, k_tiles, tile_config, tile_release

_call_unpack16, _call_mins = pointer_call(UNPACK16_SIG), pointer_call(MINS_SIG)
_CONFIG = np.frombuffer(TILE_CONFIG, np.uint8)
TILE_TOKENS = 16   # tokens of a B tile (and rows of an A tile)


@njit_parallel
def _quantize_amx(x, xh, xl, xd, pxt):
    n_t, k = x.shape
    xh32, xl32 = xh.view(np.int32), xl.view(np.int32)
    for tt in prange(xd.shape[1] // TILE_TOKENS):   # a token tile a thread: its tokens share cache lines
        q = np.empty(BLOCK, np.int32)
        hb, lb = np.empty(BLOCK, np.int8), np.empty(BLOCK, np.int8)   # a block's high and low bytes
        hb32, lb32 = hb.view(np.int32), lb.view(np.int32)
        for t in range(TILE_TOKENS):
            tok = TILE_TOKENS * tt + t
            bits = x[min(tok, n_t - 1)].view(np.uint32)
            for b in range(k // BLOCK):
                if tok < n_t:
                    db, inv = _block_scale(bits, b * BLOCK, BLOCK)
                    for j in range(8):   # as activations._round_block
                        s = np.int32(0)
                        for e in range(32 * j, 32 * j + 32):
                            q[e] = _round(x[tok, b * BLOCK + e], inv)
                            s += q[e]
                        pxt[8 * b + j, tok] = np.float32(s) * db
                else:   # padding: zero
                    db = np.float32(0)
                    q[:] = 0
                xd[b, tok] = db
                for e in range(BLOCK):   # q16 = 256 hi + lo, both signed (|q| <= 32512: hi within -127..127)
                    hi = (q[e] + 128) >> 8
                    hb[e], lb[e] = hi, q[e] - 256 * hi
                for g in range(BLOCK // 4):   # four elements: 64s of K (b 256 + 4 g) // 64, tile row g % 16, token t
                    at = tt * 4 * k + 256 * (4 * b + g // 16) + 16 * (g % 16) + t
                    xh32[at], xl32[at] = hb32[g], lb32[g]


def quantize_amx(x: np.ndarray):
    """x (T, K) float32 contiguous -> the tokens quantized as activations.quantize_prefill (g = 1) quantizes them,
    laid out for simd_amx.k_tiles: xh, xl ((T16/16) 16 K,) int8, the high and low bytes of q16 (both signed),
    token tile tt at 16 K tt, then its 64s of K 1024 bytes each in TMUL's B layout (row i: the tile's 16 tokens'
    elements 4i .. 4i + 3 of the 64); xd (K/256, T16) f32, d by block, tokens along; pxt as quantize_prefill's (the
    mins kernel's). T16 = T rounded up to 16, the padding tokens zero."""
    n_t, k = x.shape
    t16 = -(-n_t // TILE_TOKENS) * TILE_TOKENS
    xh, xl = aligned_int8(t16 * k), aligned_int8(t16 * k)
    xd = np.empty((k // BLOCK, t16), np.float32)
    pxt = np.zeros((k // 32, t16 + TOKENS_PAD), np.float32)
    _quantize_amx(x, xh, xl, xd, pxt)
    return xh, xl, xd, pxt


@njit_parallel   # no signature: compiled at its first call (on a CPU with AMX), never at import
def amx_rows(unpack, mins, rows, xh, xl, xd, pf, out, block_rows, seg, ldp, tt0, ntt):
    """out[16 tt0 + t, r] (t < 16 ntt, the token tiles tt0 .. tt0 + ntt - 1) = row r . token (simd_amx.k_tiles), for
    K-quant rows unpacked by unpack (a split unpacker); mins (Q4_K, Q5_K; else 0) with pf the tokens' sums by
    sub-block from the chunk's first token (row stride ldp). A thread takes block_rows rows at a time and goes along K by
    segments of seg blocks: it unpacks its rows' segment (the last row repeated to fill 16), then every 16 rows
    meet all the chunk's tokens. A (row, token) sums its segments in float64, in order."""
    n, k = rows.shape[0], xd.shape[0] * BLOCK
    nb, t16, nt = k // BLOCK, xd.shape[1], 16 * ntt
    n_out = min(nt, out.shape[0] - 16 * tt0)
    xdf = xd.reshape(xd.size)
    for task in prange((n + block_rows - 1) // block_rows):
        r0 = task * block_rows
        nr = min(block_rows, n - r0)
        n16 = (nr + 15) // 16 * 16
        w16 = aligned_int16(n16 * (seg * BLOCK + ROW_PAD))
        wb = w16.view(np.int8)
        dsc, msc = np.empty(n16 * seg, np.float32), np.empty(n16 * seg * 8, np.float32)
        acc = np.zeros(n16 * nt, np.float64)   # acc[i nt + t]: row r0 + i, token t of the chunk
        accf = aligned_int16(n16 * nt * 2).view(np.float32)   # k_tiles' float32 sums between blocks
        accm = np.zeros((n16, nt if mins else 0), np.float64)
        tile_config(_CONFIG)
        for b0 in range(0, nb, seg):
            sb = min(seg, nb - b0)
            _call_unpack16(unpack, (rows, r0, nr, n16, b0, sb, w16, dsc, msc))
            k_tiles(wb, 0, 2 * (sb * BLOCK + ROW_PAD), n16 // 16, xh, xl, 16 * tt0 * k + 4096 * b0, 16 * k, ntt,
                    xdf, b0 * t16 + 16 * tt0, t16, dsc, 0, sb, sb, accf, acc, 0, nt)
            if mins:
                _call_mins(mins, (msc[:n16 * sb * 8], pf, 8 * b0, ldp, accm))
        tile_release()
        for t in range(n_out):
            if mins:
                for i in range(nr):
                    out[16 * tt0 + t, r0 + i] = acc[i * nt + t] - accm[i, t]
            else:
                for i in range(nr):
                    out[16 * tt0 + t, r0 + i] = acc[i * nt + t]


def amx_reference(w16: np.ndarray, dsc: np.ndarray, q16: np.ndarray, d: np.ndarray, seg: int) -> np.ndarray:
    """Numpy twin of amx_rows before the mins: w16 (N, K) int16 (q times scale, the unpack's), dsc (N, K/256) its
    d, q16 (T, K) and d (T, K/256) the tokens' (quantize_prefill, g = 1) -> (N, T) float64. Per segment of seg
    blocks and block b: the exact integer sums of simd_amx's byte split, then its float32 operations in its
    order; the segments added in float64."""
    wh, wl = w16.astype(np.int64) >> 8, w16.astype(np.int64) & 255
    hi = (q16.astype(np.int64) + 128) >> 8
    lo = q16 - 256 * hi
    nb = w16.shape[1] // BLOCK
    acc64 = np.zeros((w16.shape[0], q16.shape[0]))
    f32 = np.float32
    for b0 in range(0, nb, seg):
        acc = np.zeros(acc64.shape, f32)
        for b in range(b0, min(nb, b0 + seg)):
            e = slice(BLOCK * b, BLOCK * (b + 1))
            v = 256 * (wh[:, e] @ hi[:, e].T) + wh[:, e] @ lo[:, e].T + wl[:, e] @ hi[:, e].T
            f = v.astype(f32) * f32(256) + (wl[:, e] @ lo[:, e].T).astype(f32)   # the product exact: one rounding
            acc = acc + f * (d[None, :, b] * dsc[:, b, None])
        acc64 += acc
    return acc64
