"""Matrix-vector speed of single tensors from a model file, in GB/s of weights read.

    python bench/kernel_bench.py /tmp/gguf-synth/mistral-7b-q4_k_m.gguf [-r 20]

For each tensor: a 512-row slice (fits in L3, compute-bound) on 1 thread, then the whole tensor
(memory-bound) on 1 and 2 threads. Best and median of the repetitions.
"""
import argparse
import sys
import time
from pathlib import Path

import numba
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gguf_runner  # noqa: E402
from quant import QuantizedTensor, matvec  # noqa: E402

TENSORS = ("blk.0.ffn_gate.weight", "blk.1.ffn_down.weight", "output.weight")


def timed(fn, reps: int) -> list[float]:
    """Seconds of reps calls of fn, after one untimed call (compilation, first touch of the pages)."""
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def bench(label: str, w: QuantizedTensor, threads: int, reps: int) -> None:
    numba.set_num_threads(threads)
    x = np.random.default_rng(0).standard_normal(w.shape[1]).astype(np.float32)
    times = timed(lambda: matvec(w, x), reps)
    gb = w.data.nbytes / 1e9
    print(f"  {label:22s} {threads} thread(s): {gb / min(times):6.2f} GB/s best, {gb / np.median(times):6.2f} median")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("-r", "--reps", type=int, default=20)
    a = ap.parse_args()
    weights = gguf_runner.load(a.model, n_ctx=64).transformer.w
    for name in TENSORS:
        w = weights[name]
        print(f"{name} {w.type_name} {w.shape}")
        bench("512 rows (in cache)", QuantizedTensor(name, w.ggml_type, (512, w.shape[1]), w.data[:512]), 1, 10 * a.reps)
        for threads in (1, 2):
            bench("whole tensor", w, threads, a.reps)


if __name__ == "__main__":
    main()
