"""Public ops on QuantizedTensor: matvec (decode), matmul (prefill), get_rows, dequantize.

Each format module provides two row kernels (jit.DOT_SIG, jit.DEQUANT_SIG); the parallel drivers below
take their addresses (jit.kernel_address, called through jit.pointer_call), so each driver is compiled
once for all types and everything stays in Numba's on-disk cache. Each output row is computed by one thread in a fixed
order, so results do not depend on the thread count.
"""
from concurrent.futures import ThreadPoolExecutor
from functools import cache, partial
from pathlib import Path

import numpy as np
from numba import get_num_threads, prange, types

from gguf import GGMLQuantizationType as T

from . import intdot, intdot_prefill
from .activations import QMAX, QMAX14, TOKENS_PAD, aligned_int16, quantize_activations, quantize_activations32, quantize_prefill, quantize_prefill32
from .formats import FORMATS
from .jit import (DEQUANT_SIG, DOT16_SIG, DOT16T_SIG, DOT32_SIG, DOT_SIG, IDS, KERNEL, MINS_SIG, OUT, OUT2, ROWS, UNPACK16_SIG, VEC, W4X2_SIG,
                  blas_threads, kernel_address, njit, njit_parallel, pointer_call)
from .simd import HAS_AVX2, HAS_AVX512
from .tensor import QuantizedTensor

TILE_FLOATS = 1 << 20  # matmul dequantizes rows into a float32 tile of at most 4 MB


_call_dot, _call_dequant = pointer_call(DOT_SIG), pointer_call(DEQUANT_SIG)
_call_dot16, _call_unpack16, _call_4x2 = pointer_call(DOT16_SIG), pointer_call(UNPACK16_SIG), pointer_call(W4X2_SIG)
_call_dot32, _call_dots16, _call_mins = pointer_call(DOT32_SIG), pointer_call(DOT16T_SIG), pointer_call(MINS_SIG)


@njit_parallel(types.void(KERNEL, ROWS, VEC, OUT))
def _dot_rows(dot_row, rows, x, out):
    for r in prange(rows.shape[0]):
        out[r] = _call_dot(dot_row, (rows[r], x))


@njit_parallel(types.void(KERNEL, ROWS, IDS, OUT2))
def _dequantize_rows(dequantize_row, rows, ids, out):
    for i in prange(ids.size):
        _call_dequant(dequantize_row, (rows[ids[i]], out[i]))


@njit(types.void(KERNEL, ROWS, IDS, OUT2))
def _dequantize_rows_serial(dequantize_row, rows, ids, out):
    for i in range(ids.size):
        _call_dequant(dequantize_row, (rows[ids[i]], out[i]))


@njit_parallel(types.void(KERNEL, ROWS, *DOT16_SIG.args[1:], OUT))
def _dot16_rows(dot, rows, xd, q16, qp, hi, lo, bsums, out):
    for r in prange(rows.shape[0]):
        out[r] = _call_dot16(dot, (rows[r], xd, q16, qp, hi, lo, bsums))


@njit_parallel(types.void(KERNEL, ROWS, *DOT32_SIG.args[1:], OUT))
def _dot32_rows(dot, rows, xd, q16, s32, out):
    for r in prange(rows.shape[0]):
        out[r] = _call_dot32(dot, (rows[r], xd, q16, s32))


def _stacked(sig):   # a decode kernel's activation argument types with a leading token axis
    return [types.Array(a.dtype, 2, "C", readonly=True) for a in sig.args[1:]]


@njit_parallel(types.void(KERNEL, ROWS, *_stacked(DOT16_SIG), OUT2))
def _dot16_tokens(dot, rows, xd, q16, qp, hi, lo, bsums, out):
    """_dot16_rows for a few tokens in one launch (their activations stacked, out (T, N)): a row comes from
    memory for the first token and from cache for the next."""
    for r in prange(rows.shape[0]):
        for t in range(out.shape[0]):
            out[t, r] = _call_dot16(dot, (rows[r], xd[t], q16[t], qp[t], hi[t], lo[t], bsums[t]))


