"""Synthetic real-shaped GGUF files (gguf_runner.synth) and the benchmark's helpers (no timings asserted)."""
import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from gguf_runner.bench import mapped_rss, markdown
from gguf_runner.gguf_file import GGUFFile
from gguf_runner.synth import SHAPES, spm_vocab, synth, tensor_plan


def test_recipe_and_plan():
    s = SHAPES["mistral-7b"]
    plan = {name: (shape, t) for name, shape, t in tensor_plan(s, 32)}
    assert len(plan) == 2 + 1 + 32 * 9
    assert plan["output.weight"] == ((32000, 4096), T.Q6_K) and plan["token_embd.weight"][1] == T.Q4_K
    six = [i for i in range(32) if plan[f"blk.{i}.ffn_down.weight"][1] == T.Q6_K]
    assert six == [i for i in range(32) if i < 4 or i >= 28 or (i - 4) % 3 == 2]
    assert plan["blk.0.attn_k.weight"] == ((1024, 4096), T.Q4_K)
    moe = {name: (shape, t) for name, shape, t in tensor_plan(SHAPES["mixtral-8x7b"], 32)}
    assert moe["blk.3.ffn_up_exps.weight"] == ((8, 14336, 4096), T.Q4_K)
    assert moe["blk.3.attn_v.weight"][1] == T.Q8_0 and moe["blk.3.attn_output.weight"][1] == T.Q5_K
    assert moe["blk.3.ffn_gate_inp.weight"] == ((8, 4096), T.F32)
    assert plan["blk.0.attn_q.weight"][1] == T.Q4_K
    tokens, scores, types = spm_vocab(32000)
    assert len(set(tokens)) == len(tokens) == len(scores) == len(types) == 32000


@pytest.mark.slow
def test_one_layer_mistral_loads_in_both_engines(tmp_path):
    import gguf_runner
    from llama_cpp import Llama

    path = synth("mistral-7b", tmp_path / "m1.gguf", layers=1)
    f = GGUFFile(path)
    assert f.metadata["llama.block_count"] == 1 and f.metadata["llama.feed_forward_length"] == 14336
    assert {n: i.type_name for n, i in f.tensors.items()}["blk.0.ffn_down.weight"] == "Q6_K"
    m = gguf_runner.load(path, n_ctx=32)
    assert mapped_rss(path) < 50e6  # nothing read at load
    text = "Hello world, 123!"
    ids = m.tokenize(text)
    llm = Llama(model_path=str(path), n_ctx=32, n_threads=2, logits_all=True, verbose=False)
    assert llm.tokenize(text.encode()) == ids
    ours = m.logits(ids)
    llm.eval(ids)
    theirs = np.array(llm.scores[: len(ids)])
    assert np.isfinite(ours).all()
    # same file, same maths: close (llama.cpp quantizes activations to int8, so not bit-close)
    assert np.linalg.norm(ours - theirs) <= 0.05 * np.linalg.norm(theirs)


def test_markdown_table():
    stats = {"tokens": 4, "seconds": [1.0, 2.0], "tps_best": 4.0, "tps_median": 2.67}
    r = {"engine": "gguf-runner", "load_s": 0.1, "pp": {"8": stats}, "tg": stats, "peak_rss": 2e9, "mapped_rss": 1e9}
    table = markdown({"results": [r, {**r, "engine": "llama.cpp", "load_s": 1.0}]})
    assert "| gguf-runner | 0.10 | 4.00 (2.67) | 4.00 (2.67) | 2.00 | 1.00 |" in table
    assert "ours / llama.cpp" in table
