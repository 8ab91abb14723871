"""Which GGML type each tensor gets: llama.cpp's file types (llama_ftype) and the per-tensor rules
of llama-quant.cpp (llama_tensor_get_type) for the file types offered here, without an imatrix.

Q4_K_M, for example, is Q4_K by default; Q6_K for output.weight (or token_embd.weight when the
embeddings are tied) and for attn_v / ffn_down on the layers where use_more_bits holds; with 8
experts attn_k and attn_v become Q8_0 and attn_output Q5_K; a 70B llama's attn_v is Q5_K; rows not
divisible by 256 fall back to Q5_0 / Q5_1 / Q8_0. Tensors that are not quantized (1-D tensors,
norms, the MoE router, ...) keep their type. llama.cpp visits the tensors sorted by layer, then
name, and some rules count the tensors seen so far, so the types are decided in that order.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from gguf.constants import GGML_QUANT_SIZES
from gguf.constants import GGMLQuantizationType as T

# name -> (llama_ftype, default type); the value goes to general.file_type
FTYPES: dict[str, tuple[int, T]] = {
    "F32": (0, T.F32), "F16": (1, T.F16), "Q4_0": (2, T.Q4_0), "Q4_1": (3, T.Q4_1), "Q8_0": (7, T.Q8_0),
    "Q5_0": (8, T.Q5_0), "Q5_1": (9, T.Q5_1), "Q4_K_S": (14, T.Q4_K), "Q4_K_M": (15, T.Q4_K),
    "Q5_K_S": (16, T.Q5_K), "Q5_K_M": (17, T.Q5_K), "Q6_K": (18, T.Q6_K), "BF16": (32, T.BF16),
}
NOT_QUANTIZED = (T.F32, T.F16, T.BF16)
FALLBACK = {T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0, T.Q2_K: T.Q4_0, T.Q3_K: T.Q4_0}
# Substrings of 2-D+ weights llama.cpp never quantizes (norms, MoE routers, small or special tensors)
KEEP = ("_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel",
        "per_layer_model_proj", "ssm_conv1d", "shortconv.conv.weight", "indexer.k_proj.weight",
        "indexer.q_proj.weight", "attn_rel_b.weight", ".position_embd", "sam.pos_embd", "sam.neck.",
        "sam.net_", ".rel_pos", ".patch_embd", ".patch_merger", "a.rvq.codebook", "mm.a.code_embd",
        *(f"time_mix_{s}.weight" for s in ("first", "w0", "w1", "w2", "v0", "v1", "v2", "a0", "a1", "a2",
                                           "g1", "g2", "decay_w1", "decay_w2", "lerp_fused")))
CATEGORIES = (("attn_qkv.weight", "attn_qkv"), ("attn_kv_b.weight", "attn_kv_b"), ("attn_v.weight", "attn_v"),
              ("attn_k.weight", "attn_k"), ("attn_q.weight", "attn_q"), ("attn_output.weight", "attn_output"),
              ("ffn_up", "ffn_up"), ("ffn_gate", "ffn_gate"), ("ffn_down", "ffn_down"))
LAYER = re.compile(r"blk\.(\d+)\.")


@dataclass(frozen=True)
class Model:
    """What the rules read from the metadata."""
    arch: str
    n_layer: int
    n_expert: int
    is_70b: bool  # llama.cpp's LLM_TYPE_70B: a llama with 80 layers and grouped-query attention

    @classmethod
    def from_metadata(cls, md: dict) -> Model:
        arch = md.get("general.architecture")
        if not isinstance(arch, str) or f"{arch}.block_count" not in md:
            raise ValueError("metadata lacks general.architecture or its block_count")

        def first(key, default):
            v = md.get(f"{arch}.{key}", default)
            return int(v[0] if hasattr(v, "__len__") else v)

        n_layer, n_expert = first("block_count", 0), first("expert_count", 0)
        heads, kv_heads = first("attention.head_count", 0), first("attention.head_count_kv", 0)
        return cls(arch, n_layer, n_expert, arch == "llama" and n_expert != 8 and n_layer == 80 and heads != kv_heads)


def category(name: str) -> str:
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    return next((cat for key, cat in CATEGORIES if key in name), "other")


def n_dims(ne: tuple[int, ...]) -> int:
    """ggml_n_dims: trailing axes of size 1 do not count."""
    return max([i + 1 for i, n in enumerate(ne) if n > 1], default=1)


def quantizable(name: str, ne: tuple[int, ...]) -> bool:
    return (n_dims(ne) >= 2 and name.endswith("weight") and not any(k in name for k in KEEP)
            and name not in ("position_embd.weight", "token_types.weight"))


def use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def block_size(t: T) -> int:
    return GGML_QUANT_SIZES[t][0]


def plan(ftype: str, md: dict, tensors: list[tuple[str, tuple[int, ...], int]]) -> list[T]:
    """Output type of each tensor (name, ne, current ggml type), in the given order."""
    if ftype not in FTYPES:
        raise ValueError(f"unknown quantization type {ftype!r} (choose from {', '.join(FTYPES)})")
    default = FTYPES[ftype][1]
    model = Model.from_metadata(md)
    names = [name for name, _, _ in tensors]
    state = {"tied": "output.weight" not in names, "n_attn_v": sum(category(n) in ("attn_v", "attn_qkv", "attn_kv_b")
                                                                     for n in names),
             "attn_v": 0, "ffn_down": 0}
    order = sorted(range(len(tensors)), key=lambda i: _sort_key(names[i]))  # llama.cpp's weights_map order
    out: list[T] = [T(t) for _, _, t in tensors]
    for i in order:
        name, ne, _ = tensors[i]
        if not quantizable(name, ne):
            continue
        if default in NOT_QUANTIZED:
            out[i] = default
            continue
        new = _rule(ftype, default, model, state, name, ne)
        out[i] = _fallback(new, ne[0], name)
    return out


def _sort_key(name: str):
    m = LAYER.match(name)
    return (int(m.group(1)) if m else -1, name.encode())


def _layer(model: Model, counter: int, name: str) -> int:
    """The layer of an ffn tensor: its position among its kind, or (MoE) parsed from the name."""
    if model.n_expert <= 1:
        return counter
    m = LAYER.match(name)
    if not m or int(m.group(1)) >= model.n_layer:
        raise ValueError(f"cannot determine the layer of tensor {name!r} (block_count {model.n_layer})")
    return int(m.group(1))


def _rule(ftype: str, new: T, model: Model, state: dict, name: str, ne: tuple[int, ...]) -> T:
    cat, eight = category(name), model.n_expert == 8
    if cat == "output" or (cat == "token_embd" and state["tied"]):
        if model.arch == "falcon" or ne[0] % block_size(new):
            return T.Q8_0
        return T.Q6_K if new != T.Q8_0 else new
    if cat in ("attn_v", "attn_qkv", "attn_kv_b"):  # fused qkv and MLA kv_b count as attn_v
        i = state["attn_v"]
        if ftype in ("Q4_K_M", "Q5_K_M") and use_more_bits(i, state["n_attn_v"]):
            new = T.Q6_K
        elif ftype == "Q4_K_S" and i < 4:
            new = T.Q5_K
        if model.is_70b and new in (T.Q3_K, T.Q4_K):
            new = T.Q5_K
        if eight:
            new = T.Q8_0
        state["attn_v"] += 1
    elif cat == "attn_k" and eight:
        new = T.Q8_0
    elif cat == "ffn_down":
        i, n = _layer(model, state["ffn_down"], name), model.n_layer
        if ftype == "Q4_K_M" and model.arch == "falcon":
            new = T.Q6_K if i < n // 16 else T.Q5_K if use_more_bits(i, n) else T.Q4_K
        elif ftype in ("Q4_K_M", "Q5_K_M"):
            new = T.Q6_K if use_more_bits(i, n) else new
        elif ftype == "Q4_K_S" and model.arch != "falcon" and i < n // 8:
            new = T.Q5_K
        state["ffn_down"] += 1
    elif cat == "attn_output" and model.arch != "falcon" and eight and ftype in ("Q4_K_S", "Q4_K_M"):
        new = T.Q5_K
    elif cat in ("ffn_gate", "ffn_up"):
        _layer(model, 0, name)  # llama.cpp checks the layer of MoE ffn tensors
    return new


def _fallback(new: T, ncols: int, name: str) -> T:
    """Rows that are not a whole number of blocks: llama.cpp's fallback type, else F16."""
    if ncols % block_size(new) == 0:
        return new
    if new not in FALLBACK:
        raise ValueError(f"tensor {name!r}: rows of {ncols} are not a multiple of the {new.name} block "
                         f"size {block_size(new)}, and llama.cpp defines no fallback type for {new.name}")
    alt = FALLBACK[new]
    return alt if ncols % block_size(alt) == 0 else T.F16