@njit_parallel(types.void(KERNEL, ROWS, *_stacked(DOT16_SIG), OUT2))
def _dots16_tokens(dots, rows, xd, q16, qp, hi, lo, bsums, out):
    """_dot16_tokens with a kernel that takes all the tokens at once (jit.DOT16T_SIG)."""
    for r in prange(rows.shape[0]):
        _call_dots16(dots, (rows[r], xd, q16, qp, hi, lo, bsums, out, r))


@njit_parallel(types.void(KERNEL, ROWS, *_stacked(DOT32_SIG), OUT2))
def _dot32_tokens(dot, rows, xd, q16, s32, out):
    """_dot32_rows for a few tokens in one launch, as _dot16_tokens."""
    for r in prange(rows.shape[0]):
        for t in range(out.shape[0]):
            out[t, r] = _call_dot32(dot, (rows[r], xd[t], q16[t], s32[t]))


# matvecs: the rows of up to three matrices (each with its kernel and output) against one x, in one loop
@njit_parallel(types.void(*(KERNEL, ROWS, OUT) * 3, *DOT16_SIG.args[1:]))
def _dot16_rows3(k0, r0, o0, k1, r1, o1, k2, r2, o2, xd, q16, qp, hi, lo, bsums):
    n0, n1 = r0.shape[0], r1.shape[0]
    for i in prange(n0 + n1 + r2.shape[0]):
        if i < n0:
            o0[i] = _call_dot16(k0, (r0[i], xd, q16, qp, hi, lo, bsums))
        elif i < n0 + n1:
            o1[i - n0] = _call_dot16(k1, (r1[i - n0], xd, q16, qp, hi, lo, bsums))
        else:
            o2[i - n0 - n1] = _call_dot16(k2, (r2[i - n0 - n1], xd, q16, qp, hi, lo, bsums))


@njit_parallel(types.void(*(KERNEL, ROWS, OUT) * 3, *DOT32_SIG.args[1:]))
def _dot32_rows3(k0, r0, o0, k1, r1, o1, k2, r2, o2, xd, q16, s32):
    n0, n1 = r0.shape[0], r1.shape[0]
    for i in prange(n0 + n1 + r2.shape[0]):
        if i < n0:
            o0[i] = _call_dot32(k0, (r0[i], xd, q16, s32))
        elif i < n0 + n1:
            o1[i - n0] = _call_dot32(k1, (r1[i - n0], xd, q16, s32))
        else:
            o2[i - n0 - n1] = _call_dot32(k2, (r2[i - n0 - n1], xd, q16, s32))


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
    with the tokens two at a time. A (row, token) sums its segments' results in float64, in order.
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


# Decode path of types with integer kernels (intdot.py): "avx512", "avx2" or "portable", chosen once here
# from the CPU's features; tests switch it to check that all paths agree. Q8_0's per-256 kernel has no AVX-512
# version: AVX-512 CPUs run its AVX2 one.
INT_PATH = "avx512" if HAS_AVX512 else "avx2" if HAS_AVX2 else "portable"
# Integer kernels where the CPU has AVX2; elsewhere the float32 kernels and BLAS (what exact=True takes). The
# portable integer loops exist to check the SIMD ones bit for bit: they do not vectorize, and ran 4-15x
# slower than the float32 kernels in decode and ~30x slower than dequantize + sgemm in prefill (Zen 5, one
# thread, forced), which LLVM and BLAS vectorize on any CPU.
INTEGER = HAS_AVX2
_DECODE = {T.Q4_K: {"portable": intdot.dot_q4_k, "avx2": intdot.dot_q4_k_avx2, "avx512": intdot.dot_q4_k_avx512},
           T.Q5_K: {"portable": intdot.dot_q5_k, "avx2": intdot.dot_q5_k_avx2, "avx512": intdot.dot_q5_k_avx512},
           T.Q6_K: {"portable": intdot.dot_q6_k, "avx2": intdot.dot_q6_k_avx2, "avx512": intdot.dot_q6_k_avx512},
           T.Q8_0: {"portable": intdot.dot_q8_0, "avx2": intdot.dot_q8_0_avx2, "avx512": intdot.dot_q8_0_avx2}}
