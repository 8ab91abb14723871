"""KV cache: one rolling buffer per layer, addressed by absolute position.

Slot of position p is p % capacity. Without a sliding window capacity = n_ctx and nothing wraps.
With a window W the query at i sees keys i - W < j <= i, so a chunk of T tokens starting at p needs
keys p - W + 1 .. p + T - 1: capacity W - 1 + max_chunk holds exactly that, never more than W plus
one chunk. Attention masks by the stored positions, so slot order never matters.
"""
from __future__ import annotations

import numpy as np

EMPTY = np.iinfo(np.int64).min // 2   # position of a never-written slot: masked by every rule below


class ContextFullError(ValueError):
    """More tokens than n_ctx."""


def capacity(n_ctx: int, window: int | None, max_chunk: int) -> int:
    return n_ctx if window is None else min(n_ctx, window - 1 + max_chunk)


class LayerCache:
    def __init__(self, n_kv_heads: int, head_dim: int, capacity: int):
        # np.zeros is lazily committed by the OS: untouched slots cost no resident memory.
        self.k = np.zeros((n_kv_heads, capacity, head_dim), np.float32)   # (G, S, Dh)
        self.v = np.zeros((n_kv_heads, capacity, head_dim), np.float32)
        self.pos = np.full(capacity, EMPTY, np.int64)                      # (S,)
        self.filled = 0                                                    # slots ever written

    def update_and_fetch(self, k: np.ndarray, v: np.ndarray, pos: np.ndarray):
        """k, v: (T, G, Dh) at absolute positions pos (T,). Returns the whole buffers K, V (G, capacity, Dh),
        C-contiguous, of which the first S slots are in use, and those slots' positions (S,)."""
        cap = self.pos.shape[0]
        slots = pos % cap
        self.k[:, slots] = k.transpose(1, 0, 2)
        self.v[:, slots] = v.transpose(1, 0, 2)
        self.pos[slots] = pos
        self.filled = min(cap, max(self.filled, int(pos[-1]) + 1))
        n = self.filled
        return self.k, self.v, self.pos[:n]


class KVCache:
    """Per-layer rolling buffers plus `offset`, the number of positions consumed so far."""

    def __init__(self, n_layers: int, n_kv_heads: int, head_dim: int, n_ctx: int,
                 window: int | None, max_chunk: int):
        self.n_ctx, self.window = n_ctx, window
        self.capacity = capacity(n_ctx, window, max_chunk)
        self.layers = [LayerCache(n_kv_heads, head_dim, self.capacity) for _ in range(n_layers)]
        self.offset = 0

    @staticmethod
    def planned_bytes(args, n_ctx: int, max_chunk: int) -> int:
        """Bytes of K and V when full (float32)."""
        cap = capacity(n_ctx, args.sliding_window, max_chunk)
        return 2 * 4 * args.n_layers * args.n_kv_heads * args.head_dim * cap

    def positions(self, n_tokens: int) -> np.ndarray:
        """Claim the next n_tokens positions (call once per forward chunk)."""
        if self.offset + n_tokens > self.n_ctx:
            raise ContextFullError(f"context full: {self.offset} + {n_tokens} tokens > n_ctx {self.n_ctx}")
        pos = np.arange(self.offset, self.offset + n_tokens, dtype=np.int64)
        self.offset += n_tokens
        return pos

    def truncate(self, n: int) -> bool:
        """Forget positions >= n, if every key position n will attend to is still stored."""
        first_needed = 0 if self.window is None else max(0, n - self.window + 1)
        first_stored = max(0, self.offset - self.capacity)
        if n > self.offset or (n > 0 and first_stored > first_needed):
            return False
        for c in self.layers:
            c.pos[c.pos >= n] = EMPTY
        self.offset = n
        return True

    def nbytes(self) -> int:
        return sum(c.k.nbytes + c.v.nbytes for c in self.layers)


def attention_mask(qpos: np.ndarray, kpos: np.ndarray, window: int | None) -> np.ndarray:
    """(T, S) bool: causal, inside the window (HF Mistral: i - W < j <= i), slot written."""
    q, k = qpos[:, None], kpos[None, :]
    mask = (k <= q) & (k >= 0)
    if window is not None:
        mask &= k > q - window
    return mask
