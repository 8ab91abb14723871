"""The quantizer (quant/quantize.py) against llama.cpp, the oracle, at three levels:

- blocks: every format's numpy reference (`quantize_blocks`) and Numba kernel (`quantize_row`) give
  the same bytes as ggml's `ggml_quantize_chunk` (no importance matrix) on rows drawn from a dozen
  distributions (ties, zeros, constants, subnormals, huge and heavy-tailed values);
- types: the per-tensor type of every file type equals llama.cpp's (its `dry_run` logs them) on
  header-only files shaped like Mistral 7B, Mixtral 8x7B (both expert layouts), Llama 2 7B and 70B,
  Mistral Nemo and a tied-embedding model whose rows are not multiples of 256;
- files: `quantize_file` and `llama_model_quantize` on the same GGUF give the same tensors (types,
  shapes, bytes) and the same key/values; tiny random models and the real SmolLM2 (dequantized to
  F32, F16, BF16, and requantized from its Q4_1 file); our Q4_K_M files give llama.cpp the logits
  of its own Q4_K_M files.
All of it is byte-identical, so no RMSE fallback is needed for any type. llama.cpp writes tensors
sorted by layer and name; we keep the source order (the only difference between the two files).
"""
from __future__ import annotations

import ctypes
import mmap
import os
import re
from dataclasses import replace
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize

from conftest import llama_quantize
from models import LLAMA2, MISTRAL, MIXTRAL, MIXTRAL_SPLIT, Tiny, random_weights, write_gguf
from naive import Exact, argmax_agreement, rel_rmse
from quant.formats import FORMATS
from quant.ggufio import read_header
from quant.quantize import TYPES, quantize_file, quantize_rows
from quant.recipe import FTYPES, plan

BLOCK_TYPES = [T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q4_K, T.Q5_K, T.Q6_K]


# --- oracles ------------------------------------------------------------------------------------

def ggml_lib():
    import llama_cpp
    libs = sorted((Path(llama_cpp.__file__).parent / "lib").glob("libggml-base.*"))
    if not libs:
        pytest.skip("libggml-base not found next to llama_cpp")
    lib = ctypes.CDLL(str(libs[0]))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    return lib