# ... and for several tokens at once (_tokens_matmul), where a type has such kernels (the others loop over
# the tokens in _dot16_tokens)
_DECODE_TOKENS = {T.Q4_K: {"portable": intdot.dots_q4_k, "avx2": intdot.dots_q4_k_avx2, "avx512": intdot.dots_q4_k_avx512},
                  T.Q5_K: {"portable": intdot.dots_q5_k, "avx2": intdot.dots_q5_k_avx2, "avx512": intdot.dots_q5_k_avx512}}
# Types with blocks of 32, any K (activations quantized per 32; Q8_0 takes _DECODE where K % 256 == 0)
_DECODE32 = {T.Q4_0: {"portable": intdot.dot32_q4_0, "avx2": intdot.dot32_q4_0_avx2, "avx512": intdot.dot32_q4_0_avx512},
             T.Q4_1: {"portable": intdot.dot32_q4_1, "avx2": intdot.dot32_q4_1_avx2, "avx512": intdot.dot32_q4_1_avx512},
             T.Q8_0: {"portable": intdot.dot32_q8_0, "avx2": intdot.dot32_q8_0_avx2, "avx512": intdot.dot32_q8_0_avx512}}
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
def _int_kernel(ggml_type: int, path: str):
    return kernel_address(_DECODE[ggml_type][path], DOT16_SIG)


@cache
def _tokens_kernel(ggml_type: int, path: str):
    return kernel_address(_DECODE_TOKENS[ggml_type][path], DOT16T_SIG)


@cache
def _int_kernel32(ggml_type: int, path: str):
    return kernel_address(_DECODE32[ggml_type][path], DOT32_SIG)


# Integer decode by activation block (_int_scheme): kernel address, drivers for one and three matrices and for
# a few tokens, quantizer
_SCHEMES = {256: (_int_kernel, _dot16_rows, _dot16_rows3, _dot16_tokens, quantize_activations),
            32: (_int_kernel32, _dot32_rows, _dot32_rows3, _dot32_tokens, quantize_activations32)}


@cache
def _prefill_kernels(ggml_type: int, path: str, scheme: tuple):
    """(unpack, four-by-two kernel, mins kernel or 0) addresses for the layout scheme: Q4_K and Q5_K take the
    mins kernel after the four-by-two one; Q4_1 and Q5_1 the four-by-two kernel with their offsets in it."""
    if ggml_type in _UNPACK:
        g = scheme[0]
        unpack, dot4x2, mins = _UNPACK[ggml_type][g], _W4X2[g][path], (None if ggml_type == T.Q6_K else _MINS[path])
    else:
        unpack, dot4x2, mins = _UNPACK32[ggml_type], (_W32 if ggml_type in (T.Q4_1, T.Q5_1) else _W32_NOMINS)[path], None
    return (kernel_address(unpack, UNPACK16_SIG), kernel_address(dot4x2, W4X2_SIG),
            0 if mins is None else kernel_address(mins, MINS_SIG))


def _prefill_scheme(w: QuantizedTensor, exact: bool, n_tokens: int) -> tuple | None:
    """Integer prefill's layout for w and n_tokens tokens (a _PREFILL key: (g, qmax) for the K-quants, g blocks
    interleaved, the most its type allows where K is a multiple of 256 g, from GROUP_TOKENS tokens on, and the
    activations' range (Q6_K's groups of four take 14-bit activations); B32 for sixteen interleaved blocks of
    32), None where it dequantizes for BLAS."""
    if exact:
        return None
    if w.ggml_type in _UNPACK:
        g = max(g for g in _UNPACK[w.ggml_type] if w.shape[1] % (256 * g) == 0 and (g == 1 or n_tokens >= GROUP_TOKENS))
        return (g, QMAX14 if w.ggml_type == T.Q6_K and g > 1 else QMAX)
    return B32 if w.ggml_type in _UNPACK32 else None


# Below this many tokens a group of one block: its unpack is cheaper (Q4_K 5.3 against 6.8 ns a block), more than
# the four-block kernel saves (14336 x 4096 Q4_K, 2 threads: T=6 2.36 against 2.51 ms, T=8 2.85 against 2.78)
GROUP_TOKENS = 8


@cache
def _kernels(ggml_type: int):
    """(dot_row, dequantize_row) of a type, compiled (or loaded from the cache) on first use."""
    fmt = FORMATS[ggml_type]
    return kernel_address(fmt.dot_row, DOT_SIG), kernel_address(fmt.dequantize_row, DEQUANT_SIG)


