"""Tiny random models built in code: HF-layout float32 weights, written as GGUF (Q/K rows permuted
the way llama.cpp's converter does), and the same weights loaded into HF transformers."""
from __future__ import annotations

from dataclasses import dataclass

import gguf
import numpy as np

from gguf_runner.synth import add_spm_vocab


@dataclass(frozen=True)
class Tiny:
    kind: str = "mistral"        # mistral | llama2 | mixtral
    dim: int = 256
    n_layers: int = 2
    n_heads: int = 8
    n_kv_heads: int = 2
    hidden: int = 512
    vocab: int = 512
    n_experts: int = 0
    n_used: int = 2
    merged: bool = True          # Mixtral layout: merged ffn_*_exps (True) or per-expert ffn_*.E
    theta: float = 10000.0
    eps: float = 1e-5
    ctx: int = 512
    window: int | None = None    # written to the file only if set

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


MISTRAL = Tiny()
LLAMA2 = Tiny(kind="llama2", n_kv_heads=8)
MIXTRAL = Tiny(kind="mixtral", n_experts=8, theta=1e6)
MIXTRAL_SPLIT = Tiny(kind="mixtral-split", n_experts=8, theta=1e6, merged=False)   # pre-2024 layout


def random_weights(cfg: Tiny, seed: int = 0) -> dict[str, np.ndarray]:
    """HF-layout weights, scaled so activations stay O(1) and logits are well separated."""
    rng = np.random.default_rng(seed)
    D, F, V, Dh = cfg.dim, cfg.hidden, cfg.vocab, cfg.head_dim

    def lin(n_out, n_in):
        return (rng.standard_normal((n_out, n_in)) / np.sqrt(n_in)).astype(np.float32)

    def norm():
        return (1.0 + 0.1 * rng.standard_normal(D)).astype(np.float32)

    w = {"embed": rng.standard_normal((V, D)).astype(np.float32), "norm": norm(), "lm_head": lin(V, D)}
    for i in range(cfg.n_layers):
        w[f"{i}.q"], w[f"{i}.k"] = lin(cfg.n_heads * Dh, D), lin(cfg.n_kv_heads * Dh, D)
        w[f"{i}.v"], w[f"{i}.o"] = lin(cfg.n_kv_heads * Dh, D), lin(D, cfg.n_heads * Dh)
        w[f"{i}.attn_norm"], w[f"{i}.ffn_norm"] = norm(), norm()
        if cfg.n_experts:
            w[f"{i}.router"] = lin(cfg.n_experts, D) * 4   # spread router logits: clear top-2 choices
            for e in range(cfg.n_experts):
                w[f"{i}.{e}.gate"], w[f"{i}.{e}.up"], w[f"{i}.{e}.down"] = lin(F, D), lin(F, D), lin(D, F)
        else:
            w[f"{i}.gate"], w[f"{i}.up"], w[f"{i}.down"] = lin(F, D), lin(F, D), lin(D, F)
    return w


def to_adjacent(w: np.ndarray, heads: int) -> np.ndarray:
    """HF rotates head halves; GGUF files store Q/K rows so that RoPE rotates adjacent pairs."""
    return w.reshape(heads, 2, -1, w.shape[-1]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path, cfg: Tiny, w: dict[str, np.ndarray]) -> None:
    """Write F32 GGUF with the converter's names and layout."""
    g = gguf.GGUFWriter(str(path), "llama")
    g.add_name(f"tiny-{cfg.kind}")
    g.add_context_length(cfg.ctx)
    g.add_embedding_length(cfg.dim)
    g.add_block_count(cfg.n_layers)
    g.add_feed_forward_length(cfg.hidden)
    g.add_head_count(cfg.n_heads)
    g.add_head_count_kv(cfg.n_kv_heads)
    g.add_rope_dimension_count(cfg.head_dim)
    g.add_rope_freq_base(cfg.theta)
    g.add_layer_norm_rms_eps(cfg.eps)
    g.add_file_type(0)
    if cfg.window:
        g.add_sliding_window(cfg.window)
    if cfg.n_experts:
        g.add_expert_count(cfg.n_experts)
        g.add_expert_used_count(cfg.n_used)
    add_spm_vocab(g, cfg.vocab)
    g.add_tensor("token_embd.weight", w["embed"])
    for i in range(cfg.n_layers):
        p = f"blk.{i}."
        g.add_tensor(p + "attn_norm.weight", w[f"{i}.attn_norm"])
        g.add_tensor(p + "attn_q.weight", to_adjacent(w[f"{i}.q"], cfg.n_heads))
        g.add_tensor(p + "attn_k.weight", to_adjacent(w[f"{i}.k"], cfg.n_kv_heads))
        g.add_tensor(p + "attn_v.weight", w[f"{i}.v"])
        g.add_tensor(p + "attn_output.weight", w[f"{i}.o"])
        g.add_tensor(p + "ffn_norm.weight", w[f"{i}.ffn_norm"])
        if not cfg.n_experts:
            for kind in ("gate", "up", "down"):
                g.add_tensor(p + f"ffn_{kind}.weight", w[f"{i}.{kind}"])
            continue
        g.add_tensor(p + "ffn_gate_inp.weight", w[f"{i}.router"])
        for kind in ("gate", "up", "down"):
            slabs = [w[f"{i}.{e}.{kind}"] for e in range(cfg.n_experts)]
            if cfg.merged:
                g.add_tensor(p + f"ffn_{kind}_exps.weight", np.stack(slabs))
            else:
                for e, slab in enumerate(slabs):
                    g.add_tensor(p + f"ffn_{kind}.{e}.weight", slab)
    g.add_tensor("output_norm.weight", w["norm"])
    g.add_tensor("output.weight", w["lm_head"])
    g.write_header_to_file()
    g.write_kv_data_to_file()
    g.write_tensors_to_file()
    g.close()


