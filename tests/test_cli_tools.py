"""The quantize and bench commands end to end on a tiny model."""
import json

import gguf
from click.testing import CliRunner

import cli
import gguf_runner
from models import MISTRAL


def test_quantize_command_writes_a_runnable_file(tiny_gguf, tmp_path):
    out = tmp_path / "q8.gguf"
    r = CliRunner().invoke(cli.main, ["quantize", str(tiny_gguf(MISTRAL)), str(out), "--type", "Q8_0"])
    assert r.exit_code == 0, r.output
    types = {t.tensor_type.name for t in gguf.GGUFReader(str(out)).tensors}
    assert types == {"Q8_0", "F32"}
    assert gguf_runner.load(out).logits([5, 6, 7]).shape == (3, MISTRAL.vocab)


def test_quantize_command_errors(tiny_gguf, tmp_path):
    r = CliRunner().invoke(cli.main, ["quantize", str(tiny_gguf(MISTRAL)), str(tmp_path / "x.gguf"), "--type", "Q9"])
    assert r.exit_code == 2 and "unknown quantization type" in r.output
    r = CliRunner().invoke(cli.main, ["quantize", str(tmp_path / "missing.gguf"), str(tmp_path / "x.gguf")])
    assert r.exit_code == 2 and r.output.startswith("error: ")


def test_bench_command_prints_a_table_and_json(tiny_gguf, tmp_path):
    report = tmp_path / "bench.json"
    r = CliRunner().invoke(cli.main, ["bench", "-m", str(tiny_gguf(MISTRAL)), "-p", "8", "-n", "4", "-r", "1",
                                      "-t", "1", "--json", str(report)])
    assert r.exit_code == 0, r.output
    assert "pp8" in r.output and "tg" in r.output
    assert json.loads(report.read_text())