def _matrix(w: QuantizedTensor, op: str) -> tuple[int, int]:
    if not isinstance(w, QuantizedTensor) or w.ndim != 2:
        raise ValueError(f"{op} needs a 2-D QuantizedTensor, got {w!r}")
    return w.shape


def _activations(x: np.ndarray, k: int, ndim: int, op: str) -> np.ndarray:
    if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != ndim or x.shape[-1] != k:
        got = (getattr(x, "dtype", type(x).__name__), getattr(x, "shape", None))
        raise ValueError(f"{op}: expected float32 activations with {ndim} axes and last axis {k}, "
                         f"got {got[0]} of shape {got[1]}")
    return np.ascontiguousarray(x)


def matvec(w: QuantizedTensor, x: np.ndarray, exact: bool = False) -> np.ndarray:
    """w (N, K) @ x (K,) -> float32 (N,): one fused dequantize-and-dot per row, rows in parallel.
    Q4_K, Q5_K, Q6_K and Q8_0 rows (K a multiple of 256) take integer dot products against x quantized
    to 16 bits per 256-block (relative error ~3e-5, activations.py), Q4_0, Q4_1 and other Q8_0 rows
    against x quantized per 32, unless exact (or the CPU lacks AVX2, INTEGER): then float32 weights times
    float32 x."""
    n, k = _matrix(w, "matvec")
    x = _activations(x, k, 1, "matvec")
    out = np.empty(n, np.float32)
    scheme = None if exact or not INTEGER else _int_scheme(w)
    if scheme is None:
        _dot_rows(_kernels(w.ggml_type)[0], w.data, x, out)
    else:
        kernel, rows, _, _, quantize = _SCHEMES[scheme]
        rows(kernel(w.ggml_type, INT_PATH), w.data, *quantize(x), out)
    return out


def _int_scheme(w: QuantizedTensor) -> int | None:
    """The block of activation quantization w's integer decode kernel takes (256 or 32), None for float."""
    if w.ggml_type in _DECODE and w.shape[1] % 256 == 0:
        return 256
    return 32 if w.ggml_type in _DECODE32 else None


_NO_ROWS, _NO_OUT = np.empty((0, 1), np.uint8), np.empty(0, np.float32)


def _matvec_below(w: QuantizedTensor, exact: bool) -> int:
    """Chunks of fewer tokens than this go token by token through w's decode kernel (_tokens_matmul, one launch;
    a row is read from memory for the first token, from cache for the next), where the prefill kernel first
    unpacks each row (as much work as ~3 tokens' decode). Zen 5, 2 threads: Mixtral expert ffn_gate Q4_K at
    T=2 2.45 -> 1.31 ms. Q4_K and Q5_K take all the tokens in one kernel call per row (_DECODE_TOKENS), which
    wins up to 4 tokens where their activations fit in L1 (TOKENS_L1; 14336 x 4096 Q4_K at T=4: 1.7 ms against
    the prefill kernel's 2.1). The 32-block types' prefill kernel wins from 4 tokens (SmolLM2's
    1536 x 576 Q4_1 at T=4: 0.091 against 0.105 ms, 4096 x 4096 Q8_0: 0.66 against 1.0 ms)."""
    if exact or _int_scheme(w) is None:
        return 2
    return 5 if w.ggml_type in _DECODE_TOKENS and 4 * 2 * w.shape[1] <= TOKENS_L1 else 4


TOKENS_L1 = 32 << 10   # _matvec_below: four tokens' int16 activations fit in L1 (K <= 4096); Mixtral's experts'
# ffn_down (K = 14336) at T=4 took 3.9 ms through the few-token kernel, 2.35 through the prefill kernel


def _token_activations(scheme: int, x: np.ndarray):
    """x (T, K) -> each token's activations for the decode kernels of that scheme, stacked (T, ...)."""
    return [np.stack(a) for a in zip(*(_SCHEMES[scheme][4](v) for v in x))]


