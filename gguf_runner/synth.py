"""Synthetic GGUF files shaped exactly like real Q4_K_M models, for benchmarks (no download).

synth("mistral-7b", "/tmp/gguf-synth/mistral-7b.gguf") writes the tensor names, shapes and types of
the real Q4_K_M file, the real hyperparameters and a SentencePiece-style vocabulary, filled with
random valid quant blocks (small f16 scales). Speed does not depend on the values. Tensors are
streamed to disk a few MB at a time, so memory stays small for a 26 GB Mixtral.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as T

DEFAULT_DIR = Path("/tmp/gguf-synth")
POOL_BYTES = 8 << 20  # random blocks generated once per type, then written over and over


@dataclass(frozen=True)
class Shape:
    name: str
    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int = 8
    ffn: int = 14336
    vocab: int = 32000
    rope_theta: float = 1e4
    ctx: int = 32768
    n_experts: int = 0
    n_experts_used: int = 0


SHAPES = {
    "mistral-7b": Shape("mistral-7b"),
    "mixtral-8x7b": Shape("mixtral-8x7b", rope_theta=1e6, n_experts=8, n_experts_used=2),
    "llama2-7b": Shape("llama2-7b", n_kv_heads=32, ffn=11008, ctx=4096),
}


def tensor_plan(s: Shape, n_layers: int) -> list[tuple[str, tuple[int, ...], T]]:
    """(name, numpy shape, type) in the converter's order; types from the Q4_K_M recipe (quant.recipe)."""
    from quant.recipe import plan

    D, F, Dh = s.dim, s.ffn, s.dim // s.n_heads
    q, kv = s.n_heads * Dh, s.n_kv_heads * Dh
    shapes = [("token_embd.weight", (s.vocab, D))]
    for i in range(n_layers):
        p = f"blk.{i}."
        shapes += [(p + "attn_norm.weight", (D,)), (p + "attn_q.weight", (q, D)), (p + "attn_k.weight", (kv, D)),
                   (p + "attn_v.weight", (kv, D)), (p + "attn_output.weight", (D, q)), (p + "ffn_norm.weight", (D,))]
        if s.n_experts:
            E = s.n_experts
            shapes += [(p + "ffn_gate_inp.weight", (E, D)), (p + "ffn_gate_exps.weight", (E, F, D)),
                       (p + "ffn_down_exps.weight", (E, D, F)), (p + "ffn_up_exps.weight", (E, F, D))]
        else:
            shapes += [(p + "ffn_gate.weight", (F, D)), (p + "ffn_down.weight", (D, F)), (p + "ffn_up.weight", (F, D))]
    shapes += [("output_norm.weight", (D,)), ("output.weight", (s.vocab, D))]
    md = {"general.architecture": "llama", "llama.block_count": n_layers, "llama.expert_count": s.n_experts,
          "llama.attention.head_count": s.n_heads, "llama.attention.head_count_kv": s.n_kv_heads}
    types = plan("Q4_K_M", md, [(name, tuple(reversed(shape)), T.F32) for name, shape in shapes])
    return [(name, shape, t) for (name, shape), t in zip(shapes, types)]


def spm_vocab(n: int) -> tuple[list[str], list[float], list[int]]:
    """<unk> <s> </s>, 256 byte-fallback tokens, then distinct word pieces (scores decreasing)."""
    tokens, types = ["<unk>", "<s>", "</s>"], [2, 3, 3]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [6] * 256
    letters = "etaoinshrdlucmfwypvbgkjqxz"
    pieces, frontier = ["\u2581"] + list(letters), [""]
    while len(tokens) + len(pieces) < n:
        frontier = [w + c for w in frontier for c in letters]
        pieces += ["\u2581" + w for w in frontier] + (frontier if len(frontier[0]) > 1 else [])
    need = n - len(tokens)
    tokens += pieces[:need]
    types += [1] * need
    return tokens, [0.0] * 259 + [-float(i) for i in range(need)], types


def add_spm_vocab(g: gguf.GGUFWriter, n: int) -> None:
    """Write spm_vocab(n) as the tokenizer.ggml.* keys (SentencePiece model; <unk> 0, <s> 1, </s> 2)."""
    tokens, scores, types = spm_vocab(n)
    g.add_tokenizer_model("llama")
    g.add_token_list(tokens)
    g.add_token_scores(scores)
    g.add_token_types(types)
    g.add_bos_token_id(1)
    g.add_eos_token_id(2)
    g.add_unk_token_id(0)


# f16 scale fields: byte offset of d, of dmin (or None), and a d that makes weights ~N(0, 0.02) with
# random quants and sub-block scales (dmin = d * mean quant centres them): activations stay finite.
_SCALES = {T.Q4_K: (0, 2, 1.5e-4, 7.5), T.Q5_K: (0, 2, 7e-5, 15.5), T.Q6_K: (208, None, 2e-5, 0),
           T.Q8_0: (0, None, 3e-4, 0), T.Q5_0: (0, None, 1.2e-3, 0)}


