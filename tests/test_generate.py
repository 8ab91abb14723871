"""Generation on the real SmolLM2: greedy text is the model's own (teacher-forced through the exact
reference), streaming equals non-streaming, stop strings split across tokens, seeds, errors."""
import numpy as np
import pytest

import gguf_runner
from naive import Exact

PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are a concise assistant."},
     {"role": "user", "content": "Write one sentence about the ocean."}],
    [{"role": "user", "content": "List three colors of the rainbow."}],
]


@pytest.fixture(scope="module")
def smol(smollm2_path):
    return gguf_runner.load(smollm2_path, n_ctx=512)


@pytest.mark.slow
@pytest.mark.parametrize("which", ["q4_1", "q4_k_m"])
def test_greedy_generation_is_the_models_own(smollm2_path, smollm2_q4km_path, which):
    path = smollm2_path if which == "q4_1" else smollm2_q4km_path
    m, exact = gguf_runner.load(path, n_ctx=512), Exact(path)
    agree = total = 0
    for messages in PROMPTS:
        prompt = m.tokenize(m.render_chat(messages), add_bos=False, special=True)
        out = m.chat(messages, max_tokens=32, temperature=0, ignore_eos=True)
        assert len(out.tokens) == 32 and out.finish_reason == "length"
        ref = exact.logits(prompt + out.tokens)[len(prompt) - 1:-1]          # teacher-forced
        ranks = [(ref[i] > ref[i, t]).sum() for i, t in enumerate(out.tokens)]
        assert max(ranks) < 5, f"a generated token outside the reference's top 5: {ranks}"
        agree += sum(r == 0 for r in ranks)
        total += len(ranks)
    print(f"{which}: argmax agreement {agree}/{total}")
    assert agree / total >= 0.85


def test_streaming_equals_non_streaming(smol):
    msgs = PROMPTS[0]
    full = smol.chat(msgs, max_tokens=24, temperature=0)
    stream = smol.chat(msgs, max_tokens=24, temperature=0, stream=True)
    pieces = list(stream)
    assert "".join(pieces) == full.text and stream.completion.text == full.text
    assert stream.completion.tokens == full.tokens


def test_stop_string_split_across_tokens_stops_and_is_not_printed(smol):
    msgs = PROMPTS[1]
    full = smol.chat(msgs, max_tokens=32, temperature=0, ignore_eos=True)
    # a stop string straddling the boundary between two generated tokens (byte-level BPE: the text
    # of the first j tokens is a prefix of the whole text)
    text = full.text
    ends = [len(smol.detokenize(full.tokens[:j])) for j in range(len(full.tokens) + 1)]
    assert smol.detokenize(full.tokens) == text
    j = next(j for j in range(2, len(ends) - 1) if ends[j] - ends[j - 1] >= 2 and ends[j + 1] - ends[j] >= 2
             and text[ends[j] - 2: ends[j] + 2] not in text[: ends[j] - 2])
    stop = text[ends[j] - 2: ends[j] + 2]
    stream = smol.chat(msgs, max_tokens=32, temperature=0, ignore_eos=True, stop=[stop], stream=True)
    shown = "".join(stream)
    assert shown == text[: text.index(stop)] and stop not in shown
    assert stream.completion.finish_reason == "stop"


def test_same_seed_same_text(smol):
    a = smol.chat(PROMPTS[2], max_tokens=24, temperature=0.7, seed=123).text
    b = smol.chat(PROMPTS[2], max_tokens=24, temperature=0.7, seed=123).text
    assert a == b


def test_eos_ends_with_stop_and_length_with_length(smol):
    out = smol.chat(PROMPTS[0], max_tokens=200, temperature=0)
    assert out.finish_reason == "stop" and len(out.tokens) < 200     # SmolLM2 answers and ends
    assert smol.chat(PROMPTS[0], max_tokens=3, temperature=0).finish_reason == "length"
    t = out.timings
    assert t.prompt_tokens > 0 and t.generated_tokens == len(out.tokens) and t.tps > 0 and t.prompt_tps > 0


def test_prompt_longer_than_context_is_a_clear_error(smollm2_path):
    m = gguf_runner.load(smollm2_path, n_ctx=32)
    with pytest.raises(ValueError, match="does not fit"):
        m.generate("word " * 100, max_tokens=4)


def test_openai_shaped_results(smol):
    r = smol.create_chat_completion(PROMPTS[0], max_tokens=8, temperature=0)
    assert r["object"] == "chat.completion" and r["choices"][0]["message"]["role"] == "assistant"
    u = r["usage"]
    assert u["completion_tokens"] == 8 or r["choices"][0]["finish_reason"] == "stop"
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"] and u["prompt_tokens"] > 5
    chunks = list(smol.create_chat_completion(PROMPTS[0], max_tokens=8, temperature=0, stream=True))
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == r["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == r["choices"][0]["finish_reason"]
    c = smol.create_completion("The capital of France is", max_tokens=6, temperature=0)
    assert c["object"] == "text_completion" and c["choices"][0]["text"]


def test_prefix_reuse_gives_the_same_logits(smol):
    ids = smol.tokenize("The quick brown fox jumps over the lazy dog", add_bos=False)
    fresh = smol.logits(ids)[-1]
    smol.reset()
    smol.prefill(ids[:5])
    logits, evaluated = smol.prefill(ids)
    assert evaluated == len(ids) - 5
    assert np.abs(logits - fresh).max() <= 1e-4 * np.abs(fresh).max()
