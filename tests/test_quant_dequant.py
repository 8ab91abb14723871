"""Dequantization oracle: gguf-py's `gguf.quants.dequantize`, bit for bit.

For every supported type: our numpy reference (`dequantize_blocks`) equals gguf-py on >= 10,000
random blocks whose f16 scale fields cover ordinary, huge, tiny, subnormal, zero, negative, inf and
nan values; our Numba kernels (through `quant.dequantize`) equal our numpy reference; and every
tensor of the real SmolLM2 file and of its llama.cpp Q4_K_M re-quantization matches gguf-py.
"""
import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader
from gguf.quants import dequantize as gguf_dequantize

from quant import QuantizedTensor, dequantize
from quant.formats import FORMATS

# Byte offsets of each block's f16 fields (scales and minimums).
F16_FIELDS = {
    T.F32: [], T.BF16: [], T.F16: [0],
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
}
SPECIAL_F16 = np.array([
    0x3C00, 0xBC00, 0x2E66,  # 1, -1, 0.1
    0x7BFF, 0xFBFF, 0x7800,  # +-65504 (largest), 32768
    0x0400, 0x8400,  # +-2**-14 (smallest normal)
    0x0001, 0x8001, 0x03FF, 0x0200,  # subnormals
    0x0000, 0x8000,  # +-0
    0x7C00, 0xFC00,  # +-inf
    0x7E00, 0xFE00, 0x7C01, 0x7D55,  # quiet and signalling nans with payloads
], dtype=np.uint16)


def random_blocks(ggml_type, n_blocks: int, seed: int) -> np.ndarray:
    """(n_blocks, BYTES) random bytes; f16 fields: half ordinary values, half from SPECIAL_F16."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (n_blocks, FORMATS[ggml_type].BYTES), dtype=np.uint8)
    for off in F16_FIELDS[ggml_type]:
        ordinary = rng.normal(0, 0.05, n_blocks).astype(np.float16).view(np.uint16)
        special = rng.choice(SPECIAL_F16, n_blocks)
        bits = np.where(rng.random(n_blocks) < 0.5, ordinary, special)
        blocks[:, off:off + 2] = bits.view(np.uint8).reshape(n_blocks, 2)
    return blocks


def assert_bits_equal(ours: np.ndarray, ref: np.ndarray, what: str):
    """Bit-exact; two nans with different payloads count as equal (when both operands of an add
    are nan, IEEE leaves open which payload survives, and LLVM may commute the operands)."""
    assert ours.shape == ref.shape and ours.dtype == ref.dtype == np.float32, what
    differ = ours.view(np.uint32) != ref.view(np.uint32)
    differ &= ~(np.isnan(ours) & np.isnan(ref))
    assert not differ.any(), f"{what}: {differ.sum()} of {differ.size} values differ"


@pytest.mark.parametrize("ggml_type", list(FORMATS), ids=lambda t: t.name)
def test_random_blocks_bit_exact(ggml_type):
    fmt = FORMATS[ggml_type]
    n_blocks = max(10_000, 40_000 // fmt.BLOCK)
    blocks = random_blocks(ggml_type, n_blocks, seed=int(ggml_type))
    with np.errstate(all="ignore"):  # inf * 0 and friends are part of the test
        ref = gguf_dequantize(blocks, ggml_type).reshape(n_blocks, fmt.BLOCK)
        ours = fmt.dequantize_blocks(blocks)
    np.testing.assert_array_equal(ours.view(np.uint32), ref.view(np.uint32), f"{ggml_type.name} numpy")

    per_row = 256 // fmt.BLOCK if fmt.BLOCK < 256 else 4  # rows of 256 or 1024 weights
    rows = n_blocks // per_row
    data = blocks[:rows * per_row].reshape(rows, per_row * fmt.BYTES)
    w = QuantizedTensor("random", ggml_type, (rows, per_row * fmt.BLOCK), data)
    assert_bits_equal(dequantize(w).reshape(-1, fmt.BLOCK), ref[:rows * per_row], f"{ggml_type.name} numba")


def check_file(path):
    """Every tensor of a GGUF file: ours (numpy and Numba) vs gguf-py, bit for bit."""
    types_seen = set()
    for t in GGUFReader(path).tensors:
        ggml_type = T(t.tensor_type)
        fmt = FORMATS[ggml_type]
        shape = tuple(int(n) for n in reversed(t.shape))  # GGUF lists the innermost axis first
        raw = np.ascontiguousarray(t.data).view(np.uint8).reshape(*shape[:-1], -1)
        ref = gguf_dequantize(raw, ggml_type).reshape(shape)
        ours_np = fmt.dequantize_blocks(raw.reshape(-1, fmt.BYTES)).reshape(shape)
        np.testing.assert_array_equal(ours_np.view(np.uint32), ref.view(np.uint32), t.name)
        ours = dequantize(QuantizedTensor(t.name, ggml_type, shape, raw))
        np.testing.assert_array_equal(ours.view(np.uint32), ref.view(np.uint32), t.name)
        types_seen.add(ggml_type.name)
    return types_seen


@pytest.mark.slow
def test_smollm2_file_bit_exact(smollm2_path):
    assert "Q4_1" in check_file(smollm2_path)


@pytest.mark.slow
def test_smollm2_q4km_file_bit_exact(smollm2_q4km_path, smollm2_q4km_by_llama_cpp):
    """Ours and llama.cpp's Q4_K_M re-quantizations of SmolLM2 (byte-identical: test_quantize.py)."""
    for path in (smollm2_q4km_path, smollm2_q4km_by_llama_cpp):
        seen = check_file(path)
        assert {"Q4_K", "Q6_K"} <= seen, seen
