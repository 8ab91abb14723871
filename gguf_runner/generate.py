"""Prefill, the decode loop, stop conditions and timings; text in, text out.

A stop string may arrive split across tokens, so text that could still become one is held back
until it can't; a UTF-8 character split across tokens is never emitted half (StreamDecoder).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator

from .sampling import Sampler, SamplingParams
from .tokenizer import StreamDecoder


@dataclass
class Timings:
    prompt_tokens: int = 0          # tokens actually evaluated (a reused prefix is not counted)
    prompt_seconds: float = 0.0
    generated_tokens: int = 0
    generation_seconds: float = 0.0
    time_to_first_token: float = 0.0

    @property
    def prompt_tps(self) -> float:
        return self.prompt_tokens / self.prompt_seconds if self.prompt_seconds else 0.0

    @property
    def tps(self) -> float:
        return self.generated_tokens / self.generation_seconds if self.generation_seconds else 0.0

    def as_dict(self) -> dict:
        return {**self.__dict__, "prompt_tps": self.prompt_tps, "tps": self.tps}


@dataclass
class Completion:
    text: str
    tokens: list[int]
    finish_reason: str              # "stop" (EOS or a stop string) | "length"
    prompt_tokens: int              # length of the prompt in tokens
    timings: Timings = field(default_factory=Timings)


def held_back(text: str, stops: list[str]) -> int:
    """Length of the longest suffix of text that is a proper prefix of some stop string."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best


def stream_tokens(model, prompt_ids: list[int], params: SamplingParams, max_tokens: int | None,
                  stop: list[str], ignore_eos: bool) -> Iterator[str]:
    """Yields text pieces; returns (StopIteration.value) the Completion. Holds the model for its whole
    life, so another thread cannot interleave with a half-finished generation."""
    with model.in_use():
        return (yield from _generate(model, prompt_ids, params, max_tokens, stop, ignore_eos))


def _generate(model, prompt_ids, params, max_tokens, stop, ignore_eos):
    t0 = time.perf_counter()
    timings = Timings()
    if len(prompt_ids) == 0:
        raise ValueError("empty prompt")
    if len(prompt_ids) >= model.n_ctx:
        raise ValueError(f"prompt of {len(prompt_ids)} tokens does not fit in n_ctx {model.n_ctx} "
                         "(leave room for at least one generated token)")
    logits, timings.prompt_tokens = model.prefill(prompt_ids)
    timings.prompt_seconds = timings.time_to_first_token = time.perf_counter() - t0
    room = model.n_ctx - len(prompt_ids)
    limit = room if max_tokens is None or max_tokens < 0 else min(max_tokens, room)
    sampler, decoder = Sampler(params), StreamDecoder(model.tokenizer, at_start=False)
    text, emitted, out, finish, stopped = "", 0, [], "length", False
    t1 = time.perf_counter()
    while len(out) < limit:
        token = sampler(logits, model.tokens)
        if not out:
            timings.time_to_first_token = time.perf_counter() - t0
        if model.tokenizer.is_eog(token) and not ignore_eos:
            finish = "stop"
            break
        out.append(token)
        text += decoder.push(token)
        hits = [i for i in (text.find(s, emitted) for s in stop) if i >= 0]   # none starts before emitted
        if hits:   # cut at the earliest stop string; what follows it is never shown
            text, finish, stopped = text[:min(hits)], "stop", True
            break
        safe = len(text) - held_back(text, stop)
        if safe > emitted:
            yield text[emitted:safe]
            emitted = safe
        if len(out) < limit:
            logits = model.eval([token])
    if not stopped:
        text += decoder.flush()
    if len(text) > emitted:
        yield text[emitted:]
    timings.generated_tokens = len(out)
    timings.generation_seconds = time.perf_counter() - t1
    return Completion(text, out, finish, len(prompt_ids), timings)


class Stream:
    """Iterator of text pieces; `.completion` holds the Completion once it is exhausted."""

    def __init__(self, gen: Iterator[str]):
        self._gen, self.completion = gen, None

    def __iter__(self):
        return self

    def __next__(self) -> str:
        try:
            return next(self._gen)
        except StopIteration as done:
            self.completion = done.value
            raise
