"""Seconds to quantize a Mistral-7B-shaped F16 GGUF: ours (quant.quantize.quantize_file) beside
llama.cpp's (llama_cpp.llama_model_quantize), same thread count, same file, warm page cache.

    python bench/quantize_bench.py --layers 4          # 4 of the 32 layers (~2.5 GB F16)
    python bench/quantize_bench.py                     # the full shape: ~14.5 GB F16, needs ~25 GB disk

The F16 file (random values; 32000 vocab, 4096 dim, 14336 ffn, 32 heads / 8 kv heads) is built in
--dir and kept for reruns unless --clean. Then both outputs are checked tensor by tensor: the same
types and the same bytes.
"""
from __future__ import annotations

import argparse
import hashlib
import mmap
import os
import shutil
import sys
import time
from pathlib import Path

import gguf
import numpy as np

DIM, FFN, VOCAB, HEADS, KV_HEADS = 4096, 14336, 32000, 32, 8


def tensors(layers: int):
    """(name, numpy shape, dtype) in the converter's order."""
    kv = DIM // HEADS * KV_HEADS
    yield "token_embd.weight", (VOCAB, DIM), np.float16
    for i in range(layers):
        p = f"blk.{i}."
        yield p + "attn_norm.weight", (DIM,), np.float32
        yield p + "attn_q.weight", (DIM, DIM), np.float16
        yield p + "attn_k.weight", (kv, DIM), np.float16
        yield p + "attn_v.weight", (kv, DIM), np.float16
        yield p + "attn_output.weight", (DIM, DIM), np.float16
        yield p + "ffn_norm.weight", (DIM,), np.float32
        yield p + "ffn_gate.weight", (FFN, DIM), np.float16
        yield p + "ffn_up.weight", (FFN, DIM), np.float16
        yield p + "ffn_down.weight", (DIM, FFN), np.float16
    yield "output_norm.weight", (DIM,), np.float32
    yield "output.weight", (VOCAB, DIM), np.float16


def build(path: Path, layers: int, seed: int = 0) -> None:
    """Random weights ~ N(0, 1/dim) (norms ~ 1), written one tensor at a time. Each tensor is a
    different window of one pool of 2**24 random values, so building stays quick."""
    rng = np.random.default_rng(seed)
    pool = (rng.standard_normal(1 << 24) / np.sqrt(DIM)).astype(np.float32)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(f"random-mistral-7b-{layers}-layers")
    w.add_context_length(32768)
    w.add_embedding_length(DIM)
    w.add_block_count(layers)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_dimension_count(DIM // HEADS)
    w.add_rope_freq_base(1e6)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(1)
    specs = list(tensors(layers))
    for name, shape, dtype in specs:
        w.add_tensor_info(name, shape, np.dtype(dtype), int(np.prod(shape)) * np.dtype(dtype).itemsize)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for k, (name, shape, dtype) in enumerate(specs):
        n = int(np.prod(shape))
        if len(shape) == 1:
            x = 1 + 0.1 * pool[k * 4099 % (pool.size - n):][:n] * np.sqrt(DIM)
        else:
            x = np.resize(np.roll(pool, -(k * 7_654_321) % pool.size), n)  # a different window per tensor
        w.write_tensor_data(x.astype(dtype).reshape(shape))
        print(f"\rbuilding {path.name}: {k + 1}/{len(specs)} tensors", end="", file=sys.stderr)
    print(file=sys.stderr)
    w.close()


def warm(path: Path) -> None:
    """Read the file once so both quantizers start from the page cache."""
    with open(path, "rb") as f:
        while f.read(1 << 26):
            pass


def warm_up_kernels() -> None:
    """Numba compiles (or loads from its cache) the kernels on first use: do that before timing."""
    from quant import QuantizedTensor, dequantize
    from quant.formats import FORMATS
    from quant.quantize import quantize_rows

    x = np.random.default_rng(0).standard_normal((2, 256)).astype(np.float32)
    for ggml_type in FORMATS:
        quantize_rows(x, ggml_type)
    dequantize(QuantizedTensor("warm-up", gguf.GGMLQuantizationType.F16, (2, 256), x.astype(np.float16).view(np.uint8)))


def digests(path: Path) -> dict[str, tuple[int, str]]:
    from quant.ggufio import read_header
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        return {t.name: (t.ggml_type, hashlib.blake2b(buf[t.offset:t.offset + t.nbytes], digest_size=16).hexdigest())
                for t in read_header(str(path), buf).tensors}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--type", default="Q4_K_M")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/gguf-runner-bench"))
    ap.add_argument("--input", type=Path, help="an existing F16/F32 GGUF to quantize instead")
    ap.add_argument("--skip-llama", action="store_true", help="time ours only")
    ap.add_argument("--clean", action="store_true", help="delete the F16 file afterwards")
    args = ap.parse_args()

    from quant.quantize import quantize_file
    from quant.recipe import FTYPES

    args.dir.mkdir(parents=True, exist_ok=True)
    src = args.input or args.dir / f"mistral7b-{args.layers}l-f16.gguf"
    if not src.exists():
        need = 2 * (VOCAB * DIM + args.layers * (2 * DIM * DIM + 2 * DIM * DIM // 4 + 3 * DIM * FFN))
        free = shutil.disk_usage(args.dir).free
        if free < 1.7 * need:
            sys.exit(f"{args.dir}: {free / 1e9:.1f} GB free, need ~{1.7 * need / 1e9:.1f} GB (input + 2 outputs)")
        build(src, args.layers)
    size = src.stat().st_size
    ours, theirs = args.dir / f"ours-{args.type}.gguf", args.dir / f"llama-{args.type}.gguf"

    warm_up_kernels()

    warm(src)
    t0 = time.perf_counter()
    quantize_file(src, ours, args.type, n_threads=args.threads)
    t_ours = time.perf_counter() - t0
    print(f"{src.name} ({size / 1e9:.2f} GB) -> {args.type}, {args.threads} threads")
    print(f"  ours      {t_ours:7.1f} s  ({size / t_ours / 1e6:6.1f} MB/s of input)")
    if args.skip_llama:
        return
    import llama_cpp
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.nthread = FTYPES[args.type][0], args.threads
    warm(src)
    t0 = time.perf_counter()
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(theirs).encode(), params)
    t_llama = time.perf_counter() - t0
    if rc != 0:
        sys.exit("llama_model_quantize failed")
    print(f"  llama.cpp {t_llama:7.1f} s  ({size / t_llama / 1e6:6.1f} MB/s of input)")
    print(f"  ratio     {t_ours / t_llama:7.2f} x llama.cpp's time")
    a, b = digests(ours), digests(theirs)
    same = sum(a[n] == b.get(n) for n in a)
    print(f"  outputs: {same} of {len(a)} tensors byte-identical (type and data)"
          + ("" if same == len(a) == len(b) else f"; differing: {[n for n in a if a[n] != b.get(n)][:5]}"))
    if args.clean:
        src.unlink()


if __name__ == "__main__":
    main()
