"""Fidelity against the oracles: HF transformers on F32 weights (attention, sliding window, MoE),
and llama.cpp on Q4_K_M files, both measured against the exact float64 reference (tests/naive.py)."""
from dataclasses import replace

import numpy as np
import pytest

import gguf_runner
from models import LLAMA2, MISTRAL, MIXTRAL, MIXTRAL_SPLIT, hf_logits, hf_model, random_weights, split_experts
from naive import Exact, argmax_agreement, rel_rmse

N = 64
F32_CASES = [MISTRAL, LLAMA2, MIXTRAL, MIXTRAL_SPLIT]


def ids_for(cfg, n=N, seed=1):
    return np.random.default_rng(seed).integers(3, cfg.vocab, size=n)


def assert_f32_close(ours, ref):
    err = rel_rmse(ours, ref)
    assert np.percentile(err, 90) <= 0.002, f"p90 rel-RMSE {np.percentile(err, 90):.2e}"
    assert argmax_agreement(ours, ref) >= 0.98


@pytest.mark.slow
@pytest.mark.parametrize("cfg", F32_CASES, ids=lambda c: c.kind)
def test_f32_ours_and_reference_match_hf(tiny_gguf, cfg):
    ids = ids_for(cfg)
    hf = hf_logits(hf_model(cfg, random_weights(cfg, 0)), ids)
    path = tiny_gguf(cfg)
    assert_f32_close(gguf_runner.load(path, sliding_window=None).logits(ids), hf)
    assert_f32_close(Exact(path).logits(ids), hf)   # the reference the quantized tests lean on


@pytest.mark.slow
@pytest.mark.parametrize("window", [8, None])
def test_sliding_window_matches_hf(tiny_gguf, window):
    cfg, ids = MISTRAL, ids_for(MISTRAL)
    hf = hf_logits(hf_model(cfg, random_weights(cfg, 0), window=window), ids)
    ours = gguf_runner.load(tiny_gguf(cfg), sliding_window=window, n_batch=16).logits(ids)
    assert_f32_close(ours, hf)
    m = gguf_runner.load(tiny_gguf(cfg), sliding_window=window)   # decode path too
    assert_f32_close(np.stack([m.eval([t]) for t in ids]), hf)


def llama_cpp_logits(path, ids) -> np.ndarray:
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), logits_all=True, n_ctx=max(256, len(ids) + 8), n_threads=2,
                n_batch=512, verbose=False)
    llm.eval(list(map(int, ids)))
    return np.array(llm.scores[: len(ids)], dtype=np.float64)


def compare_with_llama_cpp(path, ids, exact, ours_path=None):
    """ours_path: our run on another layout of the same quantized weights."""
    ours = gguf_runner.load(ours_path or path).logits(ids)
    theirs = llama_cpp_logits(path, ids)
    p90_ours, p90_theirs = np.percentile(rel_rmse(ours, exact), 90), np.percentile(rel_rmse(theirs, exact), 90)
    agree_ours, agree_theirs = argmax_agreement(ours, exact), argmax_agreement(theirs, exact)
    print(f"{path.name}: p90 rel-RMSE ours {p90_ours:.4f} llama.cpp {p90_theirs:.4f}; "
          f"argmax ours {agree_ours:.3f} llama.cpp {agree_theirs:.3f}")
    assert p90_ours <= max(1.25 * p90_theirs, 0.02)
    assert agree_ours >= agree_theirs - 0.02


@pytest.mark.slow
@pytest.mark.parametrize("cfg", [MISTRAL, LLAMA2, MIXTRAL], ids=lambda c: c.kind)
def test_q4_k_m_at_least_as_faithful_as_llama_cpp(tiny_gguf, cfg):
    path = tiny_gguf(cfg, quant=15)   # Q4_K_M, quantized by llama.cpp
    ids = ids_for(cfg)
    compare_with_llama_cpp(path, ids, Exact(path).logits(ids))


@pytest.mark.slow
def test_q4_k_m_per_expert_layout(tiny_gguf, tmp_path):
    merged = tiny_gguf(replace(MIXTRAL, kind="mixtral-for-split"), seed=3, quant=15)
    split = tmp_path / "mixtral-per-expert-q4km.gguf"
    split_experts(merged, split)
    ids = ids_for(MIXTRAL)
    exact = Exact(split).logits(ids)
    assert np.array_equal(exact, Exact(merged).logits(ids))
    compare_with_llama_cpp(merged, ids, exact, ours_path=split)


CHAT = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France, and why is it famous? Answer in two sentences."
        "<|im_end|>\n<|im_start|>assistant\nThe capital of France is Paris. It is famous for")


@pytest.mark.slow
@pytest.mark.parametrize("which", ["q4_1", "q4_k_m"])
def test_smollm2_at_least_as_faithful_as_llama_cpp(smollm2_path, smollm2_q4km_path, which):
    from llama_cpp import Llama

    path = smollm2_path if which == "q4_1" else smollm2_q4km_path
    ids = Llama(model_path=str(path), vocab_only=True, verbose=False).tokenize(CHAT.encode(), add_bos=False,
                                                                               special=True)
    assert len(ids) >= 48
    compare_with_llama_cpp(path, ids, Exact(path).logits(ids))


@pytest.mark.slow
@pytest.mark.parametrize("ftype", [7, 2, 8, 9], ids=["q8_0", "q4_0", "q5_0", "q5_1"])
def test_smollm2_32_block_types_at_least_as_faithful_as_llama_cpp(smollm2_path, tmp_path, ftype):
    """The types with blocks of 32 (integer prefill with sixteen blocks interleaved, and their decode kernels),
    on SmolLM2 re-quantized by llama.cpp, against the float64 reference of the same file."""
    from conftest import llama_quantize
    from llama_cpp import Llama

    path = llama_quantize(smollm2_path, tmp_path / f"smollm2-{ftype}.gguf", ftype, requantize=True)
    ids = Llama(model_path=str(path), vocab_only=True, verbose=False).tokenize(CHAT.encode(), add_bos=False,
                                                                               special=True)
    exact = Exact(path).logits(ids)
    compare_with_llama_cpp(path, ids, exact)
    m = gguf_runner.load(path)
    prefill = m.logits(ids)   # one chunk
    m.reset()
    decode = np.stack([m.eval([t]) for t in ids])   # token by token
    for ours in (prefill, decode):   # 6e-4 to 8e-4 measured (llama.cpp: 0.10 to 0.23)
        assert np.percentile(rel_rmse(ours, exact), 90) <= 0.002
        assert argmax_agreement(ours, exact) >= 0.98
