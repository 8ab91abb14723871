"""Our forward pass against itself across execution paths: incremental decode, chunked prefill,
rolling buffer bounds, and against the exact float64 reference (tests/naive.py) on F32 weights."""
import numpy as np
import pytest

import gguf_runner
from models import LLAMA2, MISTRAL, MIXTRAL, MIXTRAL_SPLIT
from naive import Exact, argmax_agreement, rel_rmse

N = 64   # positions per test sequence (>= 48)


def rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def ids_for(cfg, n=N, seed=1):
    return np.random.default_rng(seed).integers(3, cfg.vocab, size=n)


@pytest.mark.parametrize("cfg", [MISTRAL, LLAMA2, MIXTRAL, MIXTRAL_SPLIT], ids=lambda c: c.kind)
def test_f32_matches_exact_reference(tiny_gguf, cfg):
    path, ids = tiny_gguf(cfg), ids_for(cfg)
    ours = gguf_runner.load(path).logits(ids)
    exact = Exact(path).logits(ids)
    assert ours.shape == (N, cfg.vocab) and ours.dtype == np.float32
    assert np.percentile(rel_rmse(ours, exact), 90) <= 0.002
    assert argmax_agreement(ours, exact) >= 0.98


@pytest.mark.parametrize("cfg", [MISTRAL, MIXTRAL], ids=lambda c: c.kind)
def test_incremental_decode_equals_full_forward(tiny_gguf, cfg):
    m = gguf_runner.load(tiny_gguf(cfg), sliding_window=8)
    ids = ids_for(cfg)
    full = m.logits(ids)
    m.reset()
    steps = np.stack([m.eval([t]) for t in ids])
    assert m.n_past == N
    assert rel(steps, full) <= 1e-4


@pytest.mark.parametrize("window", [None, 8])
@pytest.mark.parametrize("n_batch", [1, 5, 16])
def test_chunked_prefill_equals_unchunked(tiny_gguf, window, n_batch):
    path, ids = tiny_gguf(MISTRAL), ids_for(MISTRAL)
    whole = gguf_runner.load(path, sliding_window=window, n_batch=N).logits(ids)
    m = gguf_runner.load(path, sliding_window=window, n_batch=n_batch)
    chunked = m.logits(ids)
    assert rel(chunked, whole) <= 1e-4
    if window:   # the rolling buffer holds at most W keys plus one chunk
        assert all(c.k.shape[1] <= window + n_batch for c in m.cache.layers)


def test_sliding_window_matches_exact_reference(tiny_gguf):
    path, ids = tiny_gguf(MISTRAL), ids_for(MISTRAL)
    ours = gguf_runner.load(path, sliding_window=8).logits(ids)
    exact = Exact(path, window=8).logits(ids)
    assert np.percentile(rel_rmse(ours, exact), 90) <= 0.002
    # the window matters here: the full-attention reference is far from it past position 8
    assert np.median(rel_rmse(ours[16:], Exact(path).logits(ids)[16:])) > 0.05


def test_window_from_metadata_and_override(tiny_gguf):
    from dataclasses import replace
    path = tiny_gguf(replace(MISTRAL, window=8))
    assert gguf_runner.load(path).args.sliding_window == 8
    assert gguf_runner.load(path, sliding_window=None).args.sliding_window is None
    assert gguf_runner.load(path, sliding_window=4).args.sliding_window == 4
    assert gguf_runner.load(tiny_gguf(MISTRAL)).args.sliding_window is None


def test_context_full_is_a_clear_error(tiny_gguf):
    m = gguf_runner.load(tiny_gguf(MISTRAL), n_ctx=16)
    with pytest.raises(ValueError, match="context full"):
        m.eval(ids_for(MISTRAL, 17))


