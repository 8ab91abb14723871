"""Attention of a chunk of queries over the cached keys: softmax(q k^T / sqrt(Dh), masked) v.

A chunk of BLOCKS_FROM tokens or more (prefill) goes in tasks of QUERY_BLOCK tokens of one kv head, spread
over the threads: each task takes the scores q k^T with BLAS (sgemm; BLAS runs on one thread in a forward pass,
quant.blas_threads) over only the keys some query of its block may see, one Numba pass of masked softmax
in place (_softmax_rows), then probs v with BLAS. Fewer tokens (decode, short chunks) go through one
Numba kernel (_attend_rows): scores, softmax and the weighted sum per query row, rows in parallel; a task
per kv head would cost more to dispatch than its work, and a row's result does not depend on the chunk it
came in (sgemm's does, by ~1e-7, which the next layer's 16-bit activations can turn into a rounding step):
a short prompt gives the same logits whether its prefix was cached or not.
Why BLAS for prefill: the row kernel's per-key dot products (a horizontal sum each) ran at ~30 GMAC/s,
the two sgemm at ~110 on 2 threads (Zen 5, Mistral shapes, 512 tokens: 34 -> 15 ms a layer).
Results do not depend on the thread count: each task's work is the same whichever thread takes it.
"""
import numpy as np
from numba import get_num_threads, prange

from quant.jit import FASTMATH, exp_le0, njit, njit_parallel
from quant.kernels import thread_pool

QUERY_BLOCK = 64   # query tokens per prefill task
BLOCKS_FROM = 16   # chunks of fewer tokens take the row kernel


@njit(nogil=True, fastmath=FASTMATH)
def _softmax_rows(s, allowed, r, scale):
    """s (M, n) scores in place -> probabilities of softmax(s * scale) over the keys row i may see,
    allowed[i // r] (n,) bool; the others get 0 (and so does a row that sees none)."""
    for i in range(s.shape[0]):
        row, seen = s[i], allowed[i // r]
        top = np.float32(-np.inf)
        for j in range(row.size):
            if seen[j]:
                top = max(top, row[j])
        total = np.float32(0)
        for j in range(row.size):
            e = exp_le0((row[j] - top) * scale)
            row[j] = e if seen[j] else np.float32(0)
            total += row[j]
        inv = np.float32(1) / total if total > 0 else np.float32(0)
        for j in range(row.size):
            row[j] *= inv


def _attend_block(q, k, v, mask, r, scale, out, g, t0, t1):
    """Query tokens t0..t1 of kv head g: rows t0 r .. t1 r of q and out."""
    allowed = mask[t0:t1]
    seen = np.flatnonzero(allowed.any(axis=0))
    rows = slice(t0 * r, t1 * r)
    if seen.size == 0:
        out[g, rows] = 0
        return
    lo, hi = seen[0], seen[-1] + 1
    s = q[g, rows] @ k[g, lo:hi].T                                                  # (rows, hi - lo)
    _softmax_rows(s, np.ascontiguousarray(allowed[:, lo:hi]), r, scale)
    np.matmul(s, v[g, lo:hi], out=out[g, rows])


@njit_parallel(fastmath=FASTMATH)
def _attend_rows(q, k, v, mask, r, scale, out):
    """q (G, M, Dh), k and v (G, >= S, Dh), mask (M // r, S), out (G, M, Dh): row i of head g reads mask row
    i // r. Masked keys are skipped, not computed; each row's sums run in a fixed order."""
    n_g, m, dh = q.shape
    s_len = mask.shape[1]
    for gi in prange(n_g * m):
        g, i = gi // m, gi % m
        allowed = mask[i // r]
        p = np.zeros(s_len, np.float32)
        top = np.float32(-np.inf)
        for j in range(s_len):
            if allowed[j]:
                acc = np.float32(0)
                for d in range(dh):
                    acc += q[g, i, d] * k[g, j, d]
                p[j] = acc * scale
                top = max(top, p[j])
        total = np.float32(0)
        for j in range(s_len):
            if allowed[j]:
                p[j] = np.exp(p[j] - top)
                total += p[j]
        o = out[g, i]
        o[:] = 0
        for j in range(s_len):
            if allowed[j]:
                w = p[j] / total
                for d in range(dh):
                    o[d] += w * v[g, j, d]


def attend(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray, r: int) -> np.ndarray:
    """q (G, T*r, Dh) grouped by kv head, k and v (G, >= S, Dh) C-contiguous (a cache's whole buffers: the
    kernel's inner loops then vectorize), mask (T, S) bool over their first S slots -> (G, T*r, Dh):
    softmax(q k^T / sqrt(Dh), masked) v."""
    if not (k.flags.c_contiguous and v.flags.c_contiguous and k.shape[1] >= mask.shape[1]):
        raise ValueError("attend: k and v must be C-contiguous with at least as many slots as the mask")
    q, mask = np.ascontiguousarray(q), np.ascontiguousarray(mask)
    out = np.empty(q.shape, np.float32)
    n_t, scale = mask.shape[0], np.float32(q.shape[-1] ** -0.5)
    if n_t < BLOCKS_FROM:
        _attend_rows(q, k, v, mask, r, scale, out)
        return out
    s = mask.shape[1]
    k, v = k[:, :s], v[:, :s]
    tasks = [(g, t0, min(n_t, t0 + QUERY_BLOCK)) for g in range(q.shape[0]) for t0 in range(0, n_t, QUERY_BLOCK)]
    run = lambda task: _attend_block(q, k, v, mask, r, scale, out, *task)  # noqa: E731
    threads = min(get_num_threads(), len(tasks))
    for _ in thread_pool(threads).map(run, tasks) if threads > 1 else map(run, tasks):
        pass
    return out
