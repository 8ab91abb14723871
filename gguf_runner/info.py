"""What `gguf-runner inspect` reports: a model's shape and the memory a run needs, from the header alone."""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from .args import ModelArgs
from .cache import KVCache
from .gguf_file import GGUFFile
from .weights import Weights

EXPERT_TENSOR = re.compile(r"\.ffn_(gate|up|down)(_exps|\.\d+)\.weight$")   # merged or per-expert layout


def describe(path: str | Path, n_ctx: int | None = None, n_batch: int = 256,
             sliding_window: int | str | None = "auto", fallback_window: int | None = None) -> dict:
    with GGUFFile(path) as f:
        n_vocab = f.tensors["token_embd.weight"].shape[0] if "token_embd.weight" in f.tensors else 0
        args = ModelArgs.from_metadata(f.metadata, n_vocab, sliding_window, fallback_window)
        Weights(f).check(args)
        n_ctx = min(args.context_length, 4096) if n_ctx is None else n_ctx
        total = sum(t.nbytes for t in f.tensors.values())
        expert_bytes = sum(t.nbytes for n, t in f.tensors.items() if EXPERT_TENSOR.search(n))
        embd = f.tensors["token_embd.weight"]
        # Read per token: every non-expert weight once, k of E experts per layer, one embedding row
        # (unless the embedding is also the output matrix).
        per_token = total - expert_bytes
        if "output.weight" in f.tensors:
            per_token -= embd.nbytes - embd.nbytes // embd.shape[0]
        if args.moe:
            per_token += expert_bytes * args.moe.n_experts_used // args.moe.n_experts
        kv = KVCache.planned_bytes(args, n_ctx, n_batch)
        return {
            "file": str(path), "file_size": f.file_size, "gguf_version": f.version,
            "name": f.metadata.get("general.name", ""), "architecture": args.arch,
            "dim": args.dim, "layers": args.n_layers, "heads": args.n_heads, "kv_heads": args.n_kv_heads,
            "head_dim": args.head_dim, "ffn_dim": args.hidden_dim, "vocab": args.n_vocab,
            "context_length": args.context_length, "rope_theta": args.rope_theta,
            "sliding_window": args.sliding_window,
            "experts": f"{args.moe.n_experts_used} of {args.moe.n_experts}" if args.moe else None,
            "tied_output": "output.weight" not in f.tensors,
            "tensor_types": dict(Counter(t.type_name for t in f.tensors.values()).most_common()),
            "weights_bytes": total, "weights_read_per_token": per_token,
            "n_ctx": n_ctx, "kv_cache_bytes": kv,
        }