def ggml_quantize(ggml_type: T, x: np.ndarray) -> np.ndarray:
    """ggml's own conversion of the rows of x (what llama_model_quantize calls, no imatrix)."""
    fmt = FORMATS[ggml_type]
    x = np.ascontiguousarray(x, np.float32)
    out = np.zeros((x.shape[0], x.shape[1] // fmt.BLOCK * fmt.BYTES), np.uint8)
    ggml_lib().ggml_quantize_chunk(int(ggml_type), x.ctypes.data, out.ctypes.data, 0, x.shape[0], x.shape[1], None)
    return out


LOG_LINE = re.compile(r"\]\s+(\S+)\s+- \[[^\]]*\], type =\s*(\S+), size =[^(\n]*(?:\((\S+)\))?")


def llama_cpp_types(path: Path, ftype: int) -> dict[str, str]:
    """The type llama.cpp gives each tensor, read from the log of a dry run (nothing is written)."""
    import llama_cpp
    import llama_cpp._logger

    text = []

    @llama_cpp.llama_log_callback
    def collect(level, msg, user_data):
        text.append(msg.decode("utf-8", "replace"))

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.dry_run, params.nthread = ftype, True, 1
    llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
    try:
        rc = llama_cpp.llama_model_quantize(str(path).encode(), str(path.with_suffix(".unused")).encode(), params)
    finally:
        llama_cpp.llama_log_set(llama_cpp._logger.llama_log_callback, ctypes.c_void_p(0))
    assert rc == 0, "".join(text)[-3000:]
    return {m.group(1): (m.group(3) or m.group(2)).upper() for m in LOG_LINE.finditer("".join(text))}


# --- block level ----------------------------------------------------------------------------------

def hard_rows(seed: int, rows_per_kind: int = 24, k: int = 1024) -> np.ndarray:
    """Rows from a dozen distributions, several of them made to hit ties and edge cases."""
    rng = np.random.default_rng(seed)
    shape = (rows_per_kind, k)
    kinds = [
        rng.standard_normal(shape),
        rng.standard_normal(shape) * rng.lognormal(0, 4, (rows_per_kind, 1)),  # scales 1e-7 .. 1e7
        rng.uniform(-1, 1, shape),
        rng.uniform(0.5, 1, shape), -rng.uniform(0.5, 1, shape),             # one-signed blocks
        rng.standard_cauchy(shape) * 0.01,                                     # heavy tails
        rng.standard_normal(shape) * (rng.random(shape) < 0.05),               # mostly zeros
        np.round(rng.standard_normal(shape) * 3) / 3,                          # few levels: ties
        rng.standard_normal(shape) * 1e-9,                                     # f16 subnormal scales
        rng.standard_normal(shape) * 3e4,                                      # near the f16 range
        np.repeat(rng.standard_normal((rows_per_kind, 1)), k, 1),              # constant rows
        np.zeros(shape),
    ]
    x = np.concatenate(kinds).astype(np.float32)
    x[-1, ::7] = -0.0
    return x


@pytest.mark.parametrize("ggml_type", BLOCK_TYPES, ids=lambda t: t.name)
def test_blocks_byte_identical_to_ggml(ggml_type):
    fmt = FORMATS[ggml_type]
    x = hard_rows(seed=int(ggml_type))
    ref = ggml_quantize(ggml_type, x)
    with np.errstate(all="ignore"):
        numpy_ref = fmt.quantize_blocks(x.reshape(-1, fmt.BLOCK)).reshape(ref.shape)
    numba = quantize_rows(x, ggml_type)
    for name, ours in (("numpy", numpy_ref), ("numba", numba)):
        differ = (ours.reshape(-1, fmt.BYTES) != ref.reshape(-1, fmt.BYTES)).any(1)
        assert not differ.any(), f"{ggml_type.name} {name}: {differ.sum()} of {differ.size} blocks differ"


def test_f16_rounding_edges_match_ggml():
    """Ties to even, the subnormal range, overflow to inf, nans (ggml makes them 0x7E00 | sign)."""
    bits = np.array([0x33000000, 0x33000001, 0x387FC000, 0x387FE000, 0x477FE000, 0x477FF000, 0x477FEFFF,
                     0x3F801000, 0x3F803000, 0x7F800000, 0xFF800000, 0x7FC00001, 0xFFC12345, 0x80000000,
                     0x00000001, 0x38800000, 0x38000000], dtype=np.uint32)
    x = np.concatenate([bits.view(np.float32), np.random.default_rng(0).standard_normal(15).astype(np.float32)])
    x = x.reshape(1, -1)
    ref = ggml_quantize(T.F16, x)
    assert np.array_equal(quantize_rows(x, T.F16), ref)
    assert np.array_equal(FORMATS[T.F16].quantize_blocks(x.reshape(-1, 1)).reshape(ref.shape), ref)


# --- per-tensor types on full-size shapes ---------------------------------------------------------

SHAPES = {
    "mistral-7b": dict(n_layer=32, dim=4096, ffn=14336, heads=32, kv_heads=8, vocab=32000),
    "mixtral-8x7b": dict(n_layer=32, dim=4096, ffn=14336, heads=32, kv_heads=8, vocab=32000, experts=8),
    "mixtral-8x7b-per-expert": dict(n_layer=32, dim=4096, ffn=14336, heads=32, kv_heads=8, vocab=32000,
                                    experts=8, merged=False),
    "llama2-7b": dict(n_layer=32, dim=4096, ffn=11008, heads=32, kv_heads=32, vocab=32000),
    "llama2-70b": dict(n_layer=80, dim=8192, ffn=28672, heads=64, kv_heads=8, vocab=32000),
    "mistral-nemo": dict(n_layer=40, dim=5120, ffn=14336, heads=32, kv_heads=8, vocab=131072, head_dim=128),
    "tied-576": dict(n_layer=30, dim=576, ffn=1536, heads=9, kv_heads=3, vocab=49152, tied=True),
}


def header_only_model(path: Path, n_layer, dim, ffn, heads, kv_heads, vocab, experts=0, head_dim=None,
                      tied=False, merged=True) -> Path:
    """A llama-architecture F16 GGUF with the real shapes and no data (a sparse file)."""
    head_dim = head_dim or dim // heads
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(4096)
    w.add_embedding_length(dim)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_dimension_count(head_dim)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(1)
    if head_dim != dim // heads:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    if experts:
        w.add_expert_count(experts)
        w.add_expert_used_count(2)
    sizes = []

    def add(name, shape, dtype=np.float16):
        sizes.append(int(np.prod(shape)) * np.dtype(dtype).itemsize)
        w.add_tensor_info(name, shape, np.dtype(dtype), sizes[-1])

    add("token_embd.weight", (vocab, dim))
    for i in range(n_layer):
        p = f"blk.{i}."
        add(p + "attn_norm.weight", (dim,), np.float32)
        add(p + "attn_q.weight", (heads * head_dim, dim))
        add(p + "attn_k.weight", (kv_heads * head_dim, dim))
        add(p + "attn_v.weight", (kv_heads * head_dim, dim))
        add(p + "attn_output.weight", (dim, heads * head_dim))
        add(p + "ffn_norm.weight", (dim,), np.float32)
        ffns = [("gate", (ffn, dim)), ("down", (dim, ffn)), ("up", (ffn, dim))]
        if not experts:
            for kind, shape in ffns:
                add(p + f"ffn_{kind}.weight", shape)
            continue
        add(p + "ffn_gate_inp.weight", (experts, dim), np.float32)
        for kind, shape in ffns:
            if merged:
                add(p + f"ffn_{kind}_exps.weight", (experts, *shape))
            else:
                for e in range(experts):
                    add(p + f"ffn_{kind}.{e}.weight", shape)
    add("output_norm.weight", (dim,), np.float32)
    if not tied:
        add("output.weight", (vocab, dim))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    os.truncate(path, -(-os.path.getsize(path) // 32) * 32 + sum(-(-n // 32) * 32 for n in sizes))
    return path


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_tensor_types_match_llama_cpp(tmp_path, shape):
    path = header_only_model(tmp_path / f"{shape}.gguf", **SHAPES[shape])
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        header = read_header(str(path), buf)
    tensors = [(t.name, t.ne, t.ggml_type) for t in header.tensors]
    for name, (ftype, _) in FTYPES.items():
        theirs = llama_cpp_types(path, ftype)
        ours = {t[0]: new.name for t, new in zip(tensors, plan(name, header.metadata, tensors))}
        assert len(theirs) == len(ours)
        differ = {n: (ours[n], theirs.get(n)) for n in ours if ours[n] != theirs.get(n)}
        assert not differ, f"{shape} {name}: {len(differ)} tensors differ, e.g. {list(differ.items())[:3]}"


# --- whole files ----------------------------------------------------------------------------------

def tensors_of(path: Path) -> dict[str, tuple[int, tuple[int, ...], bytes]]:
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        h = read_header(str(path), buf)
        return {t.name: (t.ggml_type, t.ne, buf[t.offset:t.offset + t.nbytes]) for t in h.tensors}


def key_values(path: Path) -> list[bytes]:
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        return [raw for raw, _ in read_header(str(path), buf).kv.values()]


def assert_same_as_llama_cpp(src: Path, tmp: Path, name: str, **kw) -> Path:
    ours, theirs = tmp / f"{src.stem}-{name}-ours.gguf", tmp / f"{src.stem}-{name}-llama.gguf"
    llama_quantize(src, theirs, FTYPES[name][0], requantize=kw.get("allow_requantize", False))
    quantize_file(src, ours, name, progress=False, **kw)
    a, b = tensors_of(ours), tensors_of(theirs)
    assert sorted(a) == sorted(b)
    differ = [n for n in a if a[n][:2] != b[n][:2] or a[n][2] != b[n][2]]
    assert not differ, (f"{src.name} {name}: {len(differ)} of {len(a)} tensors differ: "
                        f"{[(n, T(a[n][0]).name, T(b[n][0]).name) for n in differ[:3]]}")
    assert key_values(ours) == key_values(theirs)  # byte for byte, in llama.cpp's order
    assert list(a) == list(tensors_of(src))        # we keep the source order
    return ours


TINY_CASES = [(MISTRAL, name) for name in FTYPES] + [
    (cfg, name) for cfg in (LLAMA2, MIXTRAL, MIXTRAL_SPLIT)
    for name in ("Q4_K_M", "Q4_K_S", "Q5_K_M", "Q6_K", "Q8_0", "Q4_0")]
ODD = Tiny(kind="odd-rows", dim=288, n_heads=6, n_kv_heads=2, hidden=768)  # 288 % 256: the fallback types


@pytest.fixture(scope="module")
def tiny_f32(tmp_path_factory):
    root, built = tmp_path_factory.mktemp("tiny-f32"), {}

    def build(cfg, seed=0):
        if (cfg, seed) not in built:
            built[cfg, seed] = root / f"{cfg.kind}-{len(built)}-s{seed}.gguf"
            write_gguf(built[cfg, seed], cfg, random_weights(cfg, seed))
        return built[cfg, seed]

    return build


@pytest.mark.parametrize("cfg,name", TINY_CASES + [(ODD, "Q4_K_M"), (ODD, "Q5_K_S"), (ODD, "Q6_K")],
                         ids=lambda v: v if isinstance(v, str) else v.kind)
def test_tiny_model_files_match_llama_cpp(tiny_f32, tmp_path, cfg, name):
    assert_same_as_llama_cpp(tiny_f32(cfg), tmp_path, name)


def rewrite(src: Path, dst: Path, dtype=np.float32) -> Path:
    """src with every tensor dequantized (gguf-py) and stored as dtype (2-D+ tensors; 1-D stay F32)."""
    r = gguf.GGUFReader(str(src))
    w = gguf.GGUFWriter(str(dst), r.fields["general.architecture"].contents())
    for key, f in r.fields.items():
        if not key.startswith("GGUF.") and key != "general.architecture":
            w.add_key_value(key, f.contents(), f.types[0], sub_type=f.types[-1] if len(f.types) > 1 else None)
    for t in r.tensors:
        x = dequantize(t.data, t.tensor_type).reshape([int(n) for n in reversed(t.shape)]).astype(np.float32)
        if x.ndim < 2 or dtype == np.float32:
            w.add_tensor(t.name, x)
        elif dtype == np.float16:
            w.add_tensor(t.name, x.astype(np.float16))
        else:  # bfloat16: truncated float32 bits (the oracle converts them back exactly)
            w.add_tensor(t.name, (x.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8).reshape(*x.shape[:-1], -1),
                         raw_dtype=T.BF16)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


@pytest.fixture(scope="module")
def smollm2_f32(tmp_path_factory, smollm2_path) -> Path:
    """The real SmolLM2-135M weights (its Q4_1 file, dequantized) as an F32 GGUF: tied embeddings,
    rows of 576 and 1536 (not multiples of 256, so the fallback types show up)."""
    return rewrite(smollm2_path, tmp_path_factory.mktemp("smollm2") / "smollm2-f32.gguf")


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FTYPES))
def test_smollm2_files_match_llama_cpp(smollm2_f32, tmp_path, name):
    assert_same_as_llama_cpp(smollm2_f32, tmp_path, name)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [np.float16, "bf16"], ids=["f16", "bf16"])
def test_f16_and_bf16_inputs_match_llama_cpp(smollm2_f32, tmp_path, dtype):
    src = rewrite(smollm2_f32, tmp_path / f"smollm2-{dtype if isinstance(dtype, str) else 'f16'}.gguf", dtype)
    for name in ("Q4_K_M", "Q8_0", "F16", "BF16"):
        assert_same_as_llama_cpp(src, tmp_path, name)


@pytest.mark.slow
def test_requantize_needs_permission_and_then_matches_llama_cpp(smollm2_path, tmp_path):
    with pytest.raises(ValueError, match="already quantized"):
        quantize_file(smollm2_path, tmp_path / "refused.gguf", "Q4_K_M", progress=False)
    assert not list(tmp_path.iterdir())  # nothing written, no temporary file left
    assert_same_as_llama_cpp(smollm2_path, tmp_path, "Q4_K_M", allow_requantize=True)


def llama_cpp_logits(path, ids) -> np.ndarray:
    from test_fidelity import llama_cpp_logits as logits
    return logits(path, ids)


@pytest.mark.slow
@pytest.mark.parametrize("cfg", [MISTRAL, LLAMA2, MIXTRAL], ids=lambda c: c.kind)
def test_our_q4_k_m_gives_llama_cpp_its_own_fidelity(tiny_f32, tmp_path, cfg):
    """Loaded in llama.cpp, our Q4_K_M file is as faithful to the F32 model as llama.cpp's own
    (trivially: the tensors are byte-identical; this checks the file is usable end to end)."""
    f32 = tiny_f32(cfg)
    ours = assert_same_as_llama_cpp(f32, tmp_path, "Q4_K_M")
    theirs = tmp_path / f"{f32.stem}-Q4_K_M-llama.gguf"
    ids = np.random.default_rng(1).integers(3, cfg.vocab, size=64)
    exact = Exact(f32).logits(ids)
    ours, theirs = llama_cpp_logits(ours, ids), llama_cpp_logits(theirs, ids)
    p90_ours, p90_theirs = (np.percentile(rel_rmse(x, exact), 90) for x in (ours, theirs))
    print(f"{cfg.kind}: p90 rel-RMSE ours {p90_ours:.4f} llama.cpp {p90_theirs:.4f}")
    assert p90_ours <= max(1.25 * p90_theirs, 0.02)
    assert argmax_agreement(ours, exact) >= argmax_agreement(theirs, exact) - 0.02


# --- the file writer ------------------------------------------------------------------------------

def test_bad_arguments_write_nothing(tiny_f32, tmp_path):
    src = tiny_f32(MISTRAL)
    with pytest.raises(ValueError, match="unknown quantization type"):
        quantize_file(src, tmp_path / "x.gguf", "Q4_K_X", progress=False)
    with pytest.raises(ValueError, match="input file"):
        quantize_file(src, src, "Q8_0", progress=False)
    assert not list(tmp_path.iterdir())
    assert set(TYPES) == set(FTYPES)


def test_failure_leaves_dst_untouched(tiny_f32, tmp_path, monkeypatch):
    import quant.quantize as qz

    dst = tmp_path / "out.gguf"
    dst.write_bytes(b"previous")

    def boom(*args):
        raise RuntimeError("disk full")

    monkeypatch.setattr(qz, "quantize_rows", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        quantize_file(tiny_f32(MISTRAL), dst, "Q4_K_M", progress=False)
    assert dst.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["out.gguf"]  # the temporary file is gone


def test_progress_goes_to_stderr(tiny_f32, tmp_path, capsys):
    quantize_file(tiny_f32(MISTRAL), tmp_path / "q.gguf", "Q8_0", n_threads=1)
    out, err = capsys.readouterr()
    assert out == "" and "quantize [" in err and "100.0%" in err


def test_split_layout_gives_the_same_blocks_as_merged(tiny_f32, tmp_path):
    """Per-expert tensors (ffn_*.E) get the types and bytes of the slabs of the merged tensors."""
    cfg = replace(MIXTRAL, kind="mixtral-for-split-check")
    merged = quantize_file(tiny_f32(cfg), tmp_path / "merged.gguf", "Q4_K_M", progress=False)
    split = quantize_file(tiny_f32(replace(cfg, merged=False)), tmp_path / "split.gguf", "Q4_K_M", progress=False)
    a, b = tensors_of(merged), tensors_of(split)
    for name, (t, ne, data) in a.items():
        if "_exps." not in name:
            assert b[name] == (t, ne, data)
            continue
        per = len(data) // ne[2]
        for e in range(ne[2]):
            assert b[name.replace("_exps.", f".{e}.")] == (t, ne[:2], data[e * per:(e + 1) * per])
