"""Files we cannot run get one line saying what is wrong and what is supported, and exit code 2:
another architecture, a tensor type without a kernel, a missing tensor, a wrong shape, and files that
are not models at all."""
from dataclasses import replace

import gguf
import numpy as np
import pytest
from click.testing import CliRunner

import cli
from models import MISTRAL, add_spm_vocab, random_weights, write_gguf

SMALL = replace(MISTRAL, n_layers=1)


def run_cli(path, *extra):
    r = CliRunner().invoke(cli.main, ["run", "-m", str(path), "-p", "hi", "-n", "2", *extra])
    return r.exit_code, r.output.strip()


def write_with(path, edit):
    """A tiny model whose tensors pass through edit(dict name -> (array, raw_dtype)) before writing."""
    w = random_weights(SMALL)
    write_gguf(path, SMALL, w)
    r = gguf.GGUFReader(str(path))
    tensors = {t.name: (np.array(t.data), t.tensor_type) for t in r.tensors}
    fields = {k: f for k, f in r.fields.items() if not k.startswith("GGUF.")}
    arch = edit(tensors, fields) or "llama"
    g = gguf.GGUFWriter(str(path) + ".new", arch)
    for name, f in fields.items():
        if name == "general.architecture":
            continue
        sub = f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
        g.add_key_value(name.replace("llama.", f"{arch}."), f.contents(), f.types[0], sub_type=sub)
    for name, (data, qtype) in tensors.items():
        g.add_tensor(name, data, raw_dtype=qtype)
    g.write_header_to_file()
    g.write_kv_data_to_file()
    g.write_tensors_to_file()
    g.close()
    return str(path) + ".new"


def test_other_architecture(tmp_path):
    path = write_with(tmp_path / "m.gguf", lambda t, f: "gemma")
    code, out = run_cli(path)
    assert code == 2 and "unsupported architecture 'gemma'" in out and "llama" in out
    assert len(out.splitlines()) == 1


@pytest.mark.parametrize("qtype", [gguf.GGMLQuantizationType.Q2_K, gguf.GGMLQuantizationType.IQ2_XS])
def test_tensor_type_without_a_kernel(tmp_path, qtype):
    def edit(tensors, fields):
        rows, cols = tensors["blk.0.ffn_up.weight"][0].shape
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        tensors["blk.0.ffn_up.weight"] = (np.zeros((rows, cols // block * size), np.uint8), qtype)
    code, out = run_cli(write_with(tmp_path / "m.gguf", edit))
    assert code == 2 and qtype.name in out and "blk.0.ffn_up.weight" in out and "Q4_K" in out
    assert len(out.splitlines()) == 1


def test_missing_tensor(tmp_path):
    code, out = run_cli(write_with(tmp_path / "m.gguf", lambda t, f: t.pop("blk.0.attn_k.weight") and None))
    assert code == 2 and "missing tensor blk.0.attn_k.weight" in out


class Field:
    """Stands in for a gguf ReaderField in write_with: one scalar value of a given type."""
    def __init__(self, value, vtype):
        self.value, self.types = value, [vtype]

    def contents(self):
        return self.value


def test_metadata_claiming_a_billion_layers_fails_at_the_first_missing_one(tmp_path):
    def edit(tensors, fields):
        fields["llama.block_count"] = Field(10**9, gguf.GGUFValueType.UINT32)
    code, out = run_cli(write_with(tmp_path / "m.gguf", edit))   # a hang before (one name per claimed layer)
    assert code == 2 and "missing tensor blk.1.attn_norm.weight" in out and len(out.splitlines()) == 1


def test_wrong_shape(tmp_path):
    def edit(tensors, fields):
        data, qtype = tensors["blk.0.attn_q.weight"]
        tensors["blk.0.attn_q.weight"] = (data[:128], qtype)
    code, out = run_cli(write_with(tmp_path / "m.gguf", edit))
    assert code == 2 and "blk.0.attn_q.weight" in out and "shape" in out


@pytest.mark.parametrize("kind", ["missing", "directory", "empty", "text"])
def test_not_a_model_file(tmp_path, kind):
    path = tmp_path / "x.gguf"
    if kind == "directory":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("hello, this is not a model\n" * 10)
    code, out = run_cli(path)
    assert code == 2 and out.startswith("error: ") and len(out.splitlines()) == 1


def test_vocab_only_file_is_refused_for_generation_but_tokenizes(tmp_path):
    g = gguf.GGUFWriter(str(tmp_path / "vocab.gguf"), "llama")
    add_spm_vocab(g, 300)
    g.write_header_to_file()
    g.write_kv_data_to_file()
    g.close()
    import gguf_runner
    m = gguf_runner.load(tmp_path / "vocab.gguf", vocab_only=True)
    assert m.detokenize(m.tokenize("hat", add_bos=False)) == "hat"
    with pytest.raises(gguf_runner.ModelError, match="vocab_only"):
        m.generate("hat", max_tokens=2)
    code, out = run_cli(tmp_path / "vocab.gguf")
    assert code == 2 and "token_embd.weight" in out
