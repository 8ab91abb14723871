"""Fuzz the load path with mutated GGUF files: `python tests/fuzz_gguf.py [--cases 10000] [--seed 0]`.

Sources: a tiny random model built in code and the real SmolLM2 file (its header, with the tensor
data left sparse so each case is cheap to write). Each case truncates, inflates, forges a header
field (counts, string and array lengths, value and tensor types, dims, offsets, alignment) or flips
bytes, then opens the result the way `load()` does: GGUFFile, ModelArgs, Weights.check and, for the
small vocabularies, the tokenizer, plus reading every tensor view's first and last byte.
Pass: the file opens, or ONE clean error (GGUFError, or ModelError / UnsupportedTypeError / ValueError
from the model layer) with a one-line message. Fail: any other exception, a hang (alarm), a huge
allocation (address-space limit -> MemoryError), or a crash (the process dies: SIGBUS, SIGSEGV).
Exit status 0 when every case passes.
"""
from __future__ import annotations

import argparse
import os
import resource
import signal
import sys
import tempfile
import traceback
from pathlib import Path

import gguf
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))
from gguf_runner.args import ModelArgs                    # noqa: E402
from gguf_runner.gguf_file import GGUFError, GGUFFile      # noqa: E402
from gguf_runner.tokenizer import Tokenizer                # noqa: E402
from gguf_runner.weights import Weights                    # noqa: E402

CLEAN = (GGUFError, ValueError)   # ModelError, UnsupportedTypeError, TemplateError... are ValueErrors


class Hang(Exception):
    pass


def field_spans(reader: gguf.GGUFReader) -> list[tuple[int, int]]:
    """(offset, size) of every fixed-size header field: counts, lengths, types, values, dims, offsets."""
    base = reader.data.ctypes.data
    parts = [p for f in reader.fields.values() for p in f.parts]
    parts += [p for t in reader.tensors for p in t.field.parts]
    spans = set()
    for p in parts:
        if p.dtype != np.uint8 or p.size == 1:       # uint8 parts longer than 1 are string bytes
            for k in range(min(p.size, 64)):          # (long numeric arrays: their first elements)
                spans.add((p.ctypes.data - base + k * p.dtype.itemsize, p.dtype.itemsize))
    return sorted(spans)


class Source:
    def __init__(self, path: Path, full_load: bool):
        reader = gguf.GGUFReader(path)
        self.size = path.stat().st_size
        self.header = path.read_bytes()[:reader.data_offset + 4096] if True else b""
        self.spans = [s for s in field_spans(reader) if s[0] + s[1] <= len(self.header)]
        self.full_load = full_load    # also build the tokenizer (cheap for small vocabularies)
        self.data_offset = reader.data_offset


def write_case(src: Source, data: bytes, size: int, path: Path) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.truncate(max(size, len(data)) if size >= 0 else len(data))   # sparse tail: zeros


def open_like_load(path: Path, full_load: bool) -> str:
    with GGUFFile(path) as f:
        for name in f.tensors:
            raw = f.raw(name).reshape(-1)
            if raw.size:
                int(raw[0]) + int(raw[-1])                 # a view past EOF would SIGBUS here
        embd = f.tensors.get("token_embd.weight")
        if full_load:
            Tokenizer.from_metadata(f.metadata)
        args = ModelArgs.from_metadata(f.metadata, n_vocab=embd.shape[0] if embd else 0)
        Weights(f).check(args)
    return "opened"


