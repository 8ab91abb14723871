"""Quantize a GGUF file to a llama.cpp file type (Q4_K_M, Q8_0, ...), as llama.cpp's llama-quantize
does without an importance matrix: the same type for every tensor (recipe.py) and the same bytes
(each format module's quantize_row follows ggml's reference quantizer).

Streaming: the header (all key/values copied unchanged, then general.quantization_version = 2 and
general.file_type, as llama.cpp writes them) and the tensor infos are written first, since the
output types and sizes are known up front; then each tensor's data, in the source order, converted
a chunk of rows at a time (rows in parallel), so memory stays around one chunk. The output is
written to a temporary file next to dst and renamed over it when complete.
"""
from __future__ import annotations

import mmap
import os
import sys
import time
from functools import cache
from pathlib import Path

import numba
import numpy as np
from gguf.constants import GGML_QUANT_SIZES
from gguf.constants import GGMLQuantizationType as T
from numba import prange, types

from .formats import FORMATS, UnsupportedTypeError, type_name
from .ggufio import TensorEntry, header_bytes, kv_u32, read_header
from .jit import KERNEL, QUANT_SIG, kernel_address, njit_parallel, pointer_call
from .kernels import dequantize
from .recipe import FTYPES, plan
from .tensor import QuantizedTensor

__all__ = ["quantize_file", "TYPES"]

TYPES = tuple(FTYPES)  # the accepted `type` names
CHUNK_FLOATS = 1 << 23  # rows are converted 32 MB of float32 at a time
DROPPED_KEYS = ("general.quantization_version", "general.file_type", "split.no", "split.count",
                "split.tensors.count")
QUANTIZATION_VERSION = 2  # GGML_QNT_VERSION


_call_quantize = pointer_call(QUANT_SIG)


@njit_parallel(types.void(KERNEL, types.Array(types.float32, 2, "C", readonly=True), types.Array(types.uint8, 2, "C")))
def _quantize_rows(quantize_row, x, out):
    for r in prange(x.shape[0]):
        _call_quantize(quantize_row, (x[r], out[r]))


@cache
def _kernel(ggml_type: T) -> int:
    fmt = FORMATS.get(ggml_type)
    if fmt is None:
        raise UnsupportedTypeError(f"cannot quantize to {type_name(ggml_type)}")
    return kernel_address(fmt.quantize_row, QUANT_SIG)


