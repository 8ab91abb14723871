"""Public ops on QuantizedTensor: matvec (decode), matmul (prefill), get_rows, dequantize.

Each format module provides two row kernels (jit.DOT_SIG, jit.DEQUANT_SIG); the two parallel drivers
below take them as first-class function arguments, so each driver is compiled once for all types
and everything stays in Numba's on-disk cache. Each output row is computed by one thread in a fixed
order, so results do not depend on the thread count.
"""
from functools import cache

import numpy as np
from numba import prange, types

from .formats import FORMATS
from .jit import DEQUANT_SIG, DOT_SIG, IDS, OUT, OUT2, ROWS, VEC, FirstClass, njit_parallel
from .tensor import QuantizedTensor

TILE_FLOATS = 1 << 20  # matmul dequantizes rows into a float32 tile of at most 4 MB


@njit_parallel(types.void(types.FunctionType(DOT_SIG), ROWS, VEC, OUT))
def _dot_rows(dot_row, rows, x, out):
    for r in prange(rows.shape[0]):
        out[r] = dot_row(rows[r], x)


@njit_parallel(types.void(types.FunctionType(DEQUANT_SIG), ROWS, IDS, OUT2))
def _dequantize_rows(dequantize_row, rows, ids, out):
    for i in prange(ids.size):
        dequantize_row(rows[ids[i]], out[i])


@cache
def _kernels(ggml_type: int):
    """(dot_row, dequantize_row) of a type, compiled (or loaded from the cache) on first use."""
    fmt = FORMATS[ggml_type]
    return FirstClass(fmt.dot_row, DOT_SIG), FirstClass(fmt.dequantize_row, DEQUANT_SIG)


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


def matvec(w: QuantizedTensor, x: np.ndarray) -> np.ndarray:
    """w (N, K) @ x (K,) -> float32 (N,): one fused dequantize-and-dot per row, rows in parallel."""
    n, k = _matrix(w, "matvec")
    x = _activations(x, k, 1, "matvec")
    out = np.empty(n, np.float32)
    _dot_rows(_kernels(w.ggml_type)[0], w.data, x, out)
    return out


def matmul(w: QuantizedTensor, x: np.ndarray) -> np.ndarray:
    """x (T, K) @ w.T -> float32 (T, N). Rows of w are dequantized a tile at a time (in parallel)
    and multiplied by BLAS, so each dequantized weight serves all T tokens."""
    n, k = _matrix(w, "matmul")
    x = _activations(x, k, 2, "matmul")
    if x.shape[0] == 1:
        return matvec(w, x[0])[None, :]
    dequantize_row = _kernels(w.ggml_type)[1]
    out = np.empty((x.shape[0], n), np.float32)
    step = max(1, min(n, TILE_FLOATS // max(k, 1)))
    tile = np.empty((step, k), np.float32)
    for r0 in range(0, n, step):
        ids = np.arange(r0, min(n, r0 + step), dtype=np.int64)
        _dequantize_rows(dequantize_row, w.data, ids, tile)
        out[:, r0:r0 + ids.size] = x @ tile[:ids.size].T
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
