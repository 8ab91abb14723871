"""K-quant prefill on Intel AMX tiles (quant/prefill_amx.py, quant/simd_amx.py): the tokens' tile layout and the
numpy twin on any CPU (the twin against float64); where the CPU has AMX, the kernels against the twin bit for bit,
over several row blocks, token chunks and segments of K, on one and two threads."""
import numba
import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

import quant.kernels as qk
import quant.prefill as pf
from quant import dequantize, matmul, matmuls
from quant.activations import quantize_prefill
from quant.intdot_prefill import mins_portable
from quant.prefill_amx import amx_reference, quantize_amx
from quant.simd_amx import HAS_AMX
from test_quant_kernels import assert_close, random_tensor

TYPES = [T.Q4_K, T.Q5_K, T.Q6_K]
needs_amx = pytest.mark.skipif(not HAS_AMX, reason="this CPU (or OS) gives no AMX tiles")


def tokens(n, k, seed):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, k)) * rng.uniform(0.01, 100, (n, 1))).astype(np.float32)


def test_tokens_in_tmul_b_layout():
    """quantize_amx: the d, q16 and pxt of quantize_prefill (g = 1); token tile tt, its 64s of K j, row i, token t,
    byte c hold the high (low) byte of element 64 j + 4 i + c of token 16 tt + t, q16 = 256 hi + lo with both
    signed; d transposed; padding tokens zero (an all-zero token and block too)."""
    n, k = 21, 512
    x = tokens(n, k, 1)
    x[3], x[5, 256:] = 0, 0
    d, q16, pxt = quantize_prefill(x)
    xh, xl, xd, px = quantize_amx(x)
    hi = (q16.astype(np.int32) + 128) >> 8
    lo = q16 - 256 * hi
    assert hi.min() >= -127 and hi.max() <= 127 and lo.min() >= -128 and lo.max() <= 127
    assert xh.ctypes.data % 64 == 0 and xl.ctypes.data % 64 == 0
    for got, want in ((xh, hi), (xl, lo)):
        padded = np.zeros((32, k), np.int32)
        padded[:n] = want
        # (tt, j, i, t, c) -> (tt, t, j, i, c): token rows in K's order
        rows = got.reshape(2, k // 64, 16, 16, 4).transpose(0, 3, 1, 2, 4).reshape(32, k)
        np.testing.assert_array_equal(rows, padded)
    np.testing.assert_array_equal(xd[:, :n], d.T)
    assert not xd[:, n:].any()
    np.testing.assert_array_equal(px, pxt)


def unpacked(w, seg):
    """The g = 1 unpack of all of w's rows (what the driver unpacks segment by segment): w16 (N, K), dsc, msc."""
    n, k = w.shape
    nb = k // 256
    w16 = np.empty(n * k, np.int16)
    dsc, msc = np.empty(n * nb, np.float32), np.empty(n * nb * 8, np.float32)
    pf._UNPACK[w.ggml_type][1](w.data, 0, n, n, 0, nb, w16, dsc, msc)
    return w16.reshape(n, k), dsc.reshape(n, nb), msc.reshape(n, nb * 8)


def twin(w, xs, seg):
    """The AMX path's result by its numpy twin: amx_reference minus the mins (the mins kernel's portable twin per
    segment, as the driver adds them), in float32."""
    w16, dsc, msc = unpacked(w, seg)
    d, q16, pxt = quantize_prefill(xs)
    out = amx_reference(w16, dsc, q16, d, seg)
    if w.ggml_type != T.Q6_K:
        accm = np.zeros((w.shape[0], pxt.shape[1] - 16))
        for b0 in range(0, w.shape[1] // 256, seg):
            sub = slice(8 * b0, 8 * min(b0 + seg, w.shape[1] // 256))
            mins_portable(np.ascontiguousarray(msc[:, sub]).reshape(-1), pxt.reshape(-1), 8 * b0, pxt.shape[1], accm)
        out = out - accm[:, :xs.shape[0]]
    return out.T.astype(np.float32)


@pytest.mark.parametrize("ggml_type", TYPES, ids=lambda t: t.name)
def test_twin_against_float64(ggml_type):
    """The AMX scheme's arithmetic (weights and tokens split into bytes, four exact integer products, float32
    per block) within the integer path's bar of float64, on any CPU."""
    w = random_tensor(ggml_type, (37, 768), seed=51)
    xs = tokens(29, 768, 52)
    assert_close(twin(w, xs, 2), xs.astype(np.float64) @ dequantize(w).astype(np.float64).T, ggml_type.name, rel=1e-3)


@needs_amx
@pytest.mark.parametrize("k", [768, 2048])
@pytest.mark.parametrize("ggml_type", TYPES, ids=lambda t: t.name)
def test_amx_prefill_matches_its_twin(ggml_type, k, monkeypatch, two_threads):
    """matmul on the AMX path: blocks of 16 rows (37 rows: the last block of 5 padded), chunks of one token
    tile (T = 40: three, the last one part padding), segments of two blocks (K = 768: the last one short); the
    twin's bits, on one and two threads; matmuls the same bits."""
    monkeypatch.setattr(qk, "INT_PATH", "avx512")
    monkeypatch.setattr(pf, "AMX", True)
    monkeypatch.setattr(pf, "AMX_ROWS", 16)
    monkeypatch.setattr(pf, "SEG_BLOCKS", 2)
    monkeypatch.setattr(pf, "TILE_BYTES", 2 * 2 * 256 * 16)   # 16 tokens a chunk
    w = random_tensor(ggml_type, (37, k), seed=53)
    for n in (pf.AMX_TOKENS, 40):
        xs = tokens(n, k, 54 + n)
        assert pf._prefill_scheme(w, False, n, "avx512") == pf.AMX_KEY
        want = twin(w, xs, 2)
        for threads in (1, 2):
            numba.set_num_threads(threads)
            np.testing.assert_array_equal(matmul(w, xs).view(np.uint32), want.view(np.uint32), err_msg=f"T={n} {threads}")
        for y in matmuls([w, w], xs):
            np.testing.assert_array_equal(y.view(np.uint32), want.view(np.uint32))


def test_amx_scheme_only_on_the_avx512_path_from_amx_tokens(monkeypatch):
    """The scheme: AMX where it is on, on the avx512 path (its kernels fold the tiles), from AMX_TOKENS tokens;
    else the AVX-512 layouts."""
    w = random_tensor(T.Q4_K, (37, 1024), seed=55)
    monkeypatch.setattr(pf, "AMX", True)
    assert pf._prefill_scheme(w, False, pf.AMX_TOKENS, "avx512") == pf.AMX_KEY
    assert pf._prefill_scheme(w, True, 64, "avx512") is None
    assert pf._prefill_scheme(w, False, pf.AMX_TOKENS - 1, "avx512") == (1, pf.QMAX)
    for path in ("avx2", "portable"):
        assert pf._prefill_scheme(w, False, 64, path) == (4, pf.QMAX)
    monkeypatch.setattr(pf, "AMX", False)
    assert pf._prefill_scheme(w, False, 64, "avx512") == (4, pf.QMAX)


def test_import_compiles_no_amx_code(tmp_path):
    """On a CPU without AMX, LLVM cannot select the tile instructions and aborts the process: importing quant
    must compile none (the AMX driver compiles at its first call). Checked with Numba targeting a CPU
    without AMX and an empty cache."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path), "NUMBA_CPU_NAME": "skylake-avx512",
           "NUMBA_CPU_FEATURES": "+avx2,+fma,+f16c,+avx512f,+avx512bw,+avx512vnni,-amx-tile,-amx-int8"}
    out = subprocess.run([sys.executable, "-c", "import quant.kernels, quant.prefill, gguf_runner; print('ok')"],
                         cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