def mutate(data, src: Source, draw) -> tuple[bytes, int]:
    """-> (bytes to write, total size or -1 to keep the bytes' length)."""
    header, size = bytearray(src.header), src.size
    kind = draw(st.sampled_from(["field", "field", "field", "truncate", "flip", "insert", "delete", "zero"]))
    if kind == "field":
        off, width = draw(st.sampled_from(src.spans))
        top = 1 << (8 * width)
        orig = int.from_bytes(header[off:off + width], "little")
        value = draw(st.sampled_from([0, 1, 2, 3, top - 1, top >> 1, (top >> 1) - 1, orig + 1, orig - 1,
                                      orig + 31, orig * 2, orig << 8, 1 << 31, 1 << 32, 255, 12, 13, 30])) % top
        if draw(st.booleans()):
            value = draw(st.integers(0, top - 1))
        header[off:off + width] = value.to_bytes(width, "little")
    elif kind == "truncate":
        cut = draw(st.integers(0, min(size, len(header) + 8192)))
        return bytes(header[:cut]), -1
    elif kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            pos = draw(st.integers(0, len(header) - 1))
            header[pos] = draw(st.integers(0, 255))
    elif kind == "insert":
        pos = draw(st.integers(0, len(header)))
        header[pos:pos] = draw(st.binary(min_size=1, max_size=64))
    elif kind == "delete":
        pos = draw(st.integers(0, len(header) - 1))
        del header[pos:pos + draw(st.integers(1, 64))]
    else:
        pos = draw(st.integers(0, len(header) - 1))
        header[pos:pos + draw(st.integers(1, 256))] = bytes(min(256, len(header) - pos))
    if draw(st.integers(0, 9)) == 0:
        size = draw(st.integers(0, size))                 # also shrink the file under the tensors
    return bytes(header), size


def build_sources(tmp: Path) -> list[Source]:
    from conftest import smollm2_file
    from models import MIXTRAL, Tiny, random_weights, write_gguf

    sources = []
    for i, cfg in enumerate([Tiny(dim=64, hidden=128, n_heads=4, n_kv_heads=2, vocab=300),
                             Tiny(kind="mixtral", dim=64, hidden=64, n_heads=4, n_kv_heads=2, vocab=300,
                                  n_experts=4, merged=MIXTRAL.merged)]):
        path = tmp / f"tiny{i}.gguf"
        write_gguf(path, cfg, random_weights(cfg, i))
        sources.append(Source(path, full_load=True))
    sources.append(Source(smollm2_file(), full_load=False))
    return sources


def run(cases: int, seed: int, verbose: bool = False) -> int:
    failures: list[str] = []
    outcomes = {"opened": 0, "rejected": 0}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        sources = build_sources(tmp)
        case_path = tmp / "case.gguf"

        def on_alarm(*_):
            raise Hang("no result within 10 s")

        signal.signal(signal.SIGALRM, on_alarm)

        @settings(max_examples=cases, deadline=None, database=None, derandomize=False,
                  suppress_health_check=list(HealthCheck), print_blob=False)
        @given(st.data())
        def one_case(data):
            src = data.draw(st.sampled_from(sources))
            blob, size = mutate(data, src, data.draw)
            write_case(src, blob, size, case_path)
            signal.alarm(10)
            try:
                outcomes[open_like_load(case_path, src.full_load)] += 1
            except CLEAN as e:
                message = str(e)
                if not message or "\n" in message:
                    failures.append(f"unclear message {message!r}")
                outcomes["rejected"] += 1
            except Exception:
                failures.append(traceback.format_exc(limit=4))
            finally:
                signal.alarm(0)

        np.random.seed(seed)
        one_case()
    print(f"{cases} cases: {outcomes['opened']} opened, {outcomes['rejected']} rejected cleanly, "
          f"{len(failures)} failures")
    kinds = {}
    for f in failures:
        kinds.setdefault(f.strip().splitlines()[-1][:150], f)
    for f in list(kinds.values())[:12]:
        print("---\n" + f)
    return 1 if failures else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-memory-gb", type=float, default=8.0, help="address-space limit (huge allocations fail)")
    a = ap.parse_args()
    limit = int(a.max_memory_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    os.environ.setdefault("PYTHONHASHSEED", "0")
    return run(a.cases, a.seed)


if __name__ == "__main__":
    sys.exit(main())
