"""Weights by their GGUF names, as zero-copy QuantizedTensor views of the file's one mapping.

Nothing is read here except small 1-D norm vectors (on first use). Mixtral experts come in two
layouts: merged 3-D `blk.N.ffn_{gate,up,down}_exps.weight` (expert e = slab e) and, in files from
before April 2024, one tensor per expert `blk.N.ffn_{gate,up,down}.E.weight`.
"""
from __future__ import annotations

import numpy as np

from quant import QuantizedTensor, dequantize

from .args import ModelArgs, ModelError
from .gguf_file import GGUFFile

class Weights:
    def __init__(self, gguf: GGUFFile):
        self.file = gguf
        self._tensors: dict[str, QuantizedTensor] = {}
        self._vectors: dict[str, np.ndarray] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.file.tensors

    def __getitem__(self, name: str) -> QuantizedTensor:
        t = self._tensors.get(name)
        if t is None:
            if name not in self.file.tensors:
                raise ModelError(f"missing tensor {name}")
            info = self.file.tensors[name]
            t = self._tensors[name] = QuantizedTensor(name, info.ggml_type, info.shape, self.file.raw(name))
        return t

    def vector(self, name: str) -> np.ndarray:
        """A small 1-D tensor (a norm) as float32, dequantized once."""
        v = self._vectors.get(name)
        if v is None:
            v = self._vectors[name] = np.ascontiguousarray(dequantize(self[name]), dtype=np.float32)
        return v

    @property
    def output(self) -> QuantizedTensor:
        """The LM head; tied to the embedding when the file has no output.weight."""
        return self["output.weight" if "output.weight" in self else "token_embd.weight"]

    def experts(self, layer: int, kind: str, n_experts: int) -> list[QuantizedTensor]:
        """kind: gate | up | down -> one 2-D tensor per expert, without touching any expert's bytes."""
        merged = f"blk.{layer}.ffn_{kind}_exps.weight"
        if merged in self:
            return [self[merged][e] for e in range(n_experts)]
        return [self[f"blk.{layer}.ffn_{kind}.{e}.weight"] for e in range(n_experts)]

    def check(self, args: ModelArgs) -> None:
        """Every tensor the forward pass needs is present with the right shape; nothing unknown is there."""
        D, F, V = args.dim, args.hidden_dim, args.n_vocab
        q, kv = args.n_heads * args.head_dim, args.n_kv_heads * args.head_dim
        want = {"token_embd.weight": (V, D), "output_norm.weight": (D,)}
        if "output.weight" in self:
            want["output.weight"] = (V, D)
        for i in range(args.n_layers):
            p = f"blk.{i}."
            want.update({p + "attn_norm.weight": (D,), p + "attn_q.weight": (q, D), p + "attn_k.weight": (kv, D),
                         p + "attn_v.weight": (kv, D), p + "attn_output.weight": (D, q), p + "ffn_norm.weight": (D,)})
            if args.moe is None:
                want.update({p + "ffn_gate.weight": (F, D), p + "ffn_up.weight": (F, D), p + "ffn_down.weight": (D, F)})
                continue
            E = args.moe.n_experts
            want[p + "ffn_gate_inp.weight"] = (E, D)
            for kind, shape in (("gate", (F, D)), ("up", (F, D)), ("down", (D, F))):
                if f"{p}ffn_{kind}_exps.weight" in self:
                    want[f"{p}ffn_{kind}_exps.weight"] = (E, *shape)
                else:
                    want.update({f"{p}ffn_{kind}.{e}.weight": shape for e in range(E)})
        for name, shape in want.items():
            if name not in self:
                raise ModelError(f"missing tensor {name}")
            got = tuple(self.file.tensors[name].shape)
            if got != shape:
                raise ModelError(f"tensor {name} has shape {got}, expected {shape}")
            self[name]  # builds the view: an unsupported quant type fails here, at load, naming the tensor
        extra = [n for n in self.file.tensors if n not in want]
        if extra:
            raise ModelError(f"unexpected tensor {extra[0]} ({len(extra)} not used by the llama architecture)")
