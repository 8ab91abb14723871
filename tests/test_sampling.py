"""Each sampler on crafted logits."""
import numpy as np
import pytest

from gguf_runner.sampling import Sampler, SamplingParams, filter_candidates

LOGITS = np.log(np.array([0.5, 0.2, 0.15, 0.1, 0.05]))   # probabilities 0.5 .. 0.05


def draws(params, logits=LOGITS, n=4000, history=()):
    s = Sampler(params)
    return np.bincount([s(logits, history) for _ in range(n)], minlength=len(logits)) / n


def test_greedy_is_argmax():
    assert Sampler(SamplingParams(temperature=0))(LOGITS) == 0
    assert Sampler(SamplingParams(temperature=0))(LOGITS[::-1]) == 4


def test_plain_sampling_follows_the_distribution():
    freq = draws(SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=1))
    assert np.allclose(freq, np.exp(LOGITS), atol=0.03)


def test_temperature_sharpens_and_flattens():
    base = dict(top_k=0, top_p=1.0, min_p=0.0, seed=2)
    cold, hot = draws(SamplingParams(temperature=0.3, **base)), draws(SamplingParams(temperature=3.0, **base))
    assert cold[0] > 0.85 and hot[0] < 0.35


def test_top_k_top_p_min_p_typical_keep_the_right_sets():
    p = lambda **kw: SamplingParams(**{"top_k": 0, "top_p": 1.0, "min_p": 0.0, **kw})  # noqa: E731
    assert list(filter_candidates(LOGITS, p(top_k=2))) == [0, 1]
    assert list(filter_candidates(LOGITS, p(top_p=0.7))) == [0, 1]           # 0.5 + 0.2 reaches 0.7
    assert list(filter_candidates(LOGITS, p(top_p=0.71))) == [0, 1, 2]
    assert list(filter_candidates(LOGITS, p(min_p=0.3))) == [0, 1, 2]        # >= 0.15 = 0.3 * 0.5
    assert list(filter_candidates(LOGITS, p(min_p=0.45))) == [0]
    # typical-p keeps tokens whose surprise is closest to the entropy (~1.33 nats): 0.2 and 0.15 first
    assert sorted(filter_candidates(LOGITS, p(typical_p=0.3))) == [1, 2]
    assert len(filter_candidates(LOGITS, p(top_p=1e-9))) == 1                # always keeps one


def test_defaults_are_llama_cpp_defaults():
    d = SamplingParams()
    assert (d.temperature, d.top_k, d.top_p, d.min_p, d.repeat_penalty) == (0.8, 40, 0.95, 0.05, 1.0)


def test_penalties_and_logit_bias():
    logits = np.array([2.0, 1.9, -1.0, 0.0])
    greedy = lambda **kw: Sampler(SamplingParams(temperature=0, **kw))  # noqa: E731
    assert greedy()(logits, [0]) == 0
    assert greedy(repeat_penalty=1.1)(logits, [0]) == 1                    # 2.0 / 1.1 < 1.9
    assert greedy(frequency_penalty=0.06)(logits, [0, 0]) == 1             # 2.0 - 0.12 < 1.9
    assert greedy(presence_penalty=0.2)(logits, [0, 0, 0]) == 1
    assert greedy(repeat_penalty=1.1, penalty_last_n=1)(logits, [0, 3]) == 0   # 0 is outside the window
    assert greedy(logit_bias={3: 5.0})(logits) == 3
    assert greedy(repeat_penalty=2.0)(np.array([-1.0, -1.5]), [0]) == 1    # negative logits are multiplied


def test_same_seed_same_draws():
    s1, s2 = Sampler(SamplingParams(seed=7, top_k=0, min_p=0)), Sampler(SamplingParams(seed=7, top_k=0, min_p=0))
    first = [s1(LOGITS) for _ in range(50)]
    assert first == [s2(LOGITS) for _ in range(50)]
    assert len(set(first)) > 1   # it really sampled


@pytest.mark.parametrize("bad", [dict(temperature=-1), dict(top_p=0), dict(top_p=1.5), dict(min_p=2),
                                 dict(repeat_penalty=0), dict(typical_p=0)])
def test_bad_parameters_are_refused(bad):
    with pytest.raises(ValueError):
        SamplingParams(**bad)