def test_a_second_thread_is_refused_while_generating(tiny_gguf):
    import threading

    from gguf_runner.runtime import BusyError
    m = gguf_runner.load(tiny_gguf(MISTRAL))
    stream = m.generate([5, 6, 7], max_tokens=8, temperature=0, stream=True, ignore_eos=True)
    next(stream)                                   # generation under way, holding the model
    errors = []
    t = threading.Thread(target=lambda: errors.append(pytest.raises(BusyError, m.eval, [3])))
    t.start()
    t.join()
    assert len(errors) == 1 and "busy" in str(errors[0].value)   # pytest.raises failed in the thread otherwise
    list(stream)                                   # the first thread finishes undisturbed
    assert stream.completion.finish_reason == "length" and len(stream.completion.tokens) == 8
    m.eval([3])                                    # and the model is free again


def test_blas_runs_on_one_thread_during_a_forward_pass_only(tiny_gguf, monkeypatch):
    """OpenBLAS workers spinning after attention's matmuls would take the cores from the kernels
    (quant.blas_threads): a forward pass sees one BLAS thread; the caller's setting comes back after."""
    from threadpoolctl import threadpool_info, threadpool_limits

    from gguf_runner.model import Transformer

    def blas_threads():
        return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]

    m = gguf_runner.load(tiny_gguf(MISTRAL))
    seen, forward = [], Transformer.forward
    monkeypatch.setattr(Transformer, "forward", lambda self, *a, **kw: (seen.append(blas_threads()), forward(self, *a, **kw))[1])
    with threadpool_limits(2, user_api="blas"):
        before = blas_threads()
        m.eval(ids_for(MISTRAL, 5))
        assert blas_threads() == before
    assert before and all(n == 2 for n in before) and seen and all(n == [1] * len(before) for n in seen)


def test_attention_same_bits_on_one_and_two_threads(monkeypatch):
    """Prefill attention's tasks (BLAS and the softmax pass) give the same bits whatever the thread count."""
    import numba

    import gguf_runner.attention as attention
    from gguf_runner.cache import attention_mask
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 Numba threads")
    monkeypatch.setattr(attention, "QUERY_BLOCK", 3)
    rng = np.random.default_rng(8)
    G, r, T, Dh = 2, 2, 20, 16
    q = rng.standard_normal((G, T * r, Dh)).astype(np.float32)
    k, v = (rng.standard_normal((G, T, Dh)).astype(np.float32) for _ in range(2))
    mask = attention_mask(np.arange(T), np.arange(T), 6)
    before, outs = numba.get_num_threads(), []
    try:
        for threads in (1, 2):
            numba.set_num_threads(threads)
            outs.append(attention.attend(q, k, v, mask, r))
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(outs[0].view(np.uint32), outs[1].view(np.uint32))


def test_rms_norm_and_rope_against_numpy():
    """The Numba rms_norm (mean in float64) within 1e-6 of float64, a zero row staying zero; rope the same
    bits as numpy's a cos - b sin, a sin + b cos on a partial rotary dimension."""
    from gguf_runner.model import rms_norm, rope
    rng = np.random.default_rng(9)
    x, w = rng.standard_normal((5, 96)).astype(np.float32) * 30, rng.standard_normal(96).astype(np.float32)
    x[2] = 0
    ref = x.astype(np.float64) / np.sqrt(np.mean(x.astype(np.float64) ** 2, axis=-1, keepdims=True) + 1e-5) * w
    assert np.abs(rms_norm(x, w, 1e-5) - ref).max() <= 1e-6 * np.abs(ref).max() and not rms_norm(x, w, 1e-5)[2].any()
    q = rng.standard_normal((3, 4, 32)).astype(np.float32)
    ang = rng.standard_normal((3, 12))
    cos, sin = np.cos(ang).astype(np.float32)[:, None], np.sin(ang).astype(np.float32)[:, None]
    a, b = q[..., 0:24:2], q[..., 1:24:2]
    expected = q.copy()
    expected[..., 0:24:2], expected[..., 1:24:2] = a * cos - b * sin, a * sin + b * cos
    np.testing.assert_array_equal(rope(q, cos, sin).view(np.uint32), expected.view(np.uint32))


