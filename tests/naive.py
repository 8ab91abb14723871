"""The exact reference: weights dequantized bit-exactly by gguf-py (not our code), a float64 numpy
forward over the whole sequence written from the papers' equations, independent of gguf_runner.
It is itself checked against HF transformers on F32 weights (test_fidelity.py)."""
from __future__ import annotations

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


class Exact:
    def __init__(self, path, window: int | None = None):
        r = GGUFReader(str(path))
        md = {k: f.contents() for k, f in r.fields.items() if not k.startswith("tokenizer.")}
        a = md["general.architecture"]
        self.dim, self.n_layers = md[f"{a}.embedding_length"], md[f"{a}.block_count"]
        self.n_heads = md[f"{a}.attention.head_count"]
        self.n_kv = md.get(f"{a}.attention.head_count_kv", self.n_heads)
        self.head_dim = md.get(f"{a}.attention.key_length", self.dim // self.n_heads)
        self.eps = md[f"{a}.attention.layer_norm_rms_epsilon"]
        self.theta = md.get(f"{a}.rope.freq_base", 10000.0)
        self.n_used = md.get(f"{a}.expert_used_count", 0)
        self.window = window
        self.W = {t.name: dequantize(t.data, t.tensor_type).astype(np.float64).reshape(
            [int(n) for n in reversed(t.shape)]) for t in r.tensors}

    def rope(self, x, pos):                       # x (T, heads, Dh): adjacent pairs as complex numbers
        d = x.shape[-1]
        freq = self.theta ** (-np.arange(0, d, 2) / d)
        z = (x[..., 0::2] + 1j * x[..., 1::2]) * np.exp(1j * pos[:, None, None] * freq)
        out = np.empty_like(x)
        out[..., 0::2], out[..., 1::2] = z.real, z.imag
        return out

    def norm(self, x, name):
        return x / np.sqrt((x ** 2).mean(-1, keepdims=True) + self.eps) * self.W[name]

    def ffn(self, h, gate, up, down):
        g = h @ gate.T
        return (g / (1 + np.exp(-g)) * (h @ up.T)) @ down.T

    def expert(self, i, kind, e):
        merged = self.W.get(f"blk.{i}.ffn_{kind}_exps.weight")
        return merged[e] if merged is not None else self.W[f"blk.{i}.ffn_{kind}.{e}.weight"]

    def logits(self, ids) -> np.ndarray:
        W, T, Dh = self.W, len(ids), self.head_dim
        pos = np.arange(T)
        x = W["token_embd.weight"][np.asarray(ids)]
        allowed = pos[None, :] <= pos[:, None]
        if self.window:
            allowed &= pos[None, :] > pos[:, None] - self.window
        for i in range(self.n_layers):
            p = f"blk.{i}."
            h = self.norm(x, p + "attn_norm.weight")
            q = self.rope((h @ W[p + "attn_q.weight"].T).reshape(T, self.n_heads, Dh), pos)
            k = self.rope((h @ W[p + "attn_k.weight"].T).reshape(T, self.n_kv, Dh), pos)
            v = (h @ W[p + "attn_v.weight"].T).reshape(T, self.n_kv, Dh)
            rep = self.n_heads // self.n_kv
            k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)   # head j reads kv head j // rep
            s = np.einsum("thd,shd->hts", q, k) / np.sqrt(Dh)
            s = np.where(allowed, s, -np.inf)
            pr = np.exp(s - s.max(-1, keepdims=True))
            pr /= pr.sum(-1, keepdims=True)
            att = np.einsum("hts,shd->thd", pr, v).reshape(T, -1)
            x = x + att @ W[p + "attn_output.weight"].T
            h = self.norm(x, p + "ffn_norm.weight")
            if self.n_used == 0:
                x = x + self.ffn(h, W[p + "ffn_gate.weight"], W[p + "ffn_up.weight"], W[p + "ffn_down.weight"])
                continue
            router = h @ W[p + "ffn_gate_inp.weight"].T                   # softmax, top-k, renormalise
            prob = np.exp(router - router.max(-1, keepdims=True))
            prob /= prob.sum(-1, keepdims=True)
            for t in range(T):
                top = np.argsort(-prob[t], kind="stable")[: self.n_used]
                wts = prob[t, top] / prob[t, top].sum()
                x[t] += sum(wt * self.ffn(h[t:t + 1], self.expert(i, "gate", e), self.expert(i, "up", e),
                                         self.expert(i, "down", e))[0] for wt, e in zip(wts, top))
        out = W.get("output.weight", W["token_embd.weight"])
        return self.norm(x, "output_norm.weight") @ out.T


def rel_rmse(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per position: RMSE(a - b) / std(b), over the vocabulary axis."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.sqrt(((a - b) ** 2).mean(-1)) / b.std(-1)


def argmax_agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((np.argmax(a, -1) == np.argmax(b, -1)).mean())
