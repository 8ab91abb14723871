"""Side-by-side speed of gguf-runner and llama.cpp (llama-cpp-python) on one GGUF file, like llama-bench.

Each engine runs in its own subprocess (so peak RSS and resident mapping bytes are its own):
load time, prompt processing (pp: tokens/s for a prompt of n tokens, one eval of n_batch-sized
chunks), text generation (tg: tokens/s over n_gen single-token evals after one token of context),
peak RSS (VmHWM) and the resident bytes of the model file's mapping (/proc/self/smaps Rss).
Timed figures: min and median seconds over reps (tokens/s are reported from both).
"""
from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ENGINES = ("gguf-runner", "llama.cpp")


def mapped_rss(path: str | os.PathLike) -> int:
    """Resident bytes of this process's mappings of the file at path (/proc/self/smaps)."""
    target, total, inside = os.path.realpath(path), 0, False
    try:
        with open("/proc/self/smaps") as f:
            for line in f:
                head = line.split(None, 5)
                if len(head) >= 5 and "-" in head[0] and not head[0].endswith(":"):
                    inside = len(head) == 6 and os.path.realpath(head[5].strip()) == target
                elif inside and line.startswith("Rss:"):
                    total += int(line.split()[1]) * 1024
    except OSError:
        return -1
    return total


