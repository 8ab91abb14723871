"""gguf-runner run / list / inspect and the flags every generating command shares: stdout carries
exactly the generated text, settings layer models.yaml defaults < the entry's sampling < flags, and
every bad input is one `error:` line with exit code 2."""
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

import cli
import gguf_runner
from gguf_runner import registry
from models import MISTRAL

ROOT = Path(__file__).resolve().parent.parent
CHATML = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
SCRIPT = Path(sys.executable).parent / "gguf-runner"


@pytest.fixture(scope="module")
def tiny(tiny_gguf):
    return tiny_gguf(MISTRAL)


@pytest.fixture(scope="module")
def model(tiny):
    return gguf_runner.load(tiny, n_ctx=128)


@pytest.fixture
def user_yaml(tmp_path, monkeypatch):
    """Write the user's models.yaml (a dict) for this test."""
    path = tmp_path / "user-models.yaml"
    monkeypatch.setattr(registry, "USER", path)
    monkeypatch.setenv("GGUF_RUNNER_MODELS", str(tmp_path / "models"))
    return lambda data: path.write_text(yaml.safe_dump(data))


def run(*args, input=None):
    return CliRunner().invoke(cli.main, ["run", *map(str, args)], input=input)


def one_error_line(r, contains=""):
    assert r.exit_code == 2, (r.exit_code, r.output)
    assert r.stdout == "" and "Traceback" not in r.output
    assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert contains in r.stderr, r.stderr
    return r.stderr


# --- the important ones, as real processes ------------------------------------------------------------
def test_run_stdout_is_exactly_the_generated_text(smollm2_path):
    p = subprocess.run([str(SCRIPT), "run", "-m", str(smollm2_path), "-p", CHATML, "-n", "32", "--temp", "0"],
                       capture_output=True, timeout=120)
    assert p.returncode == 0, p.stderr
    want = gguf_runner.load(smollm2_path, n_ctx=1024).generate(CHATML, max_tokens=32, temperature=0).text
    assert p.stdout.decode("utf-8") == want and "Paris" in want
    err = p.stderr.decode()
    for pattern in (r"prompt: +\d+ tokens in [\d.]+ s \([\d.]+ tokens/s\)",
                    r"generated: +\d+ tokens in [\d.]+ s \([\d.]+ tokens/s\)",
                    r"time to first token: [\d.]+ s", r"peak RSS: [\d.]+ MiB"):
        assert re.search(pattern, err), err


