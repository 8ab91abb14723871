"""Integer prefill (kernels.matmul above a few tokens): the layouts, the driver and the kernel tables.

The tokens are quantized once per layout (_prefill_scheme, _prefill_activations); each thread takes a block of
rows at a time, unpacks a segment of K of them to int16 (intdot_prefill's unpackers) and meets every four of
them with the tokens two or four at a time (the four-by-two kernels), Q4_K's and Q5_K's mins in their own
kernel. Each output row is computed by one thread in a fixed order, so results do not depend on the thread
count. kernels.py holds the decode drivers and the dispatch.
"""
from functools import cache, partial
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T
from numba import prange, types

from . import intdot_prefill
from .activations import QMAX, QMAX14, TOKENS_PAD, aligned_int16, quantize_prefill, quantize_prefill32
from .jit import KERNEL, MINS_SIG, OUT2, ROWS, UNPACK16_SIG, W4X2_SIG, kernel_address, njit_parallel, pointer_call
from .prefill_amx import TILE_TOKENS, amx_rows, quantize_amx
from .simd_amx import HAS_AMX
from .tensor import QuantizedTensor

_call_unpack16, _call_4x2, _call_mins = pointer_call(UNPACK16_SIG), pointer_call(W4X2_SIG), pointer_call(MINS_SIG)


@njit_parallel(types.void(KERNEL, KERNEL, KERNEL, ROWS,
                         types.Array(types.int16, 2, "C", readonly=True), *(types.Array(types.float32, 2, "C", readonly=True),) * 2,
                         OUT2, *(types.int64,) * 6))