def peak_rss() -> int:
    """This process's peak resident bytes. Linux: VmHWM, since ru_maxrss carries over from the parent
    across fork and exec (a run started by a big process would report the parent's peak)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss if sys.platform == "darwin" else rss * 1024   # bytes on macOS, KiB elsewhere


class _Ours:
    def __init__(self, path, threads, n_ctx, n_batch):
        from . import runtime

        self.m = runtime.load(path, n_threads=threads, n_ctx=n_ctx, n_batch=n_batch)
        self.bos = self.m.tokenizer.bos_id or 1
        self.n_vocab = self.m.args.n_vocab

    def reset(self):
        self.m.reset()

    def eval(self, ids):
        self.m.eval(ids)


class _LlamaCpp:
    def __init__(self, path, threads, n_ctx, n_batch):
        from llama_cpp import Llama

        self.m = Llama(model_path=str(path), n_threads=threads, n_threads_batch=threads, n_ctx=n_ctx,
                       n_batch=n_batch, n_ubatch=n_batch, verbose=False)
        self.bos = self.m.token_bos()
        self.n_vocab = self.m.n_vocab()

    def reset(self):
        self.m.reset()
        self.m._ctx.kv_cache_clear() if hasattr(self.m._ctx, "kv_cache_clear") else None

    def eval(self, ids):
        self.m.eval(list(ids))


def _stats(seconds: list[float], n_tokens: int) -> dict:
    s = sorted(seconds)
    med = s[len(s) // 2] if len(s) % 2 else (s[len(s) // 2 - 1] + s[len(s) // 2]) / 2
    return {"tokens": n_tokens, "seconds": seconds, "tps_best": n_tokens / s[0], "tps_median": n_tokens / med}


def run_engine(engine: str, model, n_prompt=(128, 512), n_gen: int = 64, threads: int = 2, reps: int = 3,
               n_ctx: int | None = None, n_batch: int = 512) -> dict:
    """One engine in this process. Returns the figures as a dict."""
    import numpy as np

    n_ctx = n_ctx or max([*n_prompt, n_gen + 1]) + 8
    t0 = time.perf_counter()
    e = (_Ours if engine == "gguf-runner" else _LlamaCpp)(model, threads, n_ctx, n_batch)
    load_s = time.perf_counter() - t0
    rss_after_load = mapped_rss(model)
    rng = np.random.default_rng(0)
    low = min(259, e.n_vocab - 1)  # past the special and byte tokens of a SentencePiece vocabulary
    t0 = time.perf_counter()
    e.eval([e.bos])  # first use: Numba cache loads, page-in of what one token reads
    first_s = time.perf_counter() - t0
    rss_after_first = mapped_rss(model)
    e.reset()
    out = {"engine": engine, "threads": threads, "n_ctx": n_ctx, "n_batch": n_batch, "load_s": load_s,
           "first_eval_s": first_s, "mapped_rss_after_load": rss_after_load,
           "mapped_rss_after_first_token": rss_after_first, "pp": {}, "tg": None}
    for n in n_prompt:
        times = []
        for _ in range(reps):
            ids = [e.bos] + rng.integers(low, e.n_vocab, n - 1).tolist()
            e.reset()
            t = time.perf_counter()
            e.eval(ids)
            times.append(time.perf_counter() - t)
        out["pp"][str(n)] = _stats(times, n)
    if n_gen:
        times = []
        for _ in range(reps):
            e.reset()
            e.eval([e.bos])
            ids = rng.integers(low, e.n_vocab, n_gen).tolist()
            t = time.perf_counter()
            for tok in ids:
                e.eval([tok])
            times.append(time.perf_counter() - t)
        out["tg"] = _stats(times, n_gen)
    out["peak_rss"] = peak_rss()
    out["mapped_rss"] = mapped_rss(model)
    return out


def _subprocess(engine: str, model, **kw) -> dict:
    cmd = [sys.executable, "-m", "gguf_runner.bench", "--worker", engine, str(model), "--json-only",
           "--n-prompt", ",".join(map(str, kw["n_prompt"])), "--n-gen", str(kw["n_gen"]),
           "--threads", str(kw["threads"]), "--reps", str(kw["reps"]), "--n-batch", str(kw["n_batch"])]
    if kw.get("n_ctx"):
        cmd += ["--n-ctx", str(kw["n_ctx"])]
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode:
        raise RuntimeError(f"{engine} benchmark failed:\n{p.stderr[-4000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def bench(model, n_prompt=(128, 512), n_gen: int = 64, threads: int = 2, reps: int = 3,
          compare_llama_cpp: bool = False, n_ctx: int | None = None, n_batch: int = 512) -> dict:
    """Benchmark gguf-runner (and llama.cpp if compare_llama_cpp) on the GGUF at model, each in a
    subprocess, one after the other. Returns {"machine", "model", "results": [per engine]}."""
    kw = dict(n_prompt=tuple(n_prompt), n_gen=n_gen, threads=threads, reps=reps, n_ctx=n_ctx, n_batch=n_batch)
    engines = ENGINES if compare_llama_cpp else ENGINES[:1]
    return {"machine": machine(), "model": str(model), "model_bytes": os.path.getsize(model),
            "date": time.strftime("%Y-%m-%d %H:%M"), "results": [_subprocess(e, model, **kw) for e in engines]}


def machine() -> dict:
    cpu = ""
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu or platform.processor(), "cores": os.cpu_count(), "python": platform.python_version(),
            "load_avg": os.getloadavg()}


def markdown(report: dict) -> str:
    """One row per engine: load, pp (best / median), tg, peak RSS, resident mapping."""
    rs = report["results"]
    pps = list(rs[0]["pp"])
    head = ["engine", "load s"] + [f"pp{n} tok/s" for n in pps] + ["tg tok/s", "peak RSS GB", "mapping RSS GB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    fmt = lambda s: f"{s['tps_best']:.2f} ({s['tps_median']:.2f})"  # noqa: E731
    for r in rs:
        row = [r["engine"], f"{r['load_s']:.2f}"] + [fmt(r["pp"][n]) for n in pps]
        row += [fmt(r["tg"]) if r["tg"] else "-", f"{r['peak_rss'] / 1e9:.2f}", f"{r['mapped_rss'] / 1e9:.2f}"]
        lines.append("| " + " | ".join(row) + " |")
    if len(rs) == 2:
        a, b = rs
        ratio = ["ours / llama.cpp", f"{b['load_s'] / max(a['load_s'], 1e-9):.2f}x faster"]
        ratio += [f"{a['pp'][n]['tps_best'] / b['pp'][n]['tps_best']:.2f}x" for n in pps]
        ratio += [f"{a['tg']['tps_best'] / b['tg']['tps_best']:.2f}x" if a["tg"] else "-",
                  f"{a['peak_rss'] / b['peak_rss']:.2f}x", f"{a['mapped_rss'] / max(b['mapped_rss'], 1):.2f}x"]
        lines.append("| " + " | ".join(ratio) + " |")
    return "\n".join(lines) + "\n\n(tokens/s: best of reps, median in parentheses)"


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="gguf-runner bench", description=__doc__.splitlines()[0])
    ap.add_argument("model", help="path of a GGUF file")
    ap.add_argument("-p", "--n-prompt", default="128,512", help="prompt lengths, comma separated")
    ap.add_argument("-n", "--n-gen", type=int, default=64, help="tokens generated per rep")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-r", "--reps", type=int, default=3)
    ap.add_argument("--n-ctx", type=int, default=None, help="context size (default: just enough)")
    ap.add_argument("--n-batch", type=int, default=512)
    ap.add_argument("--compare", action="store_true", help="also run llama.cpp (llama-cpp-python)")
    ap.add_argument("--json", default=None, help="also write the report as JSON to this path")
    ap.add_argument("--json-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--worker", choices=ENGINES, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    n_prompt = tuple(int(n) for n in a.n_prompt.split(",") if n)
    if a.worker:
        print(json.dumps(run_engine(a.worker, a.model, n_prompt, a.n_gen, a.threads, a.reps, a.n_ctx, a.n_batch)))
        return 0
    report = bench(a.model, n_prompt, a.n_gen, a.threads, a.reps, a.compare, a.n_ctx, a.n_batch)
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
