"""The Mistral / Mixtral / Llama 2 forward pass on CPU, one chunk of tokens at a time.

Axes: T tokens in the chunk, D model dim, H query heads, G kv heads, r = H // G, Dh head dim,
S cached keys, F ffn hidden, V vocab, E experts, k experts used per token.
The model never sees quantization: it calls matmul(w, x) on whatever type w is.
"""
from __future__ import annotations

import numpy as np
from numba import prange

from quant import get_rows, matmul, matmuls
from quant.jit import FASTMATH, exp_le0, njit, njit_parallel

from .args import ModelArgs
from .attention import attend
from .cache import KVCache, attention_mask
from .weights import Weights


@njit(nogil=True, fastmath=FASTMATH)
def _rms_norm(x, w, eps, out):
    """out = x / sqrt(mean(x^2) + eps) * w per row, the mean in float64: one call where numpy's five
    passes cost ~20 us a norm at one token, 12% of SmolLM2's decode."""
    for t in range(x.shape[0]):
        ss = 0.0
        for i in range(x.shape[1]):
            ss += np.float64(x[t, i]) * np.float64(x[t, i])
        inv = np.float32(1.0 / np.sqrt(ss / x.shape[1] + eps))
        for i in range(x.shape[1]):
            out[t, i] = x[t, i] * inv * w[i]


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:   # (T, D) * (D,)
    out = np.empty(x.shape, np.float32)
    _rms_norm(np.ascontiguousarray(x, np.float32), np.ascontiguousarray(w, np.float32), float(eps), out)
    return out


@njit_parallel(fastmath=FASTMATH)
def _silu_mul(g, u, out):
    """out = silu(g) * u, (T, F) each, in one pass on the threads (numpy's five passes on one thread took
    0.5 s of a Mistral pp512). sigmoid(x) = 1 / (1 + e) for x >= 0, else e / (1 + e), with e = exp(-|x|)."""
    for t in prange(g.shape[0]):
        for i in range(g.shape[1]):
            x = g[t, i]
            e = exp_le0(-abs(x))
            out[t, i] = x * ((np.float32(1) if x >= 0 else e) / (np.float32(1) + e)) * u[t, i]


def silu_mul(g: np.ndarray, u: np.ndarray) -> np.ndarray:   # (T, F), (T, F) -> (T, F)
    out = np.empty(g.shape, np.float32)
    _silu_mul(np.ascontiguousarray(g, np.float32), np.ascontiguousarray(u, np.float32), out)
    return out


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@njit(nogil=True)
def _rope(x, cos, sin, out):
    """numpy's a cos - b sin, a sin + b cos, in one call (two per layer cost 12 us at one token)."""
    for t in range(x.shape[0]):
        for h in range(x.shape[1]):
            for i in range(cos.shape[-1]):
                a, b, c, s = x[t, h, 2 * i], x[t, h, 2 * i + 1], cos[t, 0, i], sin[t, 0, i]
                out[t, h, 2 * i] = a * c - b * s
                out[t, h, 2 * i + 1] = a * s + b * c


def rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """x (T, heads, Dh); rotates ADJACENT pairs (x[2i], x[2i+1]) of the first rope_dim dims, as the
    GGUF converter's Q/K row permutation expects. cos, sin: (T, 1, rope_dim // 2)."""
    out = x.copy()
    _rope(x, np.ascontiguousarray(cos, np.float32), np.ascontiguousarray(sin, np.float32), out)
    return out