def hf_model(cfg: Tiny, w: dict[str, np.ndarray], window: int | None = None):
    """The same weights in HF transformers (eager attention, float32): the attention oracle."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM
    from transformers import MixtralConfig, MixtralForCausalLM

    common = dict(vocab_size=cfg.vocab, hidden_size=cfg.dim, intermediate_size=cfg.hidden,
                  num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
                  num_key_value_heads=cfg.n_kv_heads, head_dim=cfg.head_dim, max_position_embeddings=cfg.ctx,
                  rms_norm_eps=cfg.eps, rope_theta=cfg.theta, tie_word_embeddings=False)
    if cfg.n_experts:
        model = MixtralForCausalLM(MixtralConfig(**common, num_local_experts=cfg.n_experts,
                                                 num_experts_per_tok=cfg.n_used, sliding_window=window))
    elif cfg.kind == "llama2":
        model = LlamaForCausalLM(LlamaConfig(**common))
    else:
        model = MistralForCausalLM(MistralConfig(**common, sliding_window=window))
    model.config._attn_implementation = "eager"
    sd = {"model.embed_tokens.weight": w["embed"], "model.norm.weight": w["norm"], "lm_head.weight": w["lm_head"]}
    for i in range(cfg.n_layers):
        p = f"model.layers.{i}."
        for ours, theirs in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("o", "o_proj")):
            sd[f"{p}self_attn.{theirs}.weight"] = w[f"{i}.{ours}"]
        sd[p + "input_layernorm.weight"] = w[f"{i}.attn_norm"]
        sd[p + "post_attention_layernorm.weight"] = w[f"{i}.ffn_norm"]
        if cfg.n_experts:
            E = range(cfg.n_experts)
            sd[p + "mlp.gate.weight"] = w[f"{i}.router"]
            sd[p + "mlp.experts.gate_up_proj"] = np.stack(
                [np.concatenate([w[f"{i}.{e}.gate"], w[f"{i}.{e}.up"]]) for e in E])
            sd[p + "mlp.experts.down_proj"] = np.stack([w[f"{i}.{e}.down"] for e in E])
        else:
            for kind in ("gate", "up", "down"):
                sd[f"{p}mlp.{kind}_proj.weight"] = w[f"{i}.{kind}"]
    missing, unexpected = model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=False)
    assert not unexpected and not [k for k in missing if "rotary" not in k], (missing, unexpected)
    return model.float().eval()


def hf_logits(model, ids) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = model(torch.tensor(np.asarray(ids)[None], dtype=torch.long))
    return out.logits[0].double().numpy()


def split_experts(src, dst) -> None:
    """Rewrite a merged-expert GGUF (ffn_*_exps) in the pre-2024 per-expert layout (ffn_*.E), copying
    the quantized blocks unchanged: current llama.cpp only loads the merged layout, so it runs the
    merged file and we run this one on the very same weights."""
    r = gguf.GGUFReader(str(src))
    g = gguf.GGUFWriter(str(dst), r.fields["general.architecture"].contents())
    for name, f in r.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        sub = f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
        g.add_key_value(name, f.contents(), f.types[0], sub_type=sub)
    for t in r.tensors:
        # t.data: the tensor's bytes (quantized) or values (float), experts on the first axis
        if "_exps." not in t.name:
            g.add_tensor(t.name, t.data, raw_dtype=t.tensor_type)
            continue
        for e in range(t.data.shape[0]):
            name = t.name.replace("_exps.weight", f".{e}.weight")
            g.add_tensor(name, np.ascontiguousarray(t.data[e]), raw_dtype=t.tensor_type)
    g.write_header_to_file()
    g.write_kv_data_to_file()
    g.write_tensors_to_file()
    g.close()