def _w16_rows(unpack, dot4x2, mins, rows, x16, xd, px, out, block_rows, seg, unit, dper, mper, ldp):
    """x16 (T, K) with T even, xd and px the tokens' scales -> out (T, N). K-quants (unit 256 g: g blocks
    interleaved, dper 16 (g = 1: 1), mper 8 g): xd (T, dper per unit) by lane, px (K/32, ldp) (sums of q16 over each 32, times
    xd); blocks of 32 (unit 512: 16 blocks interleaved, dper = mper = 16): xd and px (T, 16 per 512), K as
    activations.interleave32 lays it out.
    A thread takes block_rows rows at a time and goes along K by segments of seg units: it unpacks its rows'
    segment (block_rows x seg unit int16, sized to stay in L2 beside the tokens' segment; dper and mper
    scales per unit), then meets each four of them (the last row repeated to fill the last four; in L1)
    with the tokens two or four at a time. A (row, token) sums its segments' results in float64, in order.
    mins (Q4_K, Q5_K; else 0): px is then the tokens' sums by sub-block, tokens along (row stride ldp, from the
    tile's first token), and the mins kernel takes them with msc after each segment, into accm; the result is
    acc - accm."""
    n_t, k = x16.shape
    nb, n = -(-k // unit), rows.shape[0]   # the 32-block layout's last unit may be short
    xf, df, pf = x16.reshape(x16.size), xd.reshape(xd.size), px.reshape(px.size)
    n_m = -(-n_t // TOKENS_PAD) * TOKENS_PAD if mins else 0
    for task in prange((n + block_rows - 1) // block_rows):
        r0 = task * block_rows
        nr = min(block_rows, n - r0)
        nq = (nr + 3) // 4
        w16 = aligned_int16(4 * nq * seg * unit)
        dsc, msc = np.empty(4 * nq * seg * dper, np.float32), np.empty(4 * nq * seg * mper, np.float32)
        acc = np.zeros((n_t, 4 * nq), np.float64)   # acc[t, i]: token t, row r0 + i
        accm = np.zeros((4 * nq, n_m), np.float64)   # accm[r, t]: the mins of row r and token t
        for b0 in range(0, nb, seg):
            sb = min(seg, nb - b0)
            ks = min(unit * sb, k - unit * b0)
            _call_unpack16(unpack, (rows, r0, nr, 4 * nq, b0, sb, w16, dsc, msc))
            _call_4x2(dot4x2, (w16[:4 * nq * ks], dsc[:4 * nq * sb * dper], msc[:4 * nq * sb * mper], xf, df, pf,
                               unit * b0, dper * b0, k, acc))
            if mins:
                _call_mins(mins, (msc[:4 * nq * sb * mper], pf, mper * b0, ldp, accm))
        for t in range(n_t):   # along out's rows: by columns, each write would take a cache line of its own
            if mins:
                for i in range(nr):
                    out[t, r0 + i] = acc[t, i] - accm[i, t]
            else:
                for i in range(nr):
                    out[t, r0 + i] = acc[t, i]


# Prefill's unpack (by blocks a group: as many as int32 lanes can sum, where K allows) and four-by-two kernel
# per path, K-quants (the types in neither this nor _UNPACK32 dequantize for BLAS); Q4_K's and Q5_K's mins in
# a kernel of their own
_UNPACK = {T.Q4_K: {4: intdot_prefill.unpack_q4_k, 1: intdot_prefill.unpack_q4_k_g1},
           T.Q5_K: {2: intdot_prefill.unpack_q5_k, 1: intdot_prefill.unpack_q5_k_g1},
           T.Q6_K: {4: intdot_prefill.unpack_q6_k_g4, 1: intdot_prefill.unpack_q6_k}}
_W4X2 = {1: {"portable": intdot_prefill.w16_4x2_portable, "avx2": intdot_prefill.w16_4x2_avx2, "avx512": intdot_prefill.w16_4x2_avx512},
         2: {"portable": intdot_prefill.w16_4x2_g2_portable, "avx2": intdot_prefill.w16_4x2_g2_avx2, "avx512": intdot_prefill.w16_4x2_g2_avx512},
         4: {"portable": intdot_prefill.w16_4x2_g4_portable, "avx2": intdot_prefill.w16_4x2_g4_avx2, "avx512": intdot_prefill.w16_4x2_g4_avx512}}
_MINS = {"portable": intdot_prefill.mins_portable, "avx2": intdot_prefill.mins_avx2, "avx512": intdot_prefill.mins_avx512}
_UNPACK_AMX = {T.Q4_K: intdot_prefill.unpack_q4_k_split, T.Q5_K: intdot_prefill.unpack_q5_k_split,   # one block a group,
               T.Q6_K: intdot_prefill.unpack_q6_k_split}                                             # bytes for AMX


# ... of the 32-block types (any K, a multiple of 32): sixteen blocks interleaved (intdot_prefill.unpack32_*, w32_4x2;
# the mins kernel for Q4_1 and Q5_1)
_UNPACK32 = {T.Q4_0: intdot_prefill.unpack32_q4_0, T.Q4_1: intdot_prefill.unpack32_q4_1, T.Q8_0: intdot_prefill.unpack32_q8_0,
             T.Q5_0: intdot_prefill.unpack32_q5_0, T.Q5_1: intdot_prefill.unpack32_q5_1}
_W32 = {"portable": intdot_prefill.w32_4x2_portable, "avx2": intdot_prefill.w32_4x2_avx2, "avx512": intdot_prefill.w32_4x2_avx512}   # Q4_1, Q5_1
_W32_NOMINS = {"portable": intdot_prefill.w32_4x2_nomins_portable, "avx2": intdot_prefill.w32_4x2_nomins_avx2,
               "avx512": intdot_prefill.w32_4x2_nomins_avx512}


def _l2_bytes(default: int = 512 << 10) -> int:
    """One core's L2 cache in bytes, from Linux's sysfs; default where it cannot be read."""
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    try:
        for index in sorted(base.glob("index*")):
            if (index / "level").read_text().strip() == "2":
                size = (index / "size").read_text().strip().upper()
                return int(size[:-1]) << {"K": 10, "M": 20}[size[-1]] if size[-1] in "KM" else int(size)
    except (OSError, ValueError):
        pass
    return default


# Prefill (_w16_rows): the tokens' activations for one segment of K fill half of L2, a thread's unpacked rows
# a quarter (Mistral at T=512, Zen 5, 1 MiB L2: 128 tokens x 64 rows beat 64 x 64 and 256 x 32 by 5-15%).
TILE_BYTES = _l2_bytes() // 2
SEG_BLOCKS = 8   # K segment of the prefill kernels, in blocks of 256: 4 rows of int16 take 16 KiB of L1


@cache
def _prefill_kernels(ggml_type: int, path: str, scheme: tuple):
    """(unpack, four-by-two kernel, mins kernel or 0) addresses for the layout scheme: Q4_K and Q5_K take the
    mins kernel after the four-by-two one; Q4_1 and Q5_1 the four-by-two kernel with their offsets in it. AMX_KEY:
    the split unpacker, no four-by-two kernel (0), the mins kernel of path."""
    if scheme == AMX_KEY:
        return (kernel_address(_UNPACK_AMX[ggml_type], UNPACK16_SIG), 0,
                0 if ggml_type == T.Q6_K else kernel_address(_MINS[path], MINS_SIG))
    if ggml_type in _UNPACK:
        g = scheme[0]
        unpack, dot4x2, mins = _UNPACK[ggml_type][g], _W4X2[g][path], (None if ggml_type == T.Q6_K else _MINS[path])
    else:
        unpack, dot4x2, mins = _UNPACK32[ggml_type], (_W32 if ggml_type in (T.Q4_1, T.Q5_1) else _W32_NOMINS)[path], None
    return (kernel_address(unpack, UNPACK16_SIG), kernel_address(dot4x2, W4X2_SIG),
            0 if mins is None else kernel_address(mins, MINS_SIG))


def _prefill_scheme(w: QuantizedTensor, exact: bool, n_tokens: int, path: str) -> tuple | None:
    """Integer prefill's layout for w and n_tokens tokens on path (a _PREFILL key: AMX_KEY for the K-quants on
    AMX; else (g, qmax) for the K-quants, g blocks interleaved, the most its type allows where K is a multiple of
    256 g, from GROUP_TOKENS tokens on, and the activations' range (Q6_K's groups of four take 14-bit
    activations); B32 for sixteen interleaved blocks of 32), None where it dequantizes for BLAS."""
    if exact:
        return None
    if w.ggml_type in _UNPACK and AMX and path == "avx512" and n_tokens >= AMX_TOKENS:
        return AMX_KEY
    if w.ggml_type in _UNPACK:
        g = max(g for g in _UNPACK[w.ggml_type] if w.shape[1] % (256 * g) == 0 and (g == 1 or n_tokens >= GROUP_TOKENS))
        return (g, QMAX14 if w.ggml_type == T.Q6_K and g > 1 else QMAX)
    return B32 if w.ggml_type in _UNPACK32 else None


# Below this many tokens a group of one block: its unpack is cheaper (Q4_K 5.3 against 6.8 ns a block), more than
# the four-block kernel saves (14336 x 4096 Q4_K, 2 threads: T=6 2.36 against 2.51 ms, T=8 2.85 against 2.78)
GROUP_TOKENS = 8


# K-quant prefill on AMX tiles (prefill_amx.py) where the CPU has them: on the avx512 path, whose kernels fold the
# tiles (tests turn it off to compare the AVX-512 kernels with their portable twins), from AMX_TOKENS tokens on
AMX, AMX_TOKENS = HAS_AMX, 8
AMX_ROWS = 64   # rows a thread unpacks at a time for AMX (a multiple of 16)


# Integer prefill layouts (_prefill_scheme): the tokens' quantizer, and per unit of the layout its elements,
# weight scales and mins (the _w16_rows arguments)
B32 = (32, QMAX)   # the key of the 32-block types' layout
AMX_KEY = ("amx", QMAX)
_PREFILL = {**{(g, q): (partial(quantize_prefill, g=g, qmax=q), 256 * g, 16 if g > 1 else 1, 8 * g)
               for g, q in ((1, QMAX), (2, QMAX), (4, QMAX), (4, QMAX14))},
            B32: (quantize_prefill32, 512, 16, 16), AMX_KEY: (quantize_amx, 256, 1, 8)}


def _prefill_activations(x: np.ndarray, scheme: tuple):
    """(T, K) -> (T, acts) for _int_matmul: acts = the scheme's quantizer on x, with a zero token after an odd
    count (the kernels take tokens two at a time; its results are dropped)."""
    n_t = x.shape[0]
    if n_t % 2:
        x = np.concatenate([x, np.zeros((1, x.shape[1]), np.float32)])
    return n_t, _PREFILL[scheme][0](x)


def _int_matmul(w: QuantizedTensor, acts, scheme: tuple, path: str) -> np.ndarray:
    """Integer dot products, for a tile of tokens at a time (_w16_rows, or amx_rows for AMX_KEY); K by segments of
    SEG_BLOCKS x 256 weights in either layout."""
    if scheme == AMX_KEY:
        return _amx_matmul(w, acts, path)
    n_t, (xd, q16, px) = acts
    _, unit, dper, mper = _PREFILL[scheme]
    unpack, dot4x2, mins = _prefill_kernels(w.ggml_type, path, scheme)
    out = np.empty((q16.shape[0], w.shape[0]), np.float32)
    seg = max(1, SEG_BLOCKS * 256 // unit)
    seg_bytes = 2 * unit * min(seg, -(-q16.shape[1] // unit))
    tile = max(TOKENS_PAD, TILE_BYTES // seg_bytes // TOKENS_PAD * TOKENS_PAD)
    block_rows = max(16, TILE_BYTES // 2 // seg_bytes // 4 * 4)
    for t0 in range(0, q16.shape[0], tile):   # each tile's results go straight to its rows of out
        t1 = min(q16.shape[0], t0 + tile)
        # K-quants: px (K/32, T padded) tokens along, the tile's from column t0 on; 32-block types: by token
        tile_px = px[t0:t1] if scheme == B32 else px.reshape(-1)[t0:].reshape(1, -1)
        _w16_rows(unpack, dot4x2, mins, w.data, q16[t0:t1], xd[t0:t1], tile_px, out[t0:t1], block_rows, seg, unit, dper, mper,
                  px.shape[1])
    return out[:n_t]


def _amx_matmul(w: QuantizedTensor, acts, path: str) -> np.ndarray:
    """_int_matmul on AMX tiles (prefill_amx.amx_rows), a chunk of tokens at a time (their bytes of a segment in
    half of L2, as _int_matmul's tiles); the split unpackers and the mins kernel of path."""
    n_t, (xh, xl, xd, px) = acts
    unpack, _, mins = _prefill_kernels(w.ggml_type, path, AMX_KEY)
    out = np.empty((n_t + n_t % 2, w.shape[0]), np.float32)
    n_tiles = xd.shape[1] // TILE_TOKENS
    chunk = max(1, TILE_BYTES // (2 * SEG_BLOCKS * 256) // TILE_TOKENS)   # token tiles
    for tt0 in range(0, n_tiles, chunk):
        amx_rows(unpack, mins, w.data, xh, xl, xd, px.reshape(-1)[TILE_TOKENS * tt0:], out, AMX_ROWS, SEG_BLOCKS,
                 px.shape[1], tt0, min(chunk, n_tiles - tt0))
    return out[:n_t]
