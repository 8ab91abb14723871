"""Kernel oracles: matvec / matmul / get_rows against dequantize-then-float64-numpy, thread-count
independence, zero-copy expert views (checked with mincore), errors, and Numba's on-disk cache.
exact=True: float32 weights times float32 activations (bar 1e-5); the default integer path of
Q4_K / Q6_K (16-bit activations, activations.py) has its own tests and bar (1e-3)."""
import ctypes
import mmap
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader

from quant import (SUPPORTED_TYPES, QuantizedTensor, UnsupportedTypeError, dequantize, get_rows,
                   matmul, matmuls, matvec)
from quant.formats import FORMATS
from quant.kernels import _DECODE as INT_KERNELS, _DECODE32, _DECODE_TOKENS
import quant.prefill as pf
from quant.prefill import _UNPACK, _UNPACK32

K = 768  # a multiple of every block size (3 super-blocks)
N = 37  # odd, so rows do not split evenly between threads
F16_FIELDS = {T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
              T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208]}


@pytest.fixture(autouse=True)
def integer_kernels(monkeypatch):
    """The integer kernels run here on any CPU (the portable loops where there is no AVX2, the runtime's
    float32 path there: kernels.INTEGER)."""
    import quant.kernels as qk
    monkeypatch.setattr(qk, "INTEGER", True)


def fill_random(data: np.ndarray, ggml_type, seed: int) -> np.ndarray:
    """Write random valid blocks into uint8 data (..., row_bytes): finite f16 scales."""
    fmt, rng = FORMATS[ggml_type], np.random.default_rng(seed)
    blocks = data.reshape(-1, fmt.BYTES)
    n = blocks.shape[0]
    if ggml_type in (T.F32, T.F16, T.BF16):
        w = rng.standard_normal(n).astype(np.float32)
        raw = {T.F32: w, T.F16: w.astype(np.float16), T.BF16: (w.view(np.uint32) >> 16).astype(np.uint16)}
        blocks[:] = raw[ggml_type].view(np.uint8).reshape(n, fmt.BYTES)
        return data
    blocks[:] = rng.integers(0, 256, blocks.shape, dtype=np.uint8)
    for off in F16_FIELDS[ggml_type]:
        scale = (rng.uniform(1e-3, 1e-1, n) * rng.choice([-1, 1], n)).astype(np.float16)
        blocks[:, off:off + 2] = scale.view(np.uint8).reshape(n, 2)
    return data


def random_tensor(ggml_type, shape, seed=0, name="w") -> QuantizedTensor:
    fmt = FORMATS[ggml_type]
    data = np.empty((*shape[:-1], shape[-1] // fmt.BLOCK * fmt.BYTES), np.uint8)
    return QuantizedTensor(name, ggml_type, shape, fill_random(data, ggml_type, seed))


def assert_close(ours, ref, what, rel=1e-5):
    assert ours.dtype == np.float32 and ours.shape == ref.shape, what
    diff = ours.astype(np.float64) - ref
    assert np.linalg.norm(diff) <= rel * np.linalg.norm(ref), what
    assert np.abs(diff).max() <= rel * np.abs(ref).max(), what


@pytest.mark.parametrize("ggml_type", SUPPORTED_TYPES, ids=lambda t: t.name)
def test_matvec_matmul_vs_float64(ggml_type):
    w = random_tensor(ggml_type, (N, K), seed=int(ggml_type))
    wf = dequantize(w).astype(np.float64)
    rng = np.random.default_rng(1)
    x = rng.standard_normal(K).astype(np.float32)
    assert_close(matvec(w, x, exact=True), wf @ x, f"{ggml_type.name} matvec")
    for t in (1, 3, 17, 64):
        xs = rng.standard_normal((t, K)).astype(np.float32)
        assert_close(matmul(w, xs, exact=True), xs.astype(np.float64) @ wf.T, f"{ggml_type.name} matmul T={t}")


@pytest.mark.parametrize("ggml_type", SUPPORTED_TYPES, ids=lambda t: t.name)
def test_one_and_two_threads_bit_identical(ggml_type, two_threads):
    w = random_tensor(ggml_type, (N, K), seed=7)
    rng = np.random.default_rng(2)
    x, xs = rng.standard_normal(K).astype(np.float32), rng.standard_normal((5, K)).astype(np.float32)
    xs24 = rng.standard_normal((24, K)).astype(np.float32)   # 5 tokens go token by token for some types, 24 by chunk
    results = []
    for threads in (1, 2):
        numba.set_num_threads(threads)
        results.append([matvec(w, x), matmul(w, xs), matmul(w, xs24), dequantize(w), get_rows(w, [5, 0, 36])])
    for a, b in zip(*results):
        np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))


