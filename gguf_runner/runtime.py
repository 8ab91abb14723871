"""The Python API: load(model) -> Model, a stateful runner over one mapped GGUF file."""
from __future__ import annotations

import functools
import os
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np

import quant

from .args import ModelArgs, ModelError
from .cache import ContextFullError, KVCache
from .compat import chat_completion, completion
from .generate import Stream, stream_tokens
from .gguf_file import GGUFFile
from .model import Transformer
from .registry import resolve
from .sampling import SamplingParams
from .tokenizer import Tokenizer
from .weights import Weights


class BusyError(RuntimeError):
    """The model's state is in use by another thread."""


def exclusive(method):
    """Run under the model's lock; a second thread is refused, not queued or interleaved."""
    @functools.wraps(method)
    def run(self, *args, **kw):
        with self.in_use():
            return method(self, *args, **kw)
    return run


class Model:
    """A loaded model and its running state (the KV cache and the tokens consumed so far).
    One thread at a time: a call while another thread is evaluating or generating raises BusyError
    (use one Model per thread; the weights mapping is shared by the OS page cache)."""

    def __init__(self, path: Path, *, n_ctx: int | None = None, n_threads: int | None = None,
                 sliding_window: int | str | None = "auto", fallback_window: int | None = None,
                 n_batch: int = 256, vocab_only: bool = False, chat_template_name: str | None = None):
        self.path = Path(path)
        self._lock = threading.RLock()
        self.chat_template_name = chat_template_name   # models.yaml's, for files without a template
        self.file = GGUFFile(self.path)
        self.metadata = self.file.metadata
        self.tokenizer = Tokenizer.from_metadata(self.metadata)
        self.vocab_only = vocab_only
        if vocab_only:
            return
        if n_threads is not None:
            if n_threads < 1:
                raise ValueError(f"n_threads must be >= 1, got {n_threads}")
            quant.set_num_threads(n_threads)
        if n_batch < 1:
            raise ValueError(f"n_batch must be >= 1, got {n_batch}")
        self.weights = Weights(self.file)
        embd = self.file.tensors.get("token_embd.weight")
        if embd is None:
            raise ModelError("missing tensor token_embd.weight")
        self.args = ModelArgs.from_metadata(self.metadata, n_vocab=embd.shape[0],
                                            sliding_window=sliding_window, fallback_window=fallback_window)
        self.weights.check(self.args)
        self.n_ctx = min(self.args.context_length, 4096) if n_ctx is None else int(n_ctx)
        if self.n_ctx < 1:
            raise ValueError(f"n_ctx must be >= 1, got {self.n_ctx}")
        self.n_batch = n_batch
        self.transformer = Transformer(self.args, self.weights)
        self.reset()

    # --- text ---
    def tokenize(self, text: str, add_bos: bool = True, special: bool = False) -> list[int]:
        return self.tokenizer.encode(text, add_bos=add_bos, special=special)

    def detokenize(self, ids) -> str:
        return self.tokenizer.decode(ids)

    # --- state ---
    @contextmanager
    def in_use(self):
        if self.vocab_only:
            raise ModelError(f"{self.path.name} was loaded with vocab_only=True: it can tokenize, not evaluate")
        if not self._lock.acquire(blocking=False):
            raise BusyError("this Model is busy in another thread; use one Model per thread")
        try:
            yield
        finally:
            self._lock.release()

    @exclusive
    def reset(self) -> None:
        a = self.args
        self.cache = KVCache(a.n_layers, a.n_kv_heads, a.head_dim, self.n_ctx, a.sliding_window, self.n_batch)
        self.tokens: list[int] = []

    @property
    def n_past(self) -> int:
        return self.cache.offset

    @exclusive
    def eval(self, ids, all_logits: bool = False) -> np.ndarray:
        """Feed ids after the current state, in chunks of n_batch. Returns float32 logits (len(ids), V)
        if all_logits, else the last token's (V,)."""
        ids = self._check_ids(ids)
        with quant.blas_threads(1):   # see quant.blas_threads
            return self._eval(ids, all_logits)

    def _eval(self, ids, all_logits):
        outs = []
        for s in range(0, len(ids), self.n_batch):
            chunk = ids[s:s + self.n_batch]
            last = s + self.n_batch >= len(ids)
            if all_logits or last:
                outs.append(self.transformer.forward(chunk, self.cache, all_logits=all_logits))
            else:
                self.transformer.forward(chunk, self.cache, all_logits=False)
            self.tokens.extend(int(t) for t in chunk)
        return np.concatenate(outs) if all_logits else outs[-1][-1]

    @exclusive
    def prefill(self, ids) -> tuple[np.ndarray, int]:
        """Bring the state to exactly `ids`, reusing the longest common prefix already in the cache.
        Returns the last token's logits and how many tokens were evaluated."""
        ids = [int(t) for t in ids]
        common = 0
        for a, b in zip(self.tokens, ids):
            if a != b:
                break
            common += 1
        common = min(common, len(ids) - 1)          # the last token is re-run for its logits
        if not self.cache.truncate(common):
            self.reset()
            common = 0
        del self.tokens[common:]
        return self.eval(ids[common:]), len(ids) - common

    @exclusive
    def logits(self, ids) -> np.ndarray:
        """float32 (len(ids), n_vocab) logits of every position, from a fresh state."""
        self.reset()
        return self.eval(ids, all_logits=True)

    def _check_ids(self, ids) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if len(ids) == 0:
            raise ValueError("no tokens to evaluate")
        if self.n_past + len(ids) > self.n_ctx:
            raise ContextFullError(f"context full: {self.n_past} + {len(ids)} tokens > n_ctx {self.n_ctx}")
        bad = ids[(ids < 0) | (ids >= self.args.n_vocab)]
        if len(bad):
            raise ValueError(f"token id {int(bad[0])} out of range 0..{self.args.n_vocab - 1}")
        return ids

    # --- text in, text out ---
    def generate(self, prompt, *, max_tokens: int | None = 256, stop=None, stream: bool = False,
                 ignore_eos: bool = False, **sampling):
        """prompt: text (special tokens recognised, BOS as the vocabulary says) or token ids.
        sampling: SamplingParams fields (temperature, top_k, top_p, min_p, typical_p, repeat_penalty,
        frequency_penalty, presence_penalty, penalty_last_n, logit_bias, seed).
        Returns a Completion, or with stream=True a Stream of text pieces."""
        ids = self.tokenize(prompt, add_bos=True, special=True) if isinstance(prompt, str) else list(prompt)
        stops = [stop] if isinstance(stop, str) else [s for s in (stop or []) if s]
        gen = Stream(stream_tokens(self, ids, SamplingParams(**sampling), max_tokens, stops, ignore_eos))
        if stream:
            return gen
        for _ in gen:
            pass
        return gen.completion

    def chat(self, messages: list[dict], *, chat_template: str | None = None, **kw):
        """Render messages with the file's chat template (or a named / given one), then generate."""
        prompt = self.render_chat(messages, chat_template)
        bos = self.tokenizer.tokens[self.tokenizer.bos_id] if self.tokenizer.bos_id is not None else None
        ids = self.tokenize(prompt, add_bos=not (bos and prompt.startswith(bos)), special=True)
        return self.generate(ids, **kw)

    def render_chat(self, messages: list[dict], chat_template: str | None = None,
                    add_generation_prompt: bool = True) -> str:
        from .chat import render, resolve_template   # jinja2 loads only when a chat is rendered

        t = self.tokenizer
        name = lambda i: t.tokens[i] if i is not None else ""  # noqa: E731
        template = resolve_template(chat_template, self.metadata, self.chat_template_name)
        return render(template, messages, bos_token=name(t.bos_id), eos_token=name(t.eos_id),
                      add_generation_prompt=add_generation_prompt)

    def create_completion(self, prompt, **kw):
        """llama-cpp-python's Llama.create_completion: an OpenAI-shaped dict (or chunks if stream)."""
        return completion(self, prompt, **kw)

    def create_chat_completion(self, messages: list[dict], **kw):
        return chat_completion(self, messages, **kw)

    def close(self) -> None:
        self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def load(model: str | os.PathLike, *, n_ctx: int | None = None, n_threads: int | None = None,
         sliding_window: int | str | None = "auto", vocab_only: bool = False, n_batch: int = 256) -> Model:
    """model: a GGUF path or a models.yaml name. sliding_window: int, None (off) or "auto"
    (the file's value, else models.yaml's)."""
    path, entry = resolve(model)
    return Model(path, n_ctx=n_ctx, n_threads=n_threads, sliding_window=sliding_window,
                 fallback_window=entry.get("sliding_window") if entry else None,
                 n_batch=n_batch, vocab_only=vocab_only,
                 chat_template_name=entry.get("chat_template") if entry else None)