def block_pool(ggml_type: T, rng: np.random.Generator) -> np.ndarray:
    """uint8 random valid blocks of a type (about POOL_BYTES) with small f16 scales."""
    block, nbytes = gguf.GGML_QUANT_SIZES[ggml_type]
    if ggml_type == T.F32:
        return np.ones(POOL_BYTES // 4, np.float32).view(np.uint8)
    n = POOL_BYTES // nbytes
    blocks = rng.integers(0, 256, (n, nbytes), dtype=np.uint8)
    d_at, dmin_at, scale, centre = _SCALES[ggml_type]
    d = rng.uniform(0.5 * scale, 1.5 * scale, n).astype(np.float16)
    blocks[:, d_at:d_at + 2] = d.view(np.uint8).reshape(n, 2)
    if dmin_at is not None:
        blocks[:, dmin_at:dmin_at + 2] = (d * np.float16(centre)).view(np.uint8).reshape(n, 2)
    return blocks.reshape(-1)


def _write_tensor(fout, nbytes: int, pool: np.ndarray) -> None:
    left = nbytes
    while left:
        n = min(left, pool.size)
        fout.write(memoryview(pool[:n]))
        left -= n


def synth(shape: str, out_path: str | os.PathLike | None = None, layers: int | None = None,
          seed: int = 0) -> Path:
    """Write a GGUF shaped like the real Q4_K_M `shape` ("mistral-7b" | "mixtral-8x7b" | "llama2-7b").
    layers: fewer blocks than the real model (metadata says so too). Returns the path."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose one of {', '.join(SHAPES)}")
    s = SHAPES[shape]
    n_layers = s.n_layers if layers is None else int(layers)
    if not 1 <= n_layers <= s.n_layers:
        raise ValueError(f"layers must be in 1..{s.n_layers}, got {layers}")
    path = Path(out_path) if out_path else DEFAULT_DIR / f"{shape}-q4_k_m{'' if layers is None else f'-{n_layers}l'}.gguf"
    path.parent.mkdir(parents=True, exist_ok=True)
    plan = tensor_plan(s, n_layers)
    rng = np.random.default_rng(seed)

    g = gguf.GGUFWriter(str(path), "llama")
    g.add_name(f"synthetic {shape} Q4_K_M" + ("" if layers is None else f" ({n_layers} layers)"))
    g.add_context_length(s.ctx)
    g.add_embedding_length(s.dim)
    g.add_block_count(n_layers)
    g.add_feed_forward_length(s.ffn)
    g.add_head_count(s.n_heads)
    g.add_head_count_kv(s.n_kv_heads)
    g.add_rope_dimension_count(s.dim // s.n_heads)
    g.add_rope_freq_base(s.rope_theta)
    g.add_layer_norm_rms_eps(1e-5)
    g.add_file_type(15)  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    if s.n_experts:
        g.add_expert_count(s.n_experts)
        g.add_expert_used_count(s.n_experts_used)
    add_spm_vocab(g, s.vocab)
    g.add_add_bos_token(True)
    g.add_add_eos_token(False)
    g.add_quantization_version(2)
    sizes = []
    for name, shp, t in plan:
        block, nbytes = gguf.GGML_QUANT_SIZES[t]
        size = int(np.prod(shp)) // block * nbytes
        sizes.append(size)
        g.add_tensor_info(name, shp, np.dtype(np.float32), size, raw_dtype=t)  # shp in elements
    g.write_header_to_file()
    g.write_kv_data_to_file()
    g.write_ti_data_to_file()
    fout = g.fout[0]
    pools: dict[T, np.ndarray] = {}
    for (name, shp, t), size in zip(plan, sizes):
        pool = pools.get(t)
        if pool is None:
            pool = pools[t] = block_pool(t, rng)
        if name.endswith("ffn_gate_inp.weight"):  # the router: random, so experts vary per token
            pool = (0.02 * rng.standard_normal(size // 4)).astype(np.float32).view(np.uint8)
        g.write_padding(fout, fout.tell())
        _write_tensor(fout, size, pool)
    g.write_padding(fout, fout.tell())
    g.close()
    return path


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="gguf-runner synth", description=__doc__.splitlines()[0])
    ap.add_argument("shape", choices=list(SHAPES))
    ap.add_argument("-o", "--out", default=None, help=f"output path (default: {DEFAULT_DIR}/<shape>-q4_k_m.gguf)")
    ap.add_argument("--layers", type=int, default=None, help="fewer blocks than the real model")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    path = synth(a.shape, a.out, a.layers, a.seed)
    print(f"{path} ({path.stat().st_size / 1e9:.2f} GB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
