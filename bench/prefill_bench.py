"""Prompt-processing speed of single tensors from a model file: matmul of T tokens, in GMAC/s.

    python bench/prefill_bench.py /tmp/gguf-synth/mistral-7b-q4_k_m.gguf [-t 16,64,512] [-r 5]

For each tensor and token count: the whole tensor on 1 and 2 threads, activations random (speed does not
depend on them). Best and median of the repetitions, each a full matmul (quantizing the tokens included).
"""
import argparse
import sys
from pathlib import Path

import numba
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gguf_runner  # noqa: E402
from kernel_bench import timed  # noqa: E402  (bench/ is the script's directory)
from quant import QuantizedTensor, matmul  # noqa: E402

TENSORS = ("blk.0.ffn_gate.weight", "blk.0.attn_q.weight", "blk.1.ffn_down.weight", "blk.0.ffn_down.weight")


def bench(w: QuantizedTensor, n_tokens: int, threads: int, reps: int) -> None:
    numba.set_num_threads(threads)
    x = np.random.default_rng(0).standard_normal((n_tokens, w.shape[1])).astype(np.float32)
    times = timed(lambda: matmul(w, x), reps)
    g = w.shape[0] * w.shape[1] * n_tokens / 1e9
    print(f"  T={n_tokens:<4d} {threads} thread(s): {g / min(times):6.1f} GMAC/s best, {g / np.median(times):6.1f} median")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("-t", "--tokens", default="16,64,512")
    ap.add_argument("-r", "--reps", type=int, default=5)
    a = ap.parse_args()
    weights = gguf_runner.load(a.model, n_ctx=64).transformer.w
    for name in TENSORS:
        if name not in weights:
            continue
        w = weights[name]
        print(f"{name} {w.type_name} {w.shape}")
        for n in map(int, a.tokens.split(",")):
            for threads in (1, 2):
                bench(w, n, threads, a.reps)


if __name__ == "__main__":
    main()