def test_softmax_exp_against_float64():
    """The vectorizable exp of the prefill softmax and of SiLU: within 3e-7 relative of float64 on [-87, 0], 0 below."""
    from quant.jit import exp_le0
    xs = np.concatenate([-np.linspace(0, 87, 20001), -np.random.default_rng(7).uniform(0, 87, 5000)]).astype(np.float32)
    ours = np.array([exp_le0(x) for x in xs], np.float64)
    ref = np.exp(xs.astype(np.float64))
    assert np.max(np.abs(ours - ref) / ref) <= 3e-7 and exp_le0(np.float32(0)) == 1
    assert [exp_le0(np.float32(x)) for x in (-87.5, -1e4, -np.inf)] == [0, 0, 0]


@pytest.mark.parametrize("window", [None, 5])
@pytest.mark.parametrize("T, block", [(1, 64), (4, 64), (7, 2)], ids=["decode", "one-block", "four-blocks"])
def test_attention_kernel_matches_float64_softmax(window, T, block, monkeypatch):   # T > 1: the block path
    """gguf_runner.attention.attend against softmax(q k^T / sqrt(Dh)) v in float64, with the cache's mask:
    causal, a window, never-written slots, and buffers longer than the slots in use; one token (the row
    kernel), and a chunk as one task or as several (BLAS and the softmax pass)."""
    import gguf_runner.attention as attention
    from gguf_runner.attention import attend
    from gguf_runner.cache import EMPTY, attention_mask
    monkeypatch.setattr(attention, "QUERY_BLOCK", block)
    monkeypatch.setattr(attention, "BLOCKS_FROM", 2)
    rng = np.random.default_rng(5)
    G, r, S, cap, Dh = 2, 3, 9, 12, 16
    q = rng.standard_normal((G, T * r, Dh)).astype(np.float32)
    k, v = (rng.standard_normal((G, cap, Dh)).astype(np.float32) for _ in range(2))
    kpos = np.arange(S, dtype=np.int64)
    kpos[2] = EMPTY
    qpos = np.arange(S - T, S, dtype=np.int64)
    mask = attention_mask(qpos, kpos, window)
    ours = attend(q, k, v, mask, r)
    scores = np.einsum("gmd,gsd->gms", q.astype(np.float64), k[:, :S].astype(np.float64)) / np.sqrt(Dh)
    scores = np.where(np.repeat(mask, r, axis=0)[None], scores, -np.inf)
    probs = np.exp(scores - scores.max(axis=-1, keepdims=True))
    ref = (probs / probs.sum(axis=-1, keepdims=True)) @ v[:, :S].astype(np.float64)
    assert ours.shape == ref.shape and np.abs(ours - ref).max() <= 1e-5 * np.abs(ref).max()
    with pytest.raises(ValueError, match="C-contiguous"):
        attend(q, k[:, :S], v[:, :S], mask, r)


@pytest.mark.parametrize("cfg", [MISTRAL, MIXTRAL], ids=lambda c: c.kind)
def test_forward_pass_same_bits_on_every_kernel_path(tiny_gguf, cfg, monkeypatch):
    """A Q4_K_M model's prefill and decode logits with the integer kernels forced to the portable path,
    AVX2 and AVX-512 where this CPU has them: the same bits."""
    import quant.kernels as qk
    from quant.simd import HAS_AVX2, HAS_AVX512
    import quant.prefill as pf
    monkeypatch.setattr(qk, "INTEGER", True)   # the integer kernels even on a CPU without AVX2
    monkeypatch.setattr(pf, "AMX", False)      # the AVX-512 kernels on their path, not AMX's (tests/test_amx.py)
    m = gguf_runner.load(tiny_gguf(cfg, quant=15))
    ids = ids_for(cfg, 12)
    runs = {}
    for path, ok in (("portable", True), ("avx2", HAS_AVX2), ("avx512", HAS_AVX512)):
        if ok:
            monkeypatch.setattr(qk, "INT_PATH", path)
            m.reset()
            prefill = m.eval(ids[:8], all_logits=True)
            runs[path] = np.concatenate([prefill, np.stack([m.eval([t]) for t in ids[8:]])])
    for path, logits in runs.items():
        np.testing.assert_array_equal(logits.view(np.uint32), runs["portable"].view(np.uint32), err_msg=path)