def test_matmul_in_several_tiles(monkeypatch):
    """Tiles of 5 rows (the last one partial) give the same accuracy as one tile."""
    import quant.kernels
    monkeypatch.setattr(quant.kernels, "TILE_FLOATS", 5 * K)
    w = random_tensor(T.Q4_K, (N, K), seed=3)
    xs = np.random.default_rng(4).standard_normal((9, K)).astype(np.float32)
    assert_close(matmul(w, xs, exact=True), xs.astype(np.float64) @ dequantize(w).astype(np.float64).T, "tiled")


# --- the integer decode path of Q4_K, Q5_K, Q6_K, Q8_0 and the integer prefill of Q4_K, Q5_K, Q6_K (16-bit activations) ---

@pytest.mark.parametrize("ggml_type", list(INT_KERNELS), ids=lambda t: t.name)
def test_integer_path_vs_float64(ggml_type, monkeypatch):
    monkeypatch.setattr(pf, "TILE_BYTES", 1 << 14)   # prefill: tiles of 16 tokens, blocks of 16 rows,
    monkeypatch.setattr(pf, "SEG_BLOCKS", 2)         # K = 768 in two segments (512, 256)
    w = random_tensor(ggml_type, (N, K), seed=11)
    wf = dequantize(w).astype(np.float64)
    rng = np.random.default_rng(12)
    x = rng.standard_normal(K).astype(np.float32)
    assert_close(matvec(w, x), wf @ x, f"{ggml_type.name} matvec", rel=1e-3)
    for t in (1, 3, 17, 70):  # 70: more than one token tile
        xs = (rng.standard_normal((t, K)) * rng.uniform(0.01, 100, (t, 1))).astype(np.float32)
        ys = matmul(w, xs)
        assert_close(ys, xs.astype(np.float64) @ wf.T, f"{ggml_type.name} matmul T={t}", rel=1e-3)
        if ggml_type not in _UNPACK:
            continue   # Q8_0's prefill quantizes x per 32 (prefill.B32), its decode per 256: checked above against float64
        # integer prefill (int16 weights x 16-bit activations) and decode (two int8 planes,
        # simd.q4_k_row) round differently, by about 1e-7 of the result
        decode = np.stack([matvec(w, v) for v in xs]).astype(np.float64)
        np.testing.assert_allclose(ys, decode, rtol=0, atol=1e-6 * np.abs(decode).max())


@pytest.mark.parametrize("k", [576, K])
@pytest.mark.parametrize("ggml_type", list(_DECODE32), ids=lambda t: t.name)
def test_integer_path_of_32_blocks(ggml_type, k, monkeypatch):
    """Q4_0, Q4_1 and Q8_0 rows of any K against activations quantized per 32 (Q8_0 at K = 768 takes the
    per-256 kernel): close to float64, and every SIMD path bit-identical to the portable one."""
    import quant.kernels as qk
    from quant.activations import quantize32_reference, quantize_activations32
    from quant.simd import HAS_AVX2, HAS_AVX512
    w = random_tensor(ggml_type, (N, k), seed=21)
    x = np.random.default_rng(22).standard_normal(k).astype(np.float32) * 30
    for a, b in zip(quantize32_reference(x), quantize_activations32(x)):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert_close(matvec(w, x), dequantize(w).astype(np.float64) @ x, f"{ggml_type.name} K={k}", rel=1e-3)
    assert not np.array_equal(matvec(w, x), matvec(w, x, exact=True))   # the integer path ran, not the float one
    results = {}
    for path, ok in (("portable", True), ("avx2", HAS_AVX2), ("avx512", HAS_AVX512)):
        if ok:
            monkeypatch.setattr(qk, "INT_PATH", path)
            results[path] = matvec(w, x).view(np.uint32)
    for path, got in results.items():
        np.testing.assert_array_equal(got, results["portable"], err_msg=path)