class Transformer:
    def __init__(self, args: ModelArgs, weights: Weights):
        self.args, self.w = args, weights
        half = np.arange(0, args.rope_dim, 2, dtype=np.float64) / args.rope_dim
        self.inv_freq = args.rope_theta ** -half                                    # (rope_dim/2,)
        self.feed_forward = self.dense if args.moe is None else self.moe             # chosen once
        if args.moe:
            E = args.moe.n_experts
            self.experts = [{kind: weights.experts(i, kind, E) for kind in ("gate", "up", "down")}
                            for i in range(args.n_layers)]

    def forward(self, ids: np.ndarray, cache: KVCache, all_logits: bool = True) -> np.ndarray:
        """ids (T,) at the cache's next positions -> logits (T, V), or (1, V) for the last token only."""
        a, w = self.args, self.w
        pos = cache.positions(len(ids))
        ang = (pos / a.rope_scale)[:, None] * self.inv_freq                        # (T, rope_dim/2)
        rot = (np.cos(ang).astype(np.float32)[:, None], np.sin(ang).astype(np.float32)[:, None])
        x = get_rows(w["token_embd.weight"], ids)                                   # (T, D)
        for i, layer_cache in enumerate(cache.layers):
            h = rms_norm(x, w.vector(f"blk.{i}.attn_norm.weight"), a.norm_eps)
            x = x + self.attention(i, h, pos, rot, layer_cache)
            h = rms_norm(x, w.vector(f"blk.{i}.ffn_norm.weight"), a.norm_eps)
            x = x + self.feed_forward(i, h)
        x = x if all_logits else x[-1:]
        return matmul(w.output, rms_norm(x, w.vector("output_norm.weight"), a.norm_eps))

    def attention(self, i: int, h: np.ndarray, pos: np.ndarray, rot, layer_cache) -> np.ndarray:
        a, w, T = self.args, self.w, h.shape[0]
        G, r, Dh = a.n_kv_heads, a.n_heads // a.n_kv_heads, a.head_dim
        q, k, v = matmuls([w[f"blk.{i}.attn_{n}.weight"] for n in "qkv"], h)
        q, k, v = rope(q.reshape(T, a.n_heads, Dh), *rot), rope(k.reshape(T, G, Dh), *rot), v.reshape(T, G, Dh)
        K, V, kpos = layer_cache.update_and_fetch(k, v, pos)                        # (G, >= S, Dh), (S,)
        # Query head g*r + j reads kv head g: group the queries by kv head -> (G, T*r, Dh).
        qg = q.reshape(T, G, r, Dh).transpose(1, 0, 2, 3).reshape(G, T * r, Dh)
        out = attend(qg, K, V, attention_mask(pos, kpos, a.sliding_window), r)      # (G, T*r, Dh)
        out = out.reshape(G, T, r, Dh).transpose(1, 0, 2, 3).reshape(T, a.n_heads * Dh)
        return matmul(w[f"blk.{i}.attn_output.weight"], out)

    def swiglu(self, gate, up, down, h: np.ndarray) -> np.ndarray:                  # (T, D) -> (T, D)
        g, u = matmuls([gate, up], h)
        return matmul(down, silu_mul(g, u))

    def dense(self, i: int, h: np.ndarray) -> np.ndarray:
        w = self.w
        return self.swiglu(w[f"blk.{i}.ffn_gate.weight"], w[f"blk.{i}.ffn_up.weight"],
                           w[f"blk.{i}.ffn_down.weight"], h)

    def moe(self, i: int, h: np.ndarray) -> np.ndarray:
        """Top-k routing: softmax over the k best router logits; only the chosen experts are read."""
        k, ex = self.args.moe.n_experts_used, self.experts[i]
        logits = matmul(self.w[f"blk.{i}.ffn_gate_inp.weight"], h)                # (T, E)
        top = np.argsort(-logits, axis=-1, kind="stable")[:, :k]                   # (T, k)
        gates = softmax(np.take_along_axis(logits, top, axis=-1))                  # (T, k)
        out = np.zeros_like(h)
        for e in np.unique(top):
            rows, slot = np.nonzero(top == e)
            y = self.swiglu(ex["gate"][e], ex["up"][e], ex["down"][e], h[rows])
            out[rows] += gates[rows, slot, None] * y
        return out