@pytest.mark.parametrize("args, message", [
    (["-m", "no-such-model", "-p", "x"], "unknown model 'no-such-model': not a file, and not one of: smollm2"),
    (["-p", "x", "-t", "0"], "--threads must be >= 1, got 0"),
])
def test_errors_in_a_real_process(args, message):
    p = subprocess.run([sys.executable, "-m", "cli", "run", *args], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.startswith(f"error: {message}") and len(p.stderr.splitlines()) == 1


# --- run ------------------------------------------------------------------------------------------
def test_every_sampling_flag_reaches_generate(tiny, model):
    r = run("-m", tiny, "-c", 128, "-t", 1, "-p", "hello world", "-n", 12, "--temp", 0.9, "--top-k", 20,
            "--top-p", 0.9, "--min-p", 0.01, "--typical", 0.95, "--repeat-penalty", 1.1, "--repeat-last-n", 16,
            "--presence-penalty", 0.1, "--frequency-penalty", 0.2, "--seed", 7, "--ignore-eos")
    assert r.exit_code == 0, r.output
    want = model.generate("hello world", max_tokens=12, temperature=0.9, top_k=20, top_p=0.9, min_p=0.01,
                          typical_p=0.95, repeat_penalty=1.1, penalty_last_n=16, presence_penalty=0.1,
                          frequency_penalty=0.2, seed=7, ignore_eos=True)
    assert r.stdout == want.text and "generated: 12 tokens" in r.stderr


def test_stop_flag_repeatable(tiny, model):
    full = model.generate("abc", max_tokens=10, temperature=0, ignore_eos=True).text
    stops = [full[6:8], full[3:5]]
    r = run("-m", tiny, "-p", "abc", "-n", 10, "--temp", 0, "--ignore-eos", "--stop", stops[0], "--stop", stops[1])
    assert r.exit_code == 0 and r.stdout == full[:min(full.find(s) for s in stops)]
    assert "finish: stop" in r.stderr


def test_prompt_from_file_and_stdin(tiny, model, tmp_path):
    f = tmp_path / "prompt.txt"
    f.write_text("from a file\n")
    want = model.generate("from a file\n", max_tokens=5, temperature=0, ignore_eos=True).text
    assert run("-m", tiny, "-f", f, "-n", 5, "--temp", 0, "--ignore-eos").stdout == want
    assert run("-m", tiny, "-f", "-", "-n", 5, "--temp", 0, "--ignore-eos", input="from a file\n").stdout == want


def test_chat_system_and_template_file(tiny, model, tmp_path):
    msgs = [{"role": "system", "content": "be kind"}, {"role": "user", "content": "hi"}]
    want = model.chat(msgs, chat_template="chatml", max_tokens=6, temperature=0, ignore_eos=True).text
    r = run("-m", tiny, "--chat", "--system", "be kind", "--chat-template", "chatml", "-p", "hi", "-n", 6,
            "--temp", 0, "--ignore-eos")
    assert r.exit_code == 0 and r.stdout == want
    jinja = tmp_path / "t.jinja"
    jinja.write_text("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}[assistant] ")
    want = model.chat(msgs[1:], chat_template=jinja.read_text(), max_tokens=6, temperature=0, ignore_eos=True)
    r = run("-m", tiny, "--chat", "--chat-template", jinja, "-p", "hi", "-n", 6, "--temp", 0, "--ignore-eos")
    assert r.exit_code == 0 and r.stdout == want.text


def test_n_predict_minus_one_fills_the_context(tiny):
    r = run("-m", tiny, "-c", 24, "-p", "hi", "-n", -1, "--temp", 0, "--ignore-eos")
    prompt = int(re.search(r"prompt: +(\d+)", r.stderr).group(1))
    assert r.exit_code == 0 and f"generated: {24 - prompt} tokens" in r.stderr


def test_settings_layering(tiny, user_yaml):
    assert registry.settings(None, {}) == (1024, {"temperature": 0.7, "max_tokens": 2000})
    user_yaml({"defaults": {"context_length": 40},
               "models": {"tinyone": {"file": Path(tiny).name, "sampling": {"temperature": 0, "max_tokens": 5}}}})
    entry = registry.registry()["models"]["tinyone"]
    assert registry.settings(entry, {"max_tokens": 3, "top_k": None}) == (40, {"temperature": 0, "max_tokens": 3})
    r = run("-m", tiny, "-p", "hi", "--ignore-eos")   # a path whose file name is the entry's: its settings apply
    assert r.exit_code == 0 and "generated: 5 tokens" in r.stderr
    r = run("-m", tiny, "-p", "hi", "--ignore-eos", "-n", -1)
    prompt = int(re.search(r"prompt: +(\d+)", r.stderr).group(1))
    assert f"generated: {40 - prompt} tokens" in r.stderr
    user_yaml({"models": {"tinyone": {"file": Path(tiny).name, "sampling": {"temprature": 0}}}})
    one_error_line(run("-m", tiny, "-p", "hi"), "unknown setting(s) temprature")


def test_make_run_works_with_the_default_model():
    line = next(x for x in (ROOT / "Makefile").read_text().splitlines() if "gguf-runner run" in x)
    args = shlex.split(line)[1:]   # after $(VENV)/bin/gguf-runner
    assert args[0] == "run" and "-m" not in args
    r = CliRunner().invoke(cli.main, [*args, "--temp", "0", "-n", "24"])
    assert r.exit_code == 0, r.output
    assert "Paris" in r.stdout


@pytest.mark.parametrize("args, message", [
    (["-m", "no-such-model", "-p", "hi"], "unknown model 'no-such-model'"),
    (["-m", "missing/model.gguf", "-p", "hi"], "cannot open: No such file or directory"),
    (["-m", str(ROOT / "README.md"), "-p", "hi"], "not a GGUF file"),
    (["-c", "8", "-p", "one two three four five six seven eight nine ten"], "does not fit in n_ctx 8"),
    (["-n", "-2", "-p", "hi"], "--n-predict must be >= 0, or -1"),
    (["-t", "0", "-p", "hi"], "--threads must be >= 1, got 0"),
    (["-c", "0", "-p", "hi"], "--ctx-size must be >= 1, got 0"),
    (["--top-p", "1.5", "-p", "hi"], "top_p must be in (0, 1], got 1.5"),
    (["--top-p", "0", "-p", "hi"], "top_p must be in (0, 1], got 0.0"),
    (["--temp", "-1", "-p", "hi"], "temperature must be >= 0"),
    (["--min-p", "2", "-p", "hi"], "min_p must be in [0, 1]"),
    (["--repeat-penalty", "0", "-p", "hi"], "repeat_penalty must be > 0"),
    (["--chat-template", "no-such-template", "-p", "hi"], "unknown chat template 'no-such-template'"),
    (["--chat", "-p", "hi"], "no tokenizer.chat_template"),
    (["-f", "/no/such/prompt.txt"], "cannot read prompt file /no/such/prompt.txt: No such file"),
    (["-f", "/"], "cannot read prompt file /: Is a directory"),
    (["-f", "x.txt", "-p", "y"], "not both"),
    ([], "no prompt"),
])
def test_run_errors(tiny, args, message):
    one_error_line(run(*(args if "-m" in args else ["-m", tiny, *args])), message)


def test_bad_flag_value_is_a_usage_error():
    r = run("-t", "many", "-p", "x")
    assert r.exit_code == 2 and "Invalid value for '-t' / '--threads'" in r.stderr


# --- list, inspect --------------------------------------------------------------------------------
def test_list(user_yaml, tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "here.gguf").write_bytes(b"GGUF")
    user_yaml({"models": {"mine": {"file": "here.gguf"}, "elsewhere": {"file": "gone.gguf", "url": "http://x/y"}}})
    r = CliRunner().invoke(cli.main, ["list"])
    assert r.exit_code == 0
    rows = {line.split()[1] if line.startswith("*") else line.split()[0]: line for line in r.stdout.splitlines()}
    assert rows["smollm2-135m-instruct"].startswith("* ") and rows["smollm2-135m-instruct"].endswith("yes")
    assert rows["mine"].endswith("yes") and "here.gguf" in rows["mine"]
    assert rows["elsewhere"].endswith("no") and rows["mixtral-8x22b-instruct-v0.1"].endswith("no (no url)")
    data = {x["name"]: x for x in json.loads(CliRunner().invoke(cli.main, ["list", "--json"]).stdout)}
    assert data["mine"]["present"] and data["mine"]["source"] == "user" and not data["elsewhere"]["present"]
    assert data["smollm2-135m-instruct"]["default"] and data["smollm2-135m-instruct"]["source"] == "shipped"


def test_inspect_still_works(tiny):
    r = CliRunner().invoke(cli.main, ["inspect", str(tiny), "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["architecture"] == "llama"
    one_error_line(CliRunner().invoke(cli.main, ["inspect", "no-such-model"]), "unknown model")