@pytest.mark.parametrize("k", [544, 576, 896, K])
@pytest.mark.parametrize("ggml_type", list(_UNPACK32), ids=lambda t: t.name)
def test_prefill_of_32_blocks(ggml_type, k, monkeypatch):
    """Prefill of Q4_0, Q4_1, Q8_0, Q5_0, Q5_1 (prefill._int_matmul, layout 512: sixteen blocks interleaved; a last group
    of 1 block at K = 544, 2 at 576, 8 at 768 (K), 12 padded to 16 at 896): close to float64, the same bits on
    every path."""
    import quant.kernels as qk
    from quant.simd import HAS_AVX2, HAS_AVX512
    monkeypatch.setattr(pf, "TILE_BYTES", 1 << 14)   # several token tiles and row blocks
    w = random_tensor(ggml_type, (N, k), seed=21)
    xs = (np.random.default_rng(23).standard_normal((41, k)) * np.random.default_rng(24).uniform(0.01, 100, (41, 1))).astype(np.float32)
    ref = xs.astype(np.float64) @ dequantize(w).astype(np.float64).T
    prefill = {}
    for path in [p for p, ok in (("portable", True), ("avx2", HAS_AVX2), ("avx512", HAS_AVX512)) if ok]:
        monkeypatch.setattr(qk, "INT_PATH", path)
        prefill[path] = [matmul(w, xs[:t]) for t in (4, 41)]
        for t, got in zip((4, 41), prefill[path]):
            assert_close(got, ref[:t], f"{ggml_type.name} K={k} T={t} {path}", rel=1e-3)
            np.testing.assert_array_equal(got.view(np.uint32), prefill["portable"][t > 4].view(np.uint32), err_msg=path)


@pytest.mark.parametrize("k", [1024 + 512, 2048])
@pytest.mark.parametrize("ggml_type", list(_UNPACK), ids=lambda t: t.name)
def test_prefill_of_grouped_k_quants(ggml_type, k, monkeypatch):
    """K-quant prefill with blocks interleaved (Q4_K four a group where K % 1024 == 0, else one; Q5_K two where
    K % 512 == 0; Q6_K four, with 14-bit activations, where K % 1024 == 0): close to float64, the same bits on
    every path, over several token tiles, row blocks and segments of K; the layout _prefill_scheme picks."""
    import quant.kernels as qk
    from quant.simd import HAS_AVX2, HAS_AVX512
    monkeypatch.setattr(pf, "TILE_BYTES", 1 << 14)
    monkeypatch.setattr(pf, "SEG_BLOCKS", 4)
    monkeypatch.setattr(pf, "AMX", False)   # the AVX-512 kernels, not AMX's (tests/test_amx.py)
    w = random_tensor(ggml_type, (N, k), seed=41)
    want_g = {T.Q4_K: 4 if k % 1024 == 0 else 1, T.Q5_K: 2, T.Q6_K: 4 if k % 1024 == 0 else 1}[ggml_type]
    qmax = pf.QMAX14 if ggml_type == T.Q6_K and want_g > 1 else pf.QMAX
    for path in ("portable", "avx2", "avx512"):
        assert pf._prefill_scheme(w, False, 37, path) == (want_g, qmax)
        assert pf._prefill_scheme(w, False, pf.GROUP_TOKENS - 1, path) == (1, pf.QMAX)
    xs = (np.random.default_rng(42).standard_normal((37, k)) * np.random.default_rng(43).uniform(0.01, 100, (37, 1))).astype(np.float32)
    ref = xs.astype(np.float64) @ dequantize(w).astype(np.float64).T
    prefill = {}
    for path in [p for p, ok in (("portable", True), ("avx2", HAS_AVX2), ("avx512", HAS_AVX512)) if ok]:
        monkeypatch.setattr(qk, "INT_PATH", path)
        prefill[path] = matmul(w, xs)
        assert_close(prefill[path], ref, f"{ggml_type.name} K={k} {path}", rel=1e-3)
        np.testing.assert_array_equal(prefill[path].view(np.uint32), prefill["portable"].view(np.uint32), err_msg=path)


@pytest.mark.parametrize("ggml_type", [T.Q4_K, T.Q6_K, T.Q4_1, T.Q8_0], ids=lambda t: t.name)
def test_cpus_without_avx2_take_the_float_kernels(ggml_type, monkeypatch):
    """kernels.INTEGER False (no AVX2): matvec, matmul (a few tokens and a chunk) and matmuls give what
    exact=True gives, bit for bit (float32 kernels, dequantize + sgemm), not the portable integer loops."""
    import quant.kernels as qk
    w = random_tensor(ggml_type, (N, K), seed=31)
    xs = np.random.default_rng(32).standard_normal((24, K)).astype(np.float32)
    want = [matvec(w, xs[0], exact=True), matmul(w, xs[:3], exact=True), matmul(w, xs, exact=True)]
    integer = matvec(w, xs[0])
    monkeypatch.setattr(qk, "INTEGER", False)
    got = [matvec(w, xs[0]), matmul(w, xs[:3]), matmul(w, xs)]
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    for y, v in zip(matmuls([w, w], xs[:1]), (want[0], want[0])):
        np.testing.assert_array_equal(y[0], v)
    assert not np.array_equal(integer, want[0])   # with INTEGER, the integer path


