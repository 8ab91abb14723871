"""logits -> token id, with llama.cpp's sampler chain and defaults.

Order (llama.cpp's): logit bias, penalties over the last N tokens, then (unless greedy) top-k,
typical-p, top-p, min-p on the untempered distribution, temperature last, then a seeded draw.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.8        # <= 0: greedy
    top_k: int = 40                 # <= 0: off
    top_p: float = 0.95             # 1.0: off
    min_p: float = 0.05             # 0.0: off
    typical_p: float = 1.0          # 1.0: off
    repeat_penalty: float = 1.0     # 1.0: off
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    penalty_last_n: int = 64        # tokens the penalties look back over; -1: all
    logit_bias: dict = field(default_factory=dict)   # token id -> added to its logit
    seed: int | None = None

    def __post_init__(self):
        checks = [
            (self.temperature >= 0, "temperature must be >= 0"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (0 <= self.min_p <= 1, "min_p must be in [0, 1]"),
            (0 < self.typical_p <= 1, "typical_p must be in (0, 1]"),
            (self.repeat_penalty > 0, "repeat_penalty must be > 0"),
            (self.penalty_last_n >= -1, "penalty_last_n must be >= -1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"{message}, got {self}")


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def apply_penalties(logits: np.ndarray, history, p: SamplingParams) -> np.ndarray:
    if p.logit_bias:
        ids = np.fromiter(p.logit_bias.keys(), np.int64)
        logits[ids] += np.fromiter(p.logit_bias.values(), np.float64)
    recent = history if p.penalty_last_n == -1 else history[len(history) - p.penalty_last_n:] if p.penalty_last_n else []
    if len(recent) and (p.repeat_penalty != 1 or p.frequency_penalty or p.presence_penalty):
        ids, counts = np.unique(np.asarray(recent, np.int64), return_counts=True)
        x = logits[ids]
        x = np.where(x > 0, x / p.repeat_penalty, x * p.repeat_penalty)
        logits[ids] = x - counts * p.frequency_penalty - p.presence_penalty
    return logits


def filter_candidates(logits: np.ndarray, p: SamplingParams) -> np.ndarray:
    """Candidate ids, best first, after top-k, typical-p, top-p and min-p (each keeps >= 1)."""
    order = np.argsort(-logits, kind="stable")
    if p.top_k > 0:
        order = order[:p.top_k]
    if p.typical_p < 1:
        probs = softmax(logits[order])
        surprise = np.abs(-np.log(np.maximum(probs, 1e-45)) - (-(probs * np.log(np.maximum(probs, 1e-45))).sum()))
        by_typical = np.argsort(surprise, kind="stable")
        keep = np.searchsorted(np.cumsum(probs[by_typical]), p.typical_p) + 1
        order = order[np.sort(by_typical[:keep])]
    if p.top_p < 1:
        keep = np.searchsorted(np.cumsum(softmax(logits[order])), p.top_p) + 1
        order = order[:keep]
    if p.min_p > 0:
        probs = softmax(logits[order])
        order = order[probs >= p.min_p * probs[0]]
    return order


class Sampler:
    def __init__(self, params: SamplingParams | None = None):
        self.params = params or SamplingParams()
        self.rng = np.random.default_rng(self.params.seed)

    def __call__(self, logits: np.ndarray, history=()) -> int:
        p = self.params
        logits = apply_penalties(np.array(logits, dtype=np.float64), history, p)
        if p.temperature <= 0:
            return int(np.argmax(logits))
        order = filter_candidates(logits, p)
        probs = softmax(logits[order] / p.temperature)
        return int(order[min(np.searchsorted(np.cumsum(probs), self.rng.random() * probs.sum()), len(order) - 1)])
