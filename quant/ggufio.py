"""The GGUF header, as the quantizer needs it: each key/value kept as its raw bytes (copied to the
output unchanged), the few values the recipe reads, and the tensor infos; and the writer.

(quant/ sits below gguf_runner/, so it cannot use gguf_runner.gguf_file; this reads only what the
quantizer needs, bounds-checked.) Layout, little-endian, versions 2 and 3:
    "GGUF" | u32 version | u64 n_tensors | u64 n_kv | n_kv x (str key | u32 type | value)
    n_tensors x (str name | u32 n_dims | u64 ne[n_dims] | u32 ggml_type | u64 offset)
    zero padding to general.alignment (32) | tensor data, each at data_offset + offset
    str = u64 length + bytes; ne[0] is the row length.
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

# value type -> struct format of a scalar; 8 = string, 9 = array
SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
STRING, ARRAY, UINT32 = 8, 9, 4


@dataclass(frozen=True)
class TensorEntry:
    name: str
    ne: tuple[int, ...]  # ggml order: ne[0] is the row length
    ggml_type: int
    offset: int          # absolute offset of the data in the file
    nbytes: int

    @property
    def shape(self) -> tuple[int, ...]:
        """numpy order: outermost first."""
        return tuple(reversed(self.ne))


@dataclass
class Header:
    kv: dict[str, tuple[bytes, object]]  # key -> (raw bytes of the whole entry, value or None)
    tensors: list[TensorEntry]
    alignment: int

    @property
    def metadata(self) -> dict[str, object]:
        return {k: v for k, (_, v) in self.kv.items()}


class _Reader:
    def __init__(self, buf, path: str):
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, n: int) -> int:
        if n < 0 or self.pos + n > len(self.buf):
            raise ValueError(f"{self.path}: truncated or malformed GGUF header at offset {self.pos}")
        self.pos += n
        return self.pos - n

    def unpack(self, fmt: str):
        return struct.unpack_from("<" + fmt, self.buf, self.take(struct.calcsize("<" + fmt)))[0]

    def string(self) -> str:
        n = self.unpack("Q")
        return bytes(self.buf[self.take(n):self.pos]).decode("utf-8", "surrogateescape")

    def value(self, vtype: int):
        if vtype in SCALARS:
            return self.unpack(SCALARS[vtype])
        if vtype == STRING:
            return self.string()
        if vtype != ARRAY:
            raise ValueError(f"{self.path}: unknown GGUF value type {vtype} at offset {self.pos - 4}")
        itype, n = self.unpack("I"), self.unpack("Q")
        if itype in SCALARS:  # numeric arrays are decoded (per-layer head counts); others skipped
            fmt = "<" + SCALARS[itype]
            return np.frombuffer(self.buf, np.dtype(fmt), n, self.take(n * struct.calcsize(fmt))).copy()
        for _ in range(n):
            self.value(itype)
        return None


def read_header(path: str, buf) -> Header:
    """buf: the file's bytes (an mmap)."""
    r = _Reader(buf, path)
    if bytes(buf[:4]) != b"GGUF":
        raise ValueError(f"{path}: not a GGUF file")
    r.pos = 4
    version, n_tensors, n_kv = r.unpack("I"), r.unpack("Q"), r.unpack("Q")
    if version not in (2, 3):
        raise ValueError(f"{path}: unsupported GGUF version {version} (supported: 2, 3)")
    kv = {}
    for _ in range(n_kv):
        start = r.pos
        key = r.string()
        value = r.value(r.unpack("I"))
        kv[key] = (bytes(buf[start:r.pos]), value)
    alignment = int(kv.get("general.alignment", (None, 32))[1])
    infos = []
    for _ in range(n_tensors):
        name = r.string()
        ne = tuple(r.unpack("Q") for _ in range(r.unpack("I")))
        ggml_type, offset = r.unpack("I"), r.unpack("Q")
        if ggml_type not in GGML_QUANT_SIZES:
            raise ValueError(f"{path}: tensor {name!r} has unknown ggml type {ggml_type}")
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
        infos.append((name, ne, ggml_type, offset, math.prod(ne) // block * size))
    data_offset = -(-r.pos // alignment) * alignment
    tensors = [TensorEntry(n, ne, t, data_offset + off, nb) for n, ne, t, off, nb in infos]
    for t in tensors:
        if t.offset + t.nbytes > len(buf):
            raise ValueError(f"{path}: tensor {t.name!r} lies outside the file (truncated?)")
    return Header(kv, tensors, alignment)


def kv_u32(key: str, value: int) -> bytes:
    k = key.encode()
    return struct.pack("<Q", len(k)) + k + struct.pack("<II", UINT32, value)


def header_bytes(kv_raw: list[bytes], tensors: list[tuple[str, tuple[int, ...], int, int]], alignment: int) -> bytes:
    """Everything before the data section: tensors as (name, ne, ggml_type, offset in the data)."""
    out = [b"GGUF", struct.pack("<IQQ", 3, len(tensors), len(kv_raw)), *kv_raw]
    for name, ne, ggml_type, offset in tensors:
        n = name.encode()
        out.append(struct.pack(f"<Q{len(n)}sI{len(ne)}QIQ", len(n), n, len(ne), *ne, ggml_type, offset))
    head = b"".join(out)
    return head + bytes(-len(head) % alignment)
