"""gguf_file: our parser against gguf.GGUFReader (the oracle), a mini fuzz, bad files, laziness.

Small files are written with gguf.GGUFWriter; forged variants patch single header fields, located
through the oracle: each GGUFReader part is a numpy view into its map, so its address is its offset.
"""
import random
import re
import time
from pathlib import Path

import gguf
import numpy as np
import pytest

from gguf_runner.gguf_file import GGUFError, GGUFFile, TensorInfo, open_gguf

Q8_0 = gguf.GGMLQuantizationType.Q8_0


def write_small(path: Path, *, alignment: int | None = None, endian=gguf.GGUFEndian.LITTLE) -> Path:
    """Every value type, a nested array, a non-UTF-8 token; F32, F16, Q8_0 (raw) and 1-D tensors."""
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(path, "llama", endianess=endian)
    if alignment is not None:
        w.add_custom_alignment(alignment)
    w.add_uint8("t.u8", 200)
    w.add_int8("t.i8", -5)
    w.add_uint16("t.u16", 65000)
    w.add_int16("t.i16", -300)
    w.add_uint32("t.u32", 7)
    w.add_int32("t.i32", -7)
    w.add_uint64("t.u64", 2**40)
    w.add_int64("t.i64", -(2**40))
    w.add_float32("t.f32", 0.5)
    w.add_float64("t.f64", 1e-300)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "héllo ▁wörld")
    w.add_array("t.ints", [1, 2, 3])
    w.add_array("t.floats", [0.25, -1.5])
    w.add_array("t.bools", [True, False, True])
    w.add_array("t.tokens", ["a", "▁b", b"\xff\xfe", "<0x0A>", ""])
    w.add_array("t.nested", [[1, 2], [3]])
    w.add_tensor("w.f32", np.arange(3 * 64, dtype=np.float32).reshape(3, 64))
    w.add_tensor("w.f16", rng.standard_normal((2, 32)).astype(np.float16))
    q8 = gguf.quants.quantize(rng.standard_normal((4, 64)).astype(np.float32), Q8_0)
    w.add_tensor("w.q8", q8, raw_dtype=Q8_0)
    w.add_tensor("w.vec", np.ones(5, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def part_offset(reader: gguf.GGUFReader, part: np.ndarray) -> int:
    return part.ctypes.data - reader.data.ctypes.data


def forge(data: bytes, reader: gguf.GGUFReader, part: np.ndarray, value: int | bytes,
          index: int = 0) -> bytes:
    """data with element `index` of header part `part` (a GGUFReader view) replaced by value."""
    off = part_offset(reader, part) + index * part.dtype.itemsize
    raw = value if isinstance(value, bytes) else value.to_bytes(part.dtype.itemsize, "little")
    return data[:off] + raw + data[off + len(raw):]


def header_fields(reader: gguf.GGUFReader) -> list[tuple[int, int]]:
    """(offset, size) of each fixed-size header field: counts, lengths, types, values, ne, offsets."""
    parts = [p for f in reader.fields.values() for p in f.parts]
    parts += [p for t in reader.tensors for p in t.field.parts]
    spans = set()
    for p in parts:
        if p.dtype != np.uint8 or p.size == 1:  # uint8 parts longer than 1 are string bytes
            for k in range(p.size):
                spans.add((part_offset(reader, p) + k * p.dtype.itemsize, p.dtype.itemsize))
    return sorted(spans)


def assert_matches_reader(f: GGUFFile, path: Path, skip=()) -> None:
    reader = gguf.GGUFReader(path)
    keys = [k for k in reader.fields if not k.startswith("GGUF.")]
    assert list(f.metadata) == keys
    for k in keys:
        if k in skip:
            continue
        ours, theirs = f.metadata[k], reader.fields[k].contents()
        if isinstance(ours, np.ndarray):
            ours = ours.tolist()
        assert ours == theirs, k
        assert type(ours) is type(theirs), k
    assert f.version == reader.fields["GGUF.version"].contents()
    assert f.alignment == reader.alignment and f.data_offset == reader.data_offset
    assert list(f.tensors) == [t.name for t in reader.tensors]
    for t in reader.tensors:
        info = f.tensors[t.name]
        assert info.shape == tuple(reversed(t.shape.tolist())), t.name
        assert info.ggml_type == t.tensor_type and info.type_name == t.tensor_type.name
        assert info.offset == t.data_offset and info.nbytes == t.n_bytes, t.name
        raw = f.raw(t.name)
        assert raw.dtype == np.uint8 and raw.shape[:-1] == info.shape[:-1]
        assert raw.ctypes.data == f.data.ctypes.data + info.offset  # a view, not a copy
        assert not raw.flags.owndata and np.shares_memory(raw, f.data)
        assert np.array_equal(raw.reshape(-1), t.data.reshape(-1).view(np.uint8)), t.name


# ---- agreement with the oracle ----------------------------------------------------------------

def test_small_file_matches_reader(tmp_path):
    path = write_small(tmp_path / "small.gguf")
    with GGUFFile(path) as f:
        # the reader decodes strictly (t.tokens has invalid UTF-8) and flattens nested arrays
        assert_matches_reader(f, path, skip={"t.tokens", "t.nested"})
        md = f.metadata
        assert md["t.u64"] == 2**40 and md["t.i64"] == -(2**40) and md["t.f64"] == 1e-300
        assert md["t.bool"] is True and md["t.f32"] == 0.5 and md["t.str"] == "héllo ▁wörld"
        assert md["t.ints"].dtype == np.int32 and md["t.ints"].tolist() == [1, 2, 3]
        assert md["t.bools"].dtype == np.bool_ and md["t.bools"].tolist() == [True, False, True]
        assert md["t.floats"].dtype == np.float32
        assert md["t.nested"][0].tolist() == [1, 2] and md["t.nested"][1].tolist() == [3]
        tokens = md["t.tokens"]
        assert tokens[:2] == ["a", "▁b"] and tokens[3:] == ["<0x0A>", ""]
        assert tokens[2].encode("utf-8", "surrogateescape") == b"\xff\xfe"  # exact bytes kept
        t = f.tensors["w.q8"]
        assert t == TensorInfo("w.q8", (4, 64), 8, "Q8_0", t.offset, 4 * 2 * 34)
        assert f.raw("w.q8").shape == (4, 68) and f.raw("w.vec").shape == (20,)
        assert f.raw("w.f32").view(np.float32).tolist() == np.arange(192).reshape(3, 64).tolist()
        with pytest.raises(GGUFError, match="no tensor named 'nope'"):
            f.raw("nope")
        kept = f.raw("w.f16")
    assert f.data is None
    with pytest.raises(GGUFError, match="closed"):
        f.raw("w.f16")
    assert kept.view(np.float16).shape == (2, 32)  # views handed out stay valid after close()


def test_custom_alignment_and_no_tensors(tmp_path):
    path = write_small(tmp_path / "a.gguf", alignment=64)
    f = open_gguf(path)
    assert f.alignment == 64 and f.data_offset % 64 == 0
    assert all(t.offset % 64 == 0 for t in f.tensors.values())
    assert_matches_reader(f, path, skip={"t.tokens", "t.nested"})
    w = gguf.GGUFWriter(tmp_path / "vocab.gguf", "llama")
    w.add_array("tokenizer.ggml.tokens", ["x", "y"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    f = GGUFFile(tmp_path / "vocab.gguf")
    assert f.tensors == {} and f.metadata["tokenizer.ggml.tokens"] == ["x", "y"]


@pytest.mark.slow  # GGUFReader takes ~3 s on the vocabulary
def test_smollm2_matches_reader(smollm2_path):
    with GGUFFile(smollm2_path) as f:
        assert len(f.tensors) > 100 and len(f.metadata["tokenizer.ggml.tokens"]) == 49152
        assert_matches_reader(f, smollm2_path)


def test_string_arrays_long_entries_and_chunks(tmp_path):
    values = [f"t{i}" for i in range(40_000)] + ["x" * 5000, "y", "z" * 300_000, "é" * 70_000, ""]
    w = gguf.GGUFWriter(tmp_path / "s.gguf", "llama")
    w.add_array("t.long", values)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    assert GGUFFile(tmp_path / "s.gguf").metadata["t.long"] == values
    data = (tmp_path / "s.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[:data.index(b"zzzz") + 1000])
    with pytest.raises(GGUFError, match=r"key 't.long'\[40002\]: needs 300000 bytes at offset \d+ "):
        GGUFFile(tmp_path / "cut.gguf")
    (tmp_path / "cut.gguf").write_bytes(data[:-3])
    with pytest.raises(GGUFError, match=r"key 't.long'\[40004\] length: needs 8 bytes"):
        GGUFFile(tmp_path / "cut.gguf")


# ---- untrusted input: fuzz ----------------------------------------------------------------------

def check_opens_or_rejects(path: Path) -> bool:
    """True if the file opens (and every raw() view stays inside it), False on GGUFError."""
    try:
        f = GGUFFile(path)
    except GGUFError as e:
        assert str(e) and "\n" not in str(e)
        return False
    with f:
        for t in f.tensors.values():
            raw = f.raw(t.name)
            start = raw.ctypes.data - f.data.ctypes.data
            assert f.data_offset <= start and start + raw.nbytes <= f.file_size
            assert raw.nbytes == t.nbytes
            int(raw.sum(dtype=np.uint64))  # touch every byte
    return True


def test_fuzz_truncations_and_mutations(tmp_path):
    good_path = write_small(tmp_path / "good.gguf", alignment=64)
    good = good_path.read_bytes()
    reader = gguf.GGUFReader(good_path)
    header_end = reader.data_offset
    data_end = max(t.data_offset + t.n_bytes for t in reader.tensors)
    cases = [good[:n] for n in range(header_end + 1)]  # every cut of the header: all rejected
    cases += [good[:data_end - 1], good[:data_end], good]
    rng = np.random.default_rng(1)
    for _ in range(300):  # random byte mutations in the header
        data = bytearray(good)
        for pos in rng.integers(0, header_end, rng.integers(1, 5)):
            data[pos] = rng.integers(0, 256)
        cases.append(bytes(data))
    for off, size in header_fields(reader):  # forged counts, lengths, types, dims, offsets, values
        orig = int.from_bytes(good[off:off + size], "little")
        top = 1 << (8 * size)
        for v in (0, 1, top - 1, top >> 1, (orig + 1) % top, (orig - 1) % top,
                  (orig + 64) % top, int(rng.integers(0, min(top, 2**63)))):
            cases.append(good[:off] + v.to_bytes(size, "little") + good[off + size:])
    outcomes = []
    for i, data in enumerate(cases):
        path = tmp_path / f"case{i}.gguf"
        path.write_bytes(data)
        outcomes.append(check_opens_or_rejects(path))
        path.unlink()
    assert any(outcomes) and not all(outcomes)
    assert not any(outcomes[:header_end + 2]) and all(outcomes[header_end + 2:header_end + 4])


# ---- untrusted input: specific bad files ------------------------------------------------------

def kv(name, i):
    """Header part i of key `name`: 0 key length, 1 key bytes, 2 value type, 3.. the value."""
    return lambda r: r.fields[name].parts[i]


def ti(name, i):
    """Header part i of tensor `name`: 0 name length, 1 name, 2 n_dims, 3 ne, 4 type, 5 offset."""
    return lambda r: next(t for t in r.tensors if t.name == name).field.parts[i]


BAD = [  # (case, header part, new value: int | bytes | f(old), element index, expected message)
    ("version 1", kv("GGUF.version", 0), 1, 0, "version 1 is not supported"),
    ("version 9", kv("GGUF.version", 0), 9, 0, "unsupported GGUF version 9"),
    ("huge n_kv", kv("GGUF.kv_count", 0), 2**63, 0, "claims 9223372036854775808 key/values"),
    ("huge n_tensors", kv("GGUF.tensor_count", 0), 2**64 - 1, 0, "key/values and 1844.* tensors"),
    ("huge key length", kv("t.str", 0), 2**62, 0, r"key #\d+: needs 4611686018427387904 bytes"),
    ("huge string length", kv("t.str", 3), 2**62, 0, r"key 't.str': needs 4611686018427387904"),
    ("huge array length", kv("t.tokens", 4), 2**40, 0, "'t.tokens': array length 1099511627776"),
    ("unknown value type", kv("t.u32", 2), 99, 0, "'t.u32': unknown value type 99"),
    ("unknown array type", kv("t.ints", 3), 13, 0, "'t.ints': unknown array element type 13"),
    ("bool not 0/1", kv("t.bool", 3), 2, 0, "'t.bool': bool value 2"),
    ("key not utf-8", kv("t.u32", 1), 0xFF, 0, r"key #\d+ at offset \d+ is not valid UTF-8"),
    ("duplicate key", kv("t.u16", 1), ord("i"), 2, "duplicate key 't.i16'"),
    ("unknown ggml type", ti("w.f16", 4), 4, 0, "'w.f16': unknown ggml type 4"),
    ("offset outside file", ti("w.vec", 5), 2**40, 0, "'w.vec': data .* outside the file"),
    ("misaligned offset", ti("w.vec", 5), lambda v: v + 4, 0, "not a multiple of the alignment 32"),
    ("overlapping tensors", ti("w.f16", 5), 0, 0, "'w.f32' and 'w.f16' overlap"),
    ("row not whole blocks", ti("w.q8", 3), 48, 0, "48 is not divisible by the Q8_0 block size 32"),
    ("n_dims 5", ti("w.f32", 2), 5, 0, "'w.f32': n_dims 5"),
    ("zero dim", ti("w.f32", 3), 0, 1, r"'w.f32': bad dims \[64, 0\]"),
    ("duplicate tensor", ti("w.f16", 1), b"32", 3, "duplicate tensor name 'w.f32'"),
]


@pytest.mark.parametrize("case, part, value, index, message", BAD, ids=[c[0] for c in BAD])
def test_bad_header(tmp_path, case, part, value, index, message):
    path = write_small(tmp_path / "good.gguf")
    data, reader = path.read_bytes(), gguf.GGUFReader(path)
    p = part(reader)
    data = forge(data, reader, p, value(int(p[index])) if callable(value) else value, index)
    (tmp_path / "bad.gguf").write_bytes(data)
    with pytest.raises(GGUFError, match=message) as e:
        GGUFFile(tmp_path / "bad.gguf")
    assert str(e.value).startswith(str(tmp_path / "bad.gguf") + ": ") and "\n" not in str(e.value)


def test_bad_alignment(tmp_path):
    data = write_small(tmp_path / "a.gguf", alignment=64).read_bytes()
    reader = gguf.GGUFReader(tmp_path / "a.gguf")
    for value in (48, 0, 2**31):
        path = tmp_path / f"a{value}.gguf"
        path.write_bytes(forge(data, reader, reader.fields["general.alignment"].parts[3], value))
        with pytest.raises(GGUFError, match=f"general.alignment .* got {value} "):
            GGUFFile(path)
    w = gguf.GGUFWriter(tmp_path / "b.gguf", "llama")
    w.add_uint64("general.alignment", 64)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    with pytest.raises(GGUFError, match="general.alignment .* got 64 of type uint64"):
        GGUFFile(tmp_path / "b.gguf")


def test_nested_arrays_depth_limited(tmp_path):
    for depth, ok in ((4, True), (5, False)):
        value = [7]
        for _ in range(depth - 1):
            value = [value]
        w = gguf.GGUFWriter(tmp_path / f"n{depth}.gguf", "llama")
        w.add_array("t.deep", value)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.close()
        if ok:
            got = GGUFFile(tmp_path / f"n{depth}.gguf").metadata["t.deep"]
            assert got[0][0][0].tolist() == [7]
        else:
            with pytest.raises(GGUFError, match="nested deeper than 4"):
                GGUFFile(tmp_path / f"n{depth}.gguf")


def test_version_2_opens(tmp_path):
    data = write_small(tmp_path / "v3.gguf").read_bytes()
    (tmp_path / "v2.gguf").write_bytes(data[:4] + (2).to_bytes(4, "little") + data[8:])
    f2, f3 = GGUFFile(tmp_path / "v2.gguf"), GGUFFile(tmp_path / "v3.gguf")
    assert (f2.version, f3.version) == (2, 3) and f2.tensors == f3.tensors


def test_not_gguf_files(tmp_path):
    ggml = b"GGML" + write_small(tmp_path / "good.gguf").read_bytes()[4:]
    cases = {"empty.gguf": b"", "text.gguf": b"hello, this is not a model\n", "tiny.gguf": b"GG",
             "ggml.gguf": ggml}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    with pytest.raises(GGUFError, match="empty file"):
        GGUFFile(tmp_path / "empty.gguf")
    with pytest.raises(GGUFError, match="not a GGUF file"):
        GGUFFile(tmp_path / "text.gguf")
    with pytest.raises(GGUFError, match="not a GGUF file"):
        GGUFFile(tmp_path / "tiny.gguf")
    with pytest.raises(GGUFError, match=r"not a GGUF file \(starts with b'GGML', expected b'GGUF'"):
        GGUFFile(tmp_path / "ggml.gguf")
    with pytest.raises(GGUFError, match="is a directory"):
        GGUFFile(tmp_path)
    with pytest.raises(GGUFError, match="No such file"):
        GGUFFile(tmp_path / "missing.gguf")
    with pytest.raises(GGUFError, match="big-endian"):
        GGUFFile(write_small(tmp_path / "be.gguf", endian=gguf.GGUFEndian.BIG))


# ---- opening is lazy and fast -----------------------------------------------------------------

def mapping_rss_kb(path: Path) -> int:
    """Resident kB of this process's mappings of `path`, from /proc/self/smaps."""
    rss, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            inside = line.split(maxsplit=5)[5:] == [str(path)]
        elif inside and line.startswith("Rss:"):
            rss += int(line.split()[1])
    return rss


def test_open_reads_only_the_header(tmp_path):
    path = tmp_path / "big.gguf"
    shape = (50 * 1024, 4096)  # 200 MiB as I8
    w = gguf.GGUFWriter(path, "llama")
    w.add_tensor_info("big", shape, np.dtype(np.int8), shape[0] * shape[1])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    header = w.fout[0].tell()
    w.close()
    data_offset = -(-header // 32) * 32
    with open(path, "r+b") as fh:  # sparse: the tensor is a hole, nothing to write
        fh.truncate(data_offset + shape[0] * shape[1])
    with GGUFFile(path) as f:
        assert f.tensors["big"].nbytes == 200 * 2**20 and f.file_size >= 200 * 2**20
        assert mapping_rss_kb(path) <= 256  # the header page plus kernel fault-around at most
        raw = f.raw("big")
        assert raw.shape == shape and mapping_rss_kb(path) <= 256
        int(raw[:256].sum())  # touch 1 MiB: the measurement does see this mapping
        assert mapping_rss_kb(path) >= 1024


def test_smollm2_opens_lazily(smollm2_path):
    GGUFFile(smollm2_path).close()  # warm the page cache and imports
    t0 = time.perf_counter()
    f = GGUFFile(smollm2_path)
    print(f"open SmolLM2: {(time.perf_counter() - t0) * 1e3:.1f} ms (a figure, not a test)")
    assert len(f.tensors) > 0
    assert mapping_rss_kb(Path(smollm2_path)) < 8 * 1024  # header ~1.8 MB of a 98 MB file


def test_150k_vocab_opens(tmp_path):
    rng = random.Random(2)
    alphabet = "abcdefghijklmnopqrstuvwxyz▁Ġ0123456789éü中"
    n = 150_000
    tokens = ["".join(rng.choices(alphabet, k=rng.randint(1, 11))) + str(i) for i in range(n)]
    w = gguf.GGUFWriter(tmp_path / "vocab.gguf", "llama")
    w.add_array("tokenizer.ggml.tokens", tokens)
    w.add_array("tokenizer.ggml.scores", [float(-i) for i in range(n)])
    w.add_array("tokenizer.ggml.token_type", [1] * n)
    w.add_array("tokenizer.ggml.merges", [f"{a} {b}" for a, b in zip(tokens, tokens[1:])])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    GGUFFile(tmp_path / "vocab.gguf").close()
    t0 = time.perf_counter()
    f = GGUFFile(tmp_path / "vocab.gguf")
    print(f"open 150k vocab + merges: {(time.perf_counter() - t0) * 1e3:.1f} ms (a figure, not a test)")
    assert f.metadata["tokenizer.ggml.tokens"] == tokens
    assert f.metadata["tokenizer.ggml.merges"][-1] == f"{tokens[-2]} {tokens[-1]}"
    assert f.metadata["tokenizer.ggml.scores"].shape == (n,)
