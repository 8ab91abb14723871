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
        """Every tensor the forward pass needs is present with the right shape; nothing unknown is there.
        Names are checked as they are listed, so a file stops at its first missing tensor: metadata that
        claims a billion layers or experts costs no more than the file's own tensor count."""
        D, F, V = args.dim, args.hidden_dim, args.n_vocab
        q, kv = args.n_heads * args.head_dim, args.n_kv_heads * args.head_dim
        want = {}

        def need(name: str, shape: tuple) -> None:
            if name not in self:
                raise ModelError(f"missing tensor {name}")
            want[name] = shape

        need("token_embd.weight", (V, D))
        need("output_norm.weight", (D,))
        if "output.weight" in self:
            need("output.weight", (V, D))
        for i in range(args.n_layers):
            p = f"blk.{i}."
            for name, shape in (("attn_norm", (D,)), ("attn_q", (q, D)), ("attn_k", (kv, D)), ("attn_v", (kv, D)),
                                ("attn_output", (D, q)), ("ffn_norm", (D,))):
                need(f"{p}{name}.weight", shape)
            if args.moe is None:
                for name, shape in (("ffn_gate", (F, D)), ("ffn_up", (F, D)), ("ffn_down", (D, F))):
                    need(f"{p}{name}.weight", shape)
                continue
            E = args.moe.n_experts
            need(p + "ffn_gate_inp.weight", (E, D))
            for kind, shape in (("gate", (F, D)), ("up", (F, D)), ("down", (D, F))):
                if f"{p}ffn_{kind}_exps.weight" in self:
                    need(f"{p}ffn_{kind}_exps.weight", (E, *shape))
                else:
                    for e in range(E):
                        need(f"{p}ffn_{kind}.{e}.weight", shape)
        for name, shape in want.items():
            got = tuple(self.file.tensors[name].shape)
            if got != shape:
                raise ModelError(f"tensor {name} has shape {got}, expected {shape}")
            self[name]  # builds the view: an unsupported quant type fails here, at load, naming the tensor
        extra = [n for n in self.file.tensors if n not in want]
        if extra:
            raise ModelError(f"unexpected tensor {extra[0]} ({len(extra)} not used by the llama architecture)")