def _tokens_matmul(w: QuantizedTensor, acts) -> np.ndarray:
    """matvec's integer path for each token of acts (_token_activations), in one launch: (T, N)."""
    kernel, _, _, tokens, _ = _SCHEMES[_int_scheme(w)]
    out = np.empty((acts[0].shape[0], w.shape[0]), np.float32)
    if w.ggml_type in _DECODE_TOKENS:
        _dots16_tokens(_tokens_kernel(w.ggml_type, INT_PATH), w.data, *acts, out)
    else:
        tokens(kernel(w.ggml_type, INT_PATH), w.data, *acts, out)
    return out


def matmuls(ws: list[QuantizedTensor], x: np.ndarray, exact: bool = False) -> list[np.ndarray]:
    """[matmul(w, x) for w in ws] for one to three matrices with the same K (a layer's q, k, v, or gate
    and up). For one token whose matrices share an integer scheme, in one pass: x quantized once and
    the rows of all of them in one parallel loop, one kernel launch instead of three. For a chunk of
    tokens and integer prefill matrices: x quantized once."""
    if not 1 <= len(ws) <= 3:
        raise ValueError(f"matmuls takes one to three matrices, got {len(ws)}")
    ks = {_matrix(w, "matmuls")[1] for w in ws}
    if len(ks) != 1:
        raise ValueError(f"matmuls: the matrices must share K, got {sorted(ks)}")
    x = _activations(x, ks.pop(), 2, "matmuls")
    exact = exact or not INTEGER
    if 1 < x.shape[0] < min(_matvec_below(w, exact) for w in ws):   # token by token, x quantized once per scheme
        acts = {s: _token_activations(s, x) for s in {_int_scheme(w) for w in ws}}
        return [_tokens_matmul(w, acts[_int_scheme(w)]) for w in ws]
    schemes = [_prefill_scheme(w, exact, x.shape[0]) for w in ws]
    if x.shape[0] > 1 and None not in schemes:   # integer prefill: x quantized once per layout
        acts = {s: _prefill_activations(x, s) for s in set(schemes)}
        return [_int_matmul(w, acts[s], s) for w, s in zip(ws, schemes)]
    schemes = {None if exact else _int_scheme(w) for w in ws}
    if x.shape[0] != 1 or len(ws) == 1 or schemes not in ({256}, {32}):
        return [matmul(w, x, exact) for w in ws]
    kernel, _, rows3, _, quantize = _SCHEMES[schemes.pop()]
    outs = [np.empty(w.shape[0], np.float32) for w in ws]
    triples = [(kernel(w.ggml_type, INT_PATH), w.data, out) for w, out in zip(ws, outs)]
    triples += [(triples[0][0], _NO_ROWS, _NO_OUT)] * (3 - len(ws))
    rows3(*(a for t in triples for a in t), *quantize(x[0]))
    return [out[None, :] for out in outs]


def matmul(w: QuantizedTensor, x: np.ndarray, exact: bool = False) -> np.ndarray:
    """x (T, K) @ w.T -> float32 (T, N). T == 1 is matvec; a few tokens take the decode kernels (_matvec_below).
    Q4_K, Q5_K and Q6_K rows are unpacked to int16 once per tile of tokens and meet them in integer dot
    products (_int_matmul; unless exact); Q4_0, Q4_1, Q8_0, Q5_0 and Q5_1 rows the same, sixteen blocks
    interleaved (_prefill_scheme). Other types (F32, F16, BF16), exact, or no AVX2 (INTEGER): _blas_matmul.
    (Integer prefill beat dequantize + BLAS at every T measured on Zen 5, 2 threads: Mistral pp64 16.8
    against 7.5 tok/s with AVX2 kernels, 20.5 with AVX-512; Q8_0 at T=512 287 against 115 GMAC/s.)"""
    n, k = _matrix(w, "matmul")
    x = _activations(x, k, 2, "matmul")
    exact = exact or not INTEGER
    if x.shape[0] == 1:
        return matvec(w, x[0], exact)[None, :]
    if x.shape[0] < _matvec_below(w, exact):
        return _tokens_matmul(w, _token_activations(_int_scheme(w), x))
    scheme = _prefill_scheme(w, exact, x.shape[0])
    if scheme is not None:
        return _int_matmul(w, _prefill_activations(x, scheme), scheme)
    return _blas_matmul(w, x)


@cache
def thread_pool(workers: int) -> ThreadPoolExecutor:
    """A pool of Python threads for work that releases the GIL (BLAS, nogil kernels); one per size."""
    return ThreadPoolExecutor(workers, thread_name_prefix="gguf-runner-blas")