@pytest.mark.parametrize("k, kp", [(576, 576), (608, 640), (512 + 7 * 32, 768), (512 + 12 * 32, 1024), (1024, 1024), (32, 32), (96, 128)])
def test_prefill32_quantization_matches_reference(k, kp):
    """activations.quantize_prefill32: per token the d of quantize32_reference, its q16 interleaved sixteen
    blocks at a time (pair j of block i at pair 16 j + i of each 512); a last group of r < 16 blocks padded to
    n, the power of two r rounds up to, 32 n long, pair j of block i at pair 16 (j // (16/n)) + i + n (j % (16/n)),
    so each lane holds one block; d and sx per lane (a block's d on every lane it takes, its sx on one), the
    padding zero."""
    from quant.activations import interleave32, quantize32_reference, quantize_prefill32
    x = (np.random.default_rng(25).standard_normal((3, k)) * 10).astype(np.float32)
    x[1, :32] = 0   # an all-zero block: d = 0
    d, q16, sx = quantize_prefill32(x)
    nb, ng = k // 32, -(-k // 512)
    assert interleave32(k) == kp and d.shape == sx.shape == (3, 16 * ng) and q16.shape == (3, kp) and q16.ctypes.data % 64 == 0
    for t in range(3):
        rd, rq, rs = quantize32_reference(x[t])
        rq = rq.reshape(nb, 16, 2)   # (block, pair, 2)
        for g in range(ng):
            r = min(16, nb - 16 * g)
            n = 1 << (r - 1).bit_length()
            blocks = np.arange(16 * g, 16 * g + 16)
            lane_block = blocks[np.arange(16) % n]
            real = lane_block < nb
            want_d = np.where(real, rd[np.minimum(lane_block, nb - 1)], 0)
            want_sx = np.where(real & (np.arange(16) < n), rs[np.minimum(lane_block, nb - 1)] * want_d, 0)
            np.testing.assert_array_equal(d[t, 16 * g:16 * g + 16], want_d)
            np.testing.assert_array_equal(sx[t, 16 * g:16 * g + 16], want_sx.astype(np.float32))
            group = q16[t, 512 * g:512 * g + 32 * n].reshape(n, 16, 2)   # (pair row, lane, 2)
            m = 16 // n
            for i in range(n):
                for j in range(16):
                    want = rq[16 * g + i, j] if 16 * g + i < nb else (0, 0)
                    np.testing.assert_array_equal(group[j // m, i + n * (j % m)], want)


@pytest.mark.parametrize("path", ["avx2", "avx512"])
@pytest.mark.parametrize("ggml_type", list(INT_KERNELS), ids=lambda t: t.name)
def test_portable_and_simd_paths_bit_identical(ggml_type, path, monkeypatch):
    import quant.kernels as qk
    from quant.simd import HAS_AVX2, HAS_AVX512
    if not {"avx2": HAS_AVX2, "avx512": HAS_AVX512}[path]:
        pytest.skip(f"this CPU cannot run the {path} kernels")
    monkeypatch.setattr(pf, "SEG_BLOCKS", 2)   # prefill goes along K = 768 in two segments
    monkeypatch.setattr(pf, "AMX", False)       # the AVX-512 kernels, not AMX's (tests/test_amx.py)
    w = random_tensor(ggml_type, (N, K), seed=13)
    rng = np.random.default_rng(14)
    x, xs = rng.standard_normal(K).astype(np.float32), rng.standard_normal((5, K)).astype(np.float32)
    results = []
    for p in ("portable", path):
        monkeypatch.setattr(qk, "INT_PATH", p)
        results.append([matvec(w, x), matmul(w, xs)])
        # the few-tokens kernels (_DECODE_TOKENS: 2, 3, then 4 + 1 tokens a pass) against each token's matvec
        for t in (2, 3, 5):
            by_token = np.stack([matvec(w, v) for v in xs[:t]])
            np.testing.assert_array_equal(qk._tokens_matmul(w, qk._token_activations(256, xs[:t])), by_token, err_msg=f"{p} T={t}")
    for a, b in zip(*results):
        np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))


