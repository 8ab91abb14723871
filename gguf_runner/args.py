"""ModelArgs: every hyperparameter the forward pass needs, read once from GGUF metadata.

Mistral, Mixtral, Llama 2 and their relatives all carry `general.architecture = llama`; the keys are
`llama.*`. What a file lacks (Mistral 7B v0.1's sliding window) comes in as an override.
"""
from __future__ import annotations

from dataclasses import dataclass

SUPPORTED_ARCHITECTURES = ("llama",)


class ModelError(ValueError):
    """The file is a valid GGUF but not a model this runtime can run (one-line message)."""


@dataclass(frozen=True)
class MoeArgs:
    n_experts: int
    n_experts_used: int


@dataclass(frozen=True)
class ModelArgs:
    arch: str
    dim: int                 # embedding_length
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int            # attention.key_length, else dim // n_heads
    hidden_dim: int          # feed_forward_length (per expert for MoE)
    n_vocab: int
    norm_eps: float
    rope_theta: float
    rope_dim: int            # leading head dims rotated, in adjacent pairs
    rope_scale: float        # linear position scaling (1.0 = none)
    context_length: int      # what the model was trained for
    sliding_window: int | None
    moe: MoeArgs | None

    @classmethod
    def from_metadata(cls, md: dict, n_vocab: int, sliding_window: int | str | None = "auto",
                      fallback_window: int | None = None) -> "ModelArgs":
        """sliding_window: an int, None (off) or "auto": the file's value, else `fallback_window`
        (models.yaml's, for files such as Mistral 7B v0.1 that do not record it)."""
        arch = md.get("general.architecture")
        if arch not in SUPPORTED_ARCHITECTURES:
            raise ModelError(f"unsupported architecture {arch!r}; supported: {', '.join(SUPPORTED_ARCHITECTURES)} "
                             "(Mistral, Mixtral, Llama 2 and relatives)")

        def get(key, default=None, kind=int):
            full = f"{arch}.{key}"
            value = md.get(full, default)
            if value is None:
                raise ModelError(f"missing metadata key {full}")
            try:
                return kind(value)
            except (TypeError, ValueError):
                raise ModelError(f"metadata key {full} has a bad value {value!r}") from None

        dim, n_heads = get("embedding_length"), get("attention.head_count")
        n_kv_heads = get("attention.head_count_kv", n_heads)
        head_dim = get("attention.key_length", dim // n_heads if n_heads else 0)
        if get("attention.value_length", head_dim) != head_dim:
            raise ModelError("attention.value_length != attention.key_length is not supported")
        n_experts = get("expert_count", 0)
        if sliding_window == "auto":
            window = md.get(f"{arch}.attention.sliding_window") or fallback_window
        elif sliding_window is None or isinstance(sliding_window, int):
            window = sliding_window
        else:
            raise ModelError(f"sliding_window must be an int, None or 'auto', got {sliding_window!r}")
        scaling = md.get(f"{arch}.rope.scaling.type", "none")
        if scaling not in ("none", "linear"):
            raise ModelError(f"rope scaling {scaling!r} is not supported (none, linear)")
        args = cls(
            arch=arch, dim=dim, n_layers=get("block_count"), n_heads=n_heads, n_kv_heads=n_kv_heads,
            head_dim=head_dim, hidden_dim=get("feed_forward_length"), n_vocab=int(n_vocab),
            norm_eps=get("attention.layer_norm_rms_epsilon", kind=float),
            rope_theta=get("rope.freq_base", 10000.0, float), rope_dim=get("rope.dimension_count", head_dim),
            rope_scale=get("rope.scaling.factor", 1.0, float) if scaling == "linear" else 1.0,
            context_length=get("context_length"), sliding_window=int(window) if window else None,
            moe=MoeArgs(n_experts, get("expert_used_count")) if n_experts > 0 else None,
        )
        args.check()
        return args

    def check(self) -> None:
        positive = ("dim", "n_layers", "n_heads", "n_kv_heads", "head_dim", "hidden_dim", "n_vocab", "context_length")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ModelError(f"{name} must be positive, got {getattr(self, name)}")
        if self.n_heads % self.n_kv_heads:
            raise ModelError(f"head_count {self.n_heads} is not a multiple of head_count_kv {self.n_kv_heads}")
        if self.rope_dim % 2 or not 0 < self.rope_dim <= self.head_dim:
            raise ModelError(f"rope.dimension_count {self.rope_dim} must be even and <= head dim {self.head_dim}")
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ModelError(f"sliding window must be >= 1, got {self.sliding_window}")
        if self.moe and not 0 < self.moe.n_experts_used <= self.moe.n_experts:
            raise ModelError(f"expert_used_count {self.moe.n_experts_used} not in 1..{self.moe.n_experts}")
