"""Resident memory over a long generation: `python bench/long_run.py [--tokens 10000] [--window 256]`.

Builds a small random model whose KV cache is large per token (4 layers x 8 KV heads x 64 dims:
16 KiB per token in float32), generates N tokens (ignoring EOS) with the sliding window on and then
off, and prints RSS every 1000 tokens. With the window, the rolling buffer holds W - 1 + n_batch
positions, so RSS stays flat; without it, RSS grows by ~16 KiB per token.
"""
import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import gguf_runner  # noqa: E402
from models import MISTRAL, random_weights, write_gguf  # noqa: E402


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def run(path, tokens: int, window):
    m = gguf_runner.load(path, n_ctx=tokens + 16, sliding_window=window)
    marks, t0 = [], time.perf_counter()
    stream = m.generate([1, 5, 9], max_tokens=tokens, ignore_eos=True, temperature=0.8, seed=0, stream=True)
    for _ in stream:
        n = m.n_past
        if n // 1000 > len(marks) - 1:
            marks.append((n, rss_mib()))
    marks.append((m.n_past, rss_mib()))
    c = stream.completion
    print(f"window={window}: {len(c.tokens)} tokens in {time.perf_counter() - t0:.0f} s; RSS MiB by position: "
          + ", ".join(f"{n}:{r:.0f}" for n, r in marks))
    print(f"  growth from position ~1000 to the end: {marks[-1][1] - marks[1][1]:+.1f} MiB; "
          f"KV cache capacity {m.cache.capacity} positions ({m.cache.nbytes() / 2**20:.1f} MiB allocated, "
          "committed as touched)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=10_000)
    ap.add_argument("--window", type=int, default=256)
    a = ap.parse_args()
    cfg = replace(MISTRAL, dim=512, n_heads=8, n_kv_heads=8, n_layers=4, hidden=1024, ctx=a.tokens + 16)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "long.gguf"
        write_gguf(path, cfg, random_weights(cfg))
        run(path, a.tokens, a.window)
        run(path, a.tokens, None)


if __name__ == "__main__":
    main()