def _blas_matmul(w: QuantizedTensor, x: np.ndarray) -> np.ndarray:
    """Rows of w go in tiles of at most N/8 rows and TILE_FLOATS weights; each of the kernels' threads takes
    every n-th tile, dequantizes it (a serial driver, no GIL) and multiplies it by x with BLAS on one thread,
    so each dequantized weight serves all T tokens. The tiles do not depend on the thread count, so neither
    do the results (sgemm's rounding depends on its shapes). Python threads rather than a parallel region
    followed by a threaded sgemm: those two thread pools took turns, each spinning while the other worked."""
    n, k = w.shape
    out = np.empty((x.shape[0], n), np.float32)
    dequantize_row = _kernels(w.ggml_type)[1]
    step = max(1, min(-(-n // 8), TILE_FLOATS // k))
    starts = range(0, n, step)
    parts = max(1, min(get_num_threads(), len(starts)))

    def share(first: int) -> None:
        tile = np.empty((step, k), np.float32)
        for r0 in starts[first::parts]:
            ids = np.arange(r0, min(n, r0 + step), dtype=np.int64)
            _dequantize_rows_serial(dequantize_row, w.data, ids, tile)
            out[:, r0:r0 + ids.size] = x @ tile[:ids.size].T

    with blas_threads(1):
        for f in [thread_pool(parts).submit(share, j) for j in range(parts)]:
            f.result()
    return out


# Integer prefill layouts (_prefill_scheme): the tokens' quantizer, and per unit of the layout its elements,
# weight scales and mins (the _w16_rows arguments)
B32 = (32, QMAX)   # the key of the 32-block types' layout
_PREFILL = {**{(g, q): (partial(quantize_prefill, g=g, qmax=q), 256 * g, 16 if g > 1 else 1, 8 * g)
               for g, q in ((1, QMAX), (2, QMAX), (4, QMAX), (4, QMAX14))},
            B32: (quantize_prefill32, 512, 16, 16)}


def _prefill_activations(x: np.ndarray, scheme: tuple):
    """(T, K) -> (T, acts) for _int_matmul: acts = the scheme's quantizer on x, with a zero token after an odd
    count (the kernels take tokens two at a time; its results are dropped)."""
    n_t = x.shape[0]
    if n_t % 2:
        x = np.concatenate([x, np.zeros((1, x.shape[1]), np.float32)])
    return n_t, _PREFILL[scheme][0](x)


def _int_matmul(w: QuantizedTensor, acts, scheme: tuple) -> np.ndarray:
    """Integer dot products, for a tile of tokens at a time (_w16_rows); K by segments of SEG_BLOCKS x 256
    weights in either layout."""
    n_t, (xd, q16, px) = acts
    _, unit, dper, mper = _PREFILL[scheme]
    unpack, dot4x2, mins = _prefill_kernels(w.ggml_type, INT_PATH, scheme)
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


def get_rows(w: QuantizedTensor, ids) -> np.ndarray:
    """Dequantize rows ids of w (N, K) -> float32 (len(ids), K); other rows are not read."""
    n, k = _matrix(w, "get_rows")
    ids = np.asarray(ids)
    if ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
        raise ValueError(f"get_rows: ids must be a 1-D integer array, got {ids.dtype} {ids.shape}")
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= n):
        raise IndexError(f"get_rows: ids must be in [0, {n}) for tensor {w.name!r}")
    out = np.empty((ids.size, k), np.float32)
    _dequantize_rows(_kernels(w.ggml_type)[1], w.data, ids, out)
    return out


def dequantize(w: QuantizedTensor) -> np.ndarray:
    """The whole tensor as float32 of shape w.shape."""
    if not isinstance(w, QuantizedTensor):
        raise ValueError(f"dequantize needs a QuantizedTensor, got {type(w).__name__}")
    rows = w.data.reshape(-1, w.data.shape[-1])
    out = np.empty((rows.shape[0], w.shape[-1]), np.float32)
    _dequantize_rows(_kernels(w.ggml_type)[1], rows, np.arange(rows.shape[0], dtype=np.int64), out)
    return out.reshape(w.shape)