def quantize_rows(x: np.ndarray, ggml_type: int) -> np.ndarray:
    """x (R, K) float32 -> (R, K // BLOCK * BYTES) uint8 in the given type, rows in parallel."""
    fmt = FORMATS.get(ggml_type)
    if fmt is None or x.ndim != 2 or x.shape[1] % fmt.BLOCK:
        raise ValueError(f"cannot quantize an array of shape {x.shape} to {type_name(ggml_type)}")
    out = np.empty((x.shape[0], x.shape[1] // fmt.BLOCK * fmt.BYTES), np.uint8)
    _quantize_rows(_kernel(T(ggml_type)), np.ascontiguousarray(x, np.float32), out)
    return out


def quantize_file(src, dst, type: str = "Q4_K_M", n_threads: int | None = None, progress: bool = True,
                  allow_requantize: bool = False) -> Path:
    """Write src quantized to `type` (one of TYPES) as dst and return dst. Inputs are F32, F16 or BF16
    GGUF files; with allow_requantize, also quantized ones (dequantized first, as llama.cpp's
    --allow-requantize; quality suffers). n_threads: default all of Numba's threads."""
    src, dst = Path(src), Path(dst)
    if type not in FTYPES:
        raise ValueError(f"unknown quantization type {type!r} (choose from {', '.join(TYPES)})")
    if dst.exists() and src.exists() and os.path.samefile(src, dst):
        raise ValueError(f"{dst} is the input file; write the output elsewhere")
    with open(src, "rb") as f:
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        header = read_header(str(src), buf)
        infos = header.tensors
        new_types = plan(type, header.metadata, [(t.name, t.ne, t.ggml_type) for t in infos])
        _check(infos, new_types, allow_requantize)
        kv = [raw for key, (raw, _) in header.kv.items() if key not in DROPPED_KEYS]
        kv += [kv_u32("general.quantization_version", QUANTIZATION_VERSION),
               kv_u32("general.file_type", FTYPES[type][0])]
        layout, offset = [], 0
        for t, new in zip(infos, new_types):
            ne = t.ne[:max(i + 1 for i, n in enumerate(t.ne) if n > 1 or i == 0)]  # as ggml_n_dims
            layout.append((t.name, ne, int(new), offset))
            offset += -(-_nbytes(t, new) // header.alignment) * header.alignment
        bar = _Progress(sum(t.nbytes for t in infos), progress)
        _write(buf, header, infos, new_types, layout, kv, dst, n_threads, bar)
    finally:
        try:
            buf.close()
        except BufferError:  # a view is still referenced (by a traceback): leave it to the GC
            pass
    return dst


def _write(buf, header, infos, new_types, layout, kv, dst: Path, n_threads, bar) -> None:
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(min(n_threads or threads, numba.config.NUMBA_NUM_THREADS))
        with open(tmp, "wb") as out:
            out.write(header_bytes(kv, layout, header.alignment))
            for t, new in zip(infos, new_types):
                written = _convert(buf, t, new, out, bar)
                out.write(bytes(-written % header.alignment))
                start = t.offset - t.offset % mmap.PAGESIZE  # done with these pages: drop them
                buf.madvise(mmap.MADV_DONTNEED, start, t.offset + t.nbytes - start)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        numba.set_num_threads(threads)
        bar.close()


def _nbytes(t: TensorEntry, new: T) -> int:
    block, size = GGML_QUANT_SIZES[new]
    return t.nbytes if new == t.ggml_type else int(np.prod(t.ne)) // block * size


def _check(infos: list[TensorEntry], new_types: list[T], allow_requantize: bool) -> None:
    """Fail before writing anything: requantization not allowed, or a type we cannot read."""
    for t, new in zip(infos, new_types):
        if new == t.ggml_type:
            continue
        if t.ggml_type not in (T.F32, T.F16, T.BF16) and not allow_requantize:
            raise ValueError(f"tensor {t.name!r} is already quantized ({type_name(t.ggml_type)}); "
                             "requantizing loses quality, pass allow_requantize=True to do it anyway")
        for ggml_type in (t.ggml_type, new):
            if ggml_type not in FORMATS:
                raise UnsupportedTypeError(f"tensor {t.name!r}: cannot convert {type_name(t.ggml_type)} "
                                           f"to {new.name} ({type_name(ggml_type)} is not supported)")


def _convert(buf, t: TensorEntry, new: T, out, bar: _Progress) -> int:
    """Write tensor t converted to `new`; returns the bytes written."""
    what = f"{t.name} {type_name(t.ggml_type)} -> {new.name}"
    if new == t.ggml_type:
        for start in range(0, t.nbytes, 4 * CHUNK_FLOATS):
            bar.show(what)
            n = min(t.nbytes - start, 4 * CHUNK_FLOATS)
            out.write(buf[t.offset + start:t.offset + start + n])
            bar.advance(n)
        return t.nbytes
    k = t.ne[0]
    n_rows = int(np.prod(t.ne[1:]))
    rows = np.frombuffer(buf, np.uint8, t.nbytes, t.offset).reshape(n_rows, t.nbytes // n_rows)
    step = max(1, CHUNK_FLOATS // k)
    written = 0
    for r0 in range(0, n_rows, step):
        bar.show(what)
        chunk = rows[r0:r0 + step]
        if t.ggml_type == T.F32:
            x = chunk.view(np.float32)
        else:
            x = dequantize(QuantizedTensor(t.name, t.ggml_type, (chunk.shape[0], k), chunk))
            x.flags.writeable = False
        q = quantize_rows(x, new)
        out.write(q.data)
        written += q.nbytes
        bar.advance(chunk.nbytes)
    return written


class _Progress:
    """One line on stderr, rewritten in place (a line every few seconds when stderr is not a tty)."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.done, self.enabled = max(total, 1), 0, enabled
        self.tty = enabled and sys.stderr.isatty()
        self.start = self.last = time.monotonic()

    def show(self, what: str, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self.last < (0.2 if self.tty else 5.0)):
            return
        self.last = now
        pct = 100 * self.done / self.total
        bar = "#" * int(pct / 4)
        line = f"quantize [{bar:<25}] {pct:5.1f}% {now - self.start:6.1f}s  {what}"
        sys.stderr.write(f"\r{line[:110]:<110}" if self.tty else line + "\n")
        sys.stderr.flush()

    def advance(self, n: int) -> None:
        self.done += n

    def close(self) -> None:
        if self.enabled:
            self.show("done" if self.done >= self.total else "stopped", force=True)
            if self.tty:
                sys.stderr.write("\n")