@pytest.mark.parametrize("ggml_type, below", [(T.Q4_K, 5), (T.Q5_K, 5), (T.Q6_K, 4), (T.Q8_0, 4), (T.Q4_1, 4)],
                         ids=["Q4_K", "Q5_K", "Q6_K", "Q8_0", "Q4_1"])
def test_small_chunks_go_token_by_token(ggml_type, below):
    """Below kernels._matvec_below tokens, matmul and matmuls give each token's matvec, bit for bit; at it,
    the chunk's integer prefill runs instead."""
    w = random_tensor(ggml_type, (N, K), seed=17)
    xs = np.random.default_rng(18).standard_normal((below, K)).astype(np.float32)
    by_token = np.stack([matvec(w, v) for v in xs])
    np.testing.assert_array_equal(matmul(w, xs[:below - 1]), by_token[:below - 1])
    for y in matmuls([w, w], xs[:below - 1]):
        np.testing.assert_array_equal(y, by_token[:below - 1])
    chunk = matmul(w, xs)
    assert not np.array_equal(chunk, by_token)
    assert_close(chunk, by_token.astype(np.float64), f"{ggml_type.name} T={below}", rel=1e-3)


@pytest.mark.parametrize("g", [1, 2, 4])
def test_prefill_quantization_matches_decode_quantization(g):
    """activations.quantize_prefill (tokens in parallel): the d and q16 of quantize_activations in prefill's
    layout of g blocks a group (pair p of block i at pair 16 (p // (16/g)) + 16/g i + p % (16/g) of its group;
    d on each of the block's 16/g lanes, for g = 1 once), pxt the sums of q16 over each 32 times d, tokens along and
    zero-padded to 16 of them and 16 more (the row stride off a power of two), q16 on a cache line."""
    from quant.activations import quantize_activations, quantize_prefill
    rng = np.random.default_rng(16)
    x = (rng.standard_normal((5, 8 * 256)) * rng.uniform(1e-3, 1e3, (5, 1))).astype(np.float32)
    x[1, 256:512] = 0
    d, q16, pxt = quantize_prefill(x, g)
    d_ref, q16_ref, _, _, _, bsums = (np.stack(a) for a in zip(*map(quantize_activations, x)))
    lanes = 16 // g
    np.testing.assert_array_equal(d, np.repeat(d_ref, lanes, axis=1) if g > 1 else d_ref)
    pairs = q16_ref.reshape(5, 8 // g, g, 8 * g, lanes, 2)   # (token, group, block, row, lane, 2)
    np.testing.assert_array_equal(q16.reshape(5, 8 // g, 8 * g, g, lanes, 2), pairs.transpose(0, 1, 3, 2, 4, 5))
    assert pxt.shape == (8 * 8, 32) and not pxt[:, 5:].any()
    np.testing.assert_array_equal(pxt[:, :5].T, (bsums[:, 0::2] + bsums[:, 1::2]).astype(np.float32) * np.repeat(d_ref, 8, axis=1))
    assert q16.ctypes.data % 64 == 0


def test_activation_quantization_matches_reference():
    from quant.activations import QMAX, qp_chunk, quantize_activations, quantize_reference
    rng = np.random.default_rng(15)
    x = rng.standard_normal(3 * 256).astype(np.float32) * np.repeat([1e-3, 1.0, 0.0], 256).astype(np.float32)
    x[300] = 1e4   # one outlier in the middle block
    ref, ours = quantize_reference(x), quantize_activations(x)
    for a, b in zip(ref, ours):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    d, q16, qp, hi, lo, bsums = ours
    assert np.abs(q16).max() == QMAX and d[2] == 0 and not q16[512:].any()
    for s in range(8):   # block 1: sub-block s's even (p = 0) and odd elements as chunks of 16 where qp_chunk says
        for p in range(2):
            np.testing.assert_array_equal(qp[256 + qp_chunk(s, p):256 + qp_chunk(s, p) + 16], q16[256 + 32 * s + p:256 + 32 * s + 32:2])
    assert sorted(qp_chunk(s, p) for s in range(8) for p in range(2)) == list(range(0, 256, 16))
    np.testing.assert_array_equal(256 * hi.astype(np.int32) + lo, q16)


@pytest.mark.slow
def test_real_tensors(smollm2_path, smollm2_q4km_path):
    """One tensor of each type in the real files (llama.cpp's own scales and quants)."""
    seen = set()
    for path in (smollm2_path, smollm2_q4km_path):
        for t in GGUFReader(path).tensors:
            shape = tuple(int(n) for n in reversed(t.shape))
            if len(shape) != 2 or t.tensor_type in seen or shape[0] * shape[1] > 2_000_000:
                continue
            seen.add(t.tensor_type)
            raw = np.ascontiguousarray(t.data).view(np.uint8).reshape(shape[0], -1)
            w = QuantizedTensor(t.name, t.tensor_type, shape, raw)
            wf = dequantize(w).astype(np.float64)
            xs = np.random.default_rng(0).standard_normal((3, shape[1])).astype(np.float32)
            assert_close(matvec(w, xs[0], exact=True), wf @ xs[0], f"{t.name} matvec")
            assert_close(matmul(w, xs, exact=True), xs.astype(np.float64) @ wf.T, f"{t.name} matmul")
            assert_close(matmul(w, xs), xs.astype(np.float64) @ wf.T, f"{t.name} matmul", rel=1e-3)
    assert {T.Q4_1, T.Q5_0, T.Q4_K, T.Q6_K, T.Q8_0} <= seen, seen


# --- zero copy: with an anonymous mmap, a page is resident only once something touched it ---

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]


def resident_pages(buf: np.ndarray) -> set[int]:
    vec = np.zeros((buf.nbytes + mmap.PAGESIZE - 1) // mmap.PAGESIZE, np.uint8)
    assert _libc.mincore(buf.ctypes.data, buf.nbytes, vec.ctypes.data) == 0, ctypes.get_errno()
    return set(np.flatnonzero(vec & 1).tolist())


def pages(start: int, stop: int) -> set[int]:
    return set(range(start // mmap.PAGESIZE, (stop - 1) // mmap.PAGESIZE + 1))


def test_experts_and_rows_touch_only_their_bytes():
    e_count, n, k = 4, 24, 1024  # Q4_K: 576 bytes a row, 13,824 bytes an expert
    row_bytes = k // 256 * 144
    buf = np.frombuffer(mmap.mmap(-1, e_count * n * row_bytes), np.uint8)
    assert not resident_pages(buf)
    w = QuantizedTensor("blk.0.ffn_up_exps.weight", T.Q4_K, (e_count, n, k), buf.reshape(e_count, n, row_bytes))
    assert not resident_pages(buf), "the constructor read the data"

    expert = w[2]
    assert expert.shape == (n, k) and expert.name == "blk.0.ffn_up_exps.weight[2]"
    assert np.shares_memory(expert.data, buf)
    fill_random(expert.data, T.Q4_K, seed=5)
    slab = pages(2 * n * row_bytes, 3 * n * row_bytes)
    assert resident_pages(buf) == slab
    x = np.random.default_rng(6).standard_normal(k).astype(np.float32)
    xs = np.random.default_rng(6).standard_normal((3, k)).astype(np.float32)
    wf = dequantize(expert).astype(np.float64)
    assert_close(matvec(expert, x, exact=True), wf @ x, "expert matvec")
    assert_close(matmul(expert, xs, exact=True), xs.astype(np.float64) @ wf.T, "expert matmul")
    assert_close(matvec(expert, x), wf @ x, "expert matvec (integer)", rel=1e-3)
    assert resident_pages(buf) == slab, "an op on expert 2 touched another expert"

    # get_rows reads only the selected rows (embedding lookup)
    rows = w[1]
    ids = [3, 17, 3]
    got = get_rows(rows, ids)
    start = n * row_bytes
    touched = set().union(*(pages(start + i * row_bytes, start + (i + 1) * row_bytes) for i in ids))
    assert resident_pages(buf) == slab | touched
    np.testing.assert_array_equal(got, np.zeros((3, k), np.float32))  # untouched memory is zeros
    np.testing.assert_array_equal(get_rows(expert, ids), dequantize(expert)[ids])


def test_get_rows_validates_ids():
    w = random_tensor(T.Q8_0, (N, K))
    assert get_rows(w, np.array([], np.int64)).shape == (0, K)
    for bad in ([N], [-1]):
        with pytest.raises(IndexError):
            get_rows(w, bad)
    with pytest.raises(ValueError):
        get_rows(w, [[1]])


def test_unsupported_type_message():
    with pytest.raises(UnsupportedTypeError) as err:
        QuantizedTensor("blk.3.attn_q.weight", T.Q2_K, (4, 256), np.zeros((4, 84), np.uint8))
    message = str(err.value)
    assert isinstance(err.value, ValueError) and "\n" not in message
    assert "Q2_K" in message and "blk.3.attn_q.weight" in message and "Q4_K" in message and "F16" in message
    with pytest.raises(UnsupportedTypeError, match="unknown type 99"):
        QuantizedTensor("x", 99, (4,), np.zeros(4, np.uint8))


def test_constructor_validates_shape_and_data():
    with pytest.raises(ValueError, match="multiple of the block size 256"):
        QuantizedTensor("w", T.Q4_K, (2, 100), np.zeros((2, 144), np.uint8))
    with pytest.raises(ValueError, match=r"uint8 of shape \(2, 288\)"):
        QuantizedTensor("w", T.Q4_K, (2, 512), np.zeros((2, 144), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        QuantizedTensor("w", T.F32, (2, 4), np.zeros((2, 4), np.float32))
    w = random_tensor(T.Q4_0, (N, K))
    assert (w.type_name, w.ggml_type, w.nbytes) == ("Q4_0", T.Q4_0, N * K // 32 * 18)
    with pytest.raises(ValueError, match="float32"):
        matvec(w, np.zeros(K, np.float64))
    with pytest.raises(ValueError):
        matvec(w, np.zeros(K + 1, np.float32))
    with pytest.raises(IndexError):
        w[0][0][0]


def test_second_process_compiles_nothing():
    """Numba's on-disk cache: a fresh process finds every kernel compiled (this process, or an
    earlier run, filled the cache), AMX's included where the CPU has it."""
    from quant.simd_amx import HAS_AMX
    for amx in {False, pf.AMX}:   # make sure every kernel is in the cache: the AVX-512 layouts (AMX off), AMX's
        pf.AMX, was = amx, pf.AMX
        for ggml_type in SUPPORTED_TYPES:
            for exact in (False, True):
                matmul(random_tensor(ggml_type, (3, K)), np.ones((24, K), np.float32), exact=exact)   # 24: not token by token
                matmul(random_tensor(ggml_type, (3, K)), np.ones((2, K), np.float32), exact=exact)
                matvec(random_tensor(ggml_type, (3, K)), np.ones(K, np.float32), exact=exact)
        for ggml_type in (T.Q4_K, T.Q5_K, T.Q6_K):   # K = 1024: the layouts of four and two blocks a group
            matmul(random_tensor(ggml_type, (3, 1024)), np.ones((24, 1024), np.float32))
        pf.AMX = was
    for ggml_type in _DECODE32:
        matvec(random_tensor(ggml_type, (3, 96)), np.ones(96, np.float32))
        matmuls([random_tensor(ggml_type, (3, 96))] * 2, np.ones((1, 96), np.float32))
    matmuls([random_tensor(T.Q4_K, (3, K))] * 2, np.ones((1, K), np.float32))
    script = """if True:
        import numpy as np
        from quant import QuantizedTensor, SUPPORTED_TYPES, matvec, matmul
        from quant.formats import FORMATS
        import quant.kernels as qk
        from quant import activations
        from quant.kernels import _dequantize_rows, _dequantize_rows_serial, _dot_rows, _dot16_rows, _dot32_rows
        import quant.prefill as pf
        import quant.prefill_amx as pa
        from quant.prefill import _w16_rows
        for amx in {False, pf.AMX}:
            pf.AMX, was = amx, pf.AMX
            for t, fmt in FORMATS.items():
                w = QuantizedTensor("w", t, (3, 768), np.zeros((3, 768 // fmt.BLOCK * fmt.BYTES), np.uint8))
                matvec(w, np.ones(768, np.float32)); matmul(w, np.ones((24, 768), np.float32)); matmul(w, np.ones((2, 768), np.float32))
                matvec(w, np.ones(768, np.float32), exact=True); matmul(w, np.ones((24, 768), np.float32), exact=True)
            for t in (12, 13, 14):   # Q4_K, Q5_K, Q6_K at K = 1024: four, two and four blocks a group
                w = QuantizedTensor("w", t, (3, 1024), np.zeros((3, 4 * FORMATS[t].BYTES), np.uint8))
                matmul(w, np.ones((24, 1024), np.float32))
            pf.AMX = was
        for t in qk._DECODE32:   # K = 96: blocks of 32 only
            w = QuantizedTensor("w", t, (3, 96), np.zeros((3, 3 * FORMATS[t].BYTES), np.uint8))
            matvec(w, np.ones(96, np.float32)); qk.matmuls([w, w], np.ones((1, 96), np.float32))
        w = QuantizedTensor("w", 12, (3, 768), np.zeros((3, 3 * 144), np.uint8))   # Q4_K
        qk.matmuls([w, w], np.ones((1, 768), np.float32))
        kernels = [_dot_rows, _dequantize_rows, _dequantize_rows_serial, _dot16_rows, _dot32_rows, qk._dot16_rows3, qk._dot32_rows3,
                   _w16_rows, qk._dot16_tokens, qk._dot32_tokens, qk._dots16_tokens, activations.quantize,
                   activations._quantize_prefill, activations._quantize_prefill32, activations.quantize32]
        kernels += [k for f in FORMATS.values() for k in (f.dot_row, f.dequantize_row)]
        kernels += list({ks[qk.INT_PATH] for ks in qk._DECODE.values()}) + [k for ks in pf._UNPACK.values() for k in ks.values()]
        kernels += [ks[qk.INT_PATH] for ks in qk._DECODE32.values()]
        kernels += [ks[qk.INT_PATH] for ks in qk._DECODE_TOKENS.values()] + list(pf._UNPACK32.values())
        kernels += [ks[qk.INT_PATH] for ks in pf._W4X2.values()] + [pf._MINS[qk.INT_PATH], pf._W32[qk.INT_PATH], pf._W32_NOMINS[qk.INT_PATH]]
        kernels += [pa.amx_rows, pa._quantize_amx, *pf._UNPACK_AMX.values()] if pf.AMX else []
        print(sum(sum(k.stats.cache_misses.values()) for k in kernels), sum(sum(k.stats.cache_hits.values()) for k in kernels))
    """
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    misses, hits = map(int, out.stdout.split())
    from quant.kernels import INT_PATH
    kernels = len({ks[INT_PATH] for ks in INT_KERNELS.values()}) + sum(len(ks) for ks in _UNPACK.values())   # decode + prefill unpackers
    kernels += len(_DECODE32) + len(_DECODE_TOKENS) + len(_UNPACK32)
    assert misses == 0 and hits == 15 + 2 * len(FORMATS) + kernels + 6 + (5 if HAS_AMX else 0), out.stdout


def test_kernel_calls_do_not_call_back_into_python(monkeypatch):
    """A driver call must not run Python bytecode while unboxing its arguments: a Ctrl-C landing there
    surfaces from inside Numba's argument handling as some other error. Numba's first-class function
    arguments did this (they unpickle their signature on every call), which once turned a Ctrl-C in the
    chat REPL into a TypeError. The unpickler is made to raise; every entry point must still work."""
    import numba.core.serialize as serialize

    from quant.quantize import quantize_rows
    w, x = random_tensor(T.Q4_K, (N, K)), np.ones((3, K), np.float32)
    calls = [lambda: matvec(w, x[0]), lambda: matvec(w, x[0], exact=True), lambda: matmul(w, x),
             lambda: matmul(w, x, exact=True), lambda: get_rows(w, [1, 2]),
             lambda: quantize_rows(x, T.Q4_K)]
    expected = [call() for call in calls]   # compiled (or loaded from the cache) before the patch

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(serialize._numba_unpickle, "__code__", interrupted.__code__)
    for call, want in zip(calls, expected):
        np.testing.assert_array_equal(call(), want)


@pytest.mark.parametrize("types_", [(T.Q4_K, T.Q4_K, T.Q6_K), (T.Q4_1, T.Q8_0), (T.Q4_K, T.Q8_0, T.Q8_0), (T.Q4_K, T.Q4_1, T.F16)],
                         ids=["k-quants", "blocks-of-32", "both-prefill-layouts", "mixed"])
def test_matmuls_is_matmul_of_each(types_):
    """One pass over several matrices (one activation quantization, one parallel loop) gives each one's
    matmul bit for bit, for one token and for several; rows of different lengths and types mix."""
    ws = [random_tensor(t, (n, K), seed=30 + n) for t, n in zip(types_, (N, 16, 5))]
    rng = np.random.default_rng(31)
    for t in (1, 3, 24):   # 24: integer prefill, x quantized once per layout
        x = rng.standard_normal((t, K)).astype(np.float32)
        got = matmuls(ws, x)
        assert len(got) == len(ws)
        for w, g in zip(ws, got):
            np.testing.assert_array_equal(g.view(np.uint32), matmul(w, x).view(np.uint32))
    with pytest.raises(ValueError, match="share K"):
        matmuls([ws[0], random_tensor(T.Q4_K, (4, 2 * K))], x)
    with pytest.raises(ValueError, match="one to three"):
        matmuls(ws * 2, x)
