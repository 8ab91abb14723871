"""Public ops on QuantizedTensor: matvec (decode), matmul (prefill: the integer path in prefill.py), get_rows,
dequantize.

Each format module provides two row kernels (jit.DOT_SIG, jit.DEQUANT_SIG); the parallel drivers below
take their addresses (jit.kernel_address, called through jit.pointer_call), so each driver is compiled
once for all types and everything stays in Numba's on-disk cache. Each output row is computed by one thread in a fixed
order, so results do not depend on the thread count.
"""
from concurrent.futures import ThreadPoolExecutor
from functools import cache

import numpy as np
from numba import get_num_threads, prange, types

from gguf import GGMLQuantizationType as T

from . import intdot
from .activations import quantize_activations, quantize_activations32
from .formats import FORMATS
from .jit import (DEQUANT_SIG, DOT16_SIG, DOT16T_SIG, DOT32_SIG, DOT_SIG, IDS, KERNEL, OUT, OUT2, ROWS, VEC, blas_threads,
                  kernel_address, njit, njit_parallel, pointer_call)
from .prefill import _int_matmul, _prefill_activations, _prefill_scheme
from .simd import HAS_AVX2, HAS_AVX512
from .tensor import QuantizedTensor

TILE_FLOATS = 1 << 20  # matmul dequantizes rows into a float32 tile of at most 4 MB


_call_dot, _call_dequant = pointer_call(DOT_SIG), pointer_call(DEQUANT_SIG)
_call_dot16, _call_dot32, _call_dots16 = pointer_call(DOT16_SIG), pointer_call(DOT32_SIG), pointer_call(DOT16T_SIG)


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
    schemes = [_prefill_scheme(w, exact, x.shape[0], INT_PATH) for w in ws]
    if x.shape[0] > 1 and None not in schemes:   # integer prefill: x quantized once per layout
        acts = {s: _prefill_activations(x, s) for s in set(schemes)}
        return [_int_matmul(w, acts[s], s, INT_PATH) for w, s in zip(ws, schemes)]
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
    scheme = _prefill_scheme(w, exact, x.shape[0], INT_PATH)
    if scheme is not None:
        return _int_matmul(w, _prefill_activations(x, scheme), scheme, INT_PATH)
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
