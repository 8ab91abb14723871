"""gguf-runner batch: input parsing, the output's crash safety (torn lines, full disk, SIGKILL and
Ctrl-C part-way then a rerun), per-item settings and error records. Runs on a tiny random model."""
import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

import cli
import gguf_runner
from gguf_runner import batch
from gguf_runner.batch import Output, read_items
from models import MISTRAL

FAST = ["-n", "6", "--temp", "0", "--ignore-eos", "-c", "128"]


@pytest.fixture(scope="module")
def tiny(tiny_gguf):
    return tiny_gguf(MISTRAL)


@pytest.fixture(scope="module")
def model(tiny):
    return gguf_runner.load(tiny, n_ctx=128)


def records(path):
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n"), "output must end with a complete line"
    return [json.loads(line) for line in data.splitlines()]


def invoke(*args):
    return CliRunner().invoke(cli.main, ["batch", *map(str, args)])


# --- input -----------------------------------------------------------------------------------------
def test_text_input_skips_blank_lines_and_numbers_ids(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("first\n\n  \nsecond line\r\nthird")
    items = read_items(f)
    assert [(it.id, it.prompt) for it in items] == [(1, "first"), (4, "second line"), (5, "third")]


def test_jsonl_input_and_bad_items(tmp_path):
    f = tmp_path / "p.jsonl"
    lines = [
        {"id": "a", "prompt": "hi", "max_tokens": 3, "stop": "x", "seed": 1, "temperature": 1},
        {"id": 7, "messages": [{"role": "user", "content": "yo"}]},
        "not json",
        {"prompt": "no id"},
        {"id": "b"},
        {"id": "c", "prompt": "p", "messages": []},
        {"id": "d", "prompt": "p", "top_k": 1.5},
        {"id": "a", "prompt": "again"},
        {"id": [1], "prompt": "p"},
        {"id": "e", "messages": [{"role": "user"}]},
        {"id": "f", "prompt": "p", "temperature": True},
    ]
    f.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    items = read_items(f)
    ok = [it for it in items if not it.error]
    assert [(it.id, it.prompt, it.options) for it in ok[:1]] == [
        ("a", "hi", {"max_tokens": 3, "stop": ["x"], "seed": 1, "temperature": 1})]
    assert ok[1].id == 7 and ok[1].messages == [{"role": "user", "content": "yo"}]
    errors = {it.id: it.error for it in items if it.error}
    assert errors["line 3"].startswith("line 3: invalid JSON")
    assert "id" in errors["line 4"] and "line 9" in errors
    assert "exactly one of 'prompt' or 'messages'" in errors["b"] and "exactly one" in errors["c"]
    assert "top_k: expected int" in errors["d"] and "duplicate id" in errors["line 8"]
    assert "messages" in errors["e"] and "temperature: expected float" in errors["f"]


def test_unreadable_input_is_a_clean_error(tmp_path, tiny):
    r = invoke("-m", tiny, tmp_path / "missing.txt", "-o", tmp_path / "o.jsonl")
    assert r.exit_code == 2 and r.stderr.startswith("error: cannot read") and len(r.stderr.splitlines()) == 1


# --- output ----------------------------------------------------------------------------------------
def test_torn_last_line_is_cut_and_its_id_redone(tmp_path):
    out = tmp_path / "o.jsonl"
    out.write_bytes(b'{"id": 1, "text": "a"}\n{"id": 2, "text": "b"}\n{"id": 3, "te')
    o = Output(out)
    assert o.done == {"1", "2"} and out.read_bytes().endswith(b'"b"}\n')
    o.append({"id": 3, "text": "c"})
    o.close()
    assert [r["id"] for r in records(out)] == [1, 2, 3]


def test_garbled_complete_last_line_is_cut_middle_one_kept(tmp_path, capsys):
    out = tmp_path / "o.jsonl"
    out.write_bytes(b'{"id": 1}\n{garbage\n{"id": 2}\n{"id": 3, "te\n')
    o = Output(out)
    assert o.done == {"1", "2"}
    assert out.read_bytes() == b'{"id": 1}\n{garbage\n{"id": 2}\n'
    assert "line 2 is not valid JSON" in capsys.readouterr().err


def test_disk_full_loses_nothing(tmp_path, monkeypatch, tiny):
    """A short write (disk full) is cut back off; the records already there stay; exit 2, one line."""
    inp, out = tmp_path / "p.txt", tmp_path / "o.jsonl"
    inp.write_text("a\nb\nc\nd\n")
    out.write_text(json.dumps({"id": 1, "text": "done before"}) + "\n")
    real_write, calls = os.write, []

    def short_write(fd, data):
        calls.append(len(data))
        if len(calls) == 2:   # the second record: half of it reaches the disk
            return real_write(fd, data[:len(data) // 2])
        return real_write(fd, data)

    monkeypatch.setattr(batch.os, "write", short_write)
    r = invoke("-m", tiny, inp, "-o", out, *FAST)
    assert r.exit_code == 2 and r.stderr.splitlines()[-1].startswith(f"error: cannot write {out}")
    assert [x["id"] for x in records(out)] == [1, 2]


def test_dev_full(tmp_path, tiny):
    inp = tmp_path / "p.txt"
    inp.write_text("a\n")
    r = invoke("-m", tiny, inp, "-o", "/dev/full", *FAST)
    assert r.exit_code == 2 and r.stderr.splitlines()[-1] == "error: cannot write /dev/full: No space left on device"


def test_read_only_output(tmp_path, monkeypatch, tiny):
    inp, out = tmp_path / "p.txt", tmp_path / "o.jsonl"
    inp.write_text("a\n")
    real_open = os.open

    def read_only(path, flags, *a):
        if str(path) == str(out) and flags & os.O_WRONLY:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *a)

    monkeypatch.setattr(batch.os, "open", read_only)
    r = invoke("-m", tiny, inp, "-o", out, *FAST)
    assert r.exit_code == 2 and r.stderr.strip() == f"error: cannot write {out}: Read-only file system"


# --- runs ------------------------------------------------------------------------------------------
def test_text_batch_matches_generate_and_resumes(tmp_path, tiny, model):
    inp, out = tmp_path / "p.txt", tmp_path / "o.jsonl"
    inp.write_text("hello there\n\nsome more words\nlast one\n")
    r = invoke("-m", tiny, inp, "-o", out, *FAST)
    assert r.exit_code == 0, r.stderr
    got = records(out)
    assert [x["id"] for x in got] == [1, 3, 4]
    first = got[0]
    c = model.generate("hello there", max_tokens=6, temperature=0, ignore_eos=True)
    assert (first["text"], first["finish_reason"], first["prompt_tokens"], first["completion_tokens"]) == (
        c.text, "length", c.prompt_tokens, 6)
    assert set(first["timings"]) >= {"prompt_tps", "tps", "time_to_first_token", "generated_tokens"}
    assert "[3/3]" in r.stderr and "batch: 3 ok, 0 errors, 0 already done (of 3)" in r.stderr
    again = invoke("-m", tiny, inp, "-o", out, *FAST)
    assert again.exit_code == 0 and "3 already done" in again.stderr and len(records(out)) == 3


def test_jsonl_batch_per_item_settings_and_errors(tmp_path, tiny, model):
    inp, out = tmp_path / "p.jsonl", tmp_path / "o.jsonl"
    items = [
        {"id": "seeded", "prompt": "hello", "temperature": 1.0, "seed": 3, "top_k": 50, "top_p": 0.9, "min_p": 0.0},
        {"id": "short", "prompt": "hello", "max_tokens": 2},
        {"id": "chat", "messages": [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hi"}]},
        {"id": "long", "prompt": "word " * 200},
        {"id": "badtemp", "prompt": "x", "temperature": -1},
        {"id": "badtopp", "prompt": "x", "top_p": 0},
    ]
    inp.write_text("\n".join(map(json.dumps, items)) + "\n{broken\n")
    r = invoke("-m", tiny, inp, "-o", out, *FAST, "--chat-template", "chatml")
    assert r.exit_code == 0, r.stderr
    got = {x["id"]: x for x in records(out)}
    assert list(got) == ["seeded", "short", "chat", "long", "badtemp", "badtopp", "line 7"]
    want = model.generate("hello", max_tokens=6, ignore_eos=True, temperature=1.0, seed=3, top_k=50,
                          top_p=0.9, min_p=0.0)
    assert got["seeded"]["text"] == want.text
    assert got["short"]["completion_tokens"] == 2
    assert got["chat"]["text"] == model.chat(items[2]["messages"], chat_template="chatml", max_tokens=6,
                                             temperature=0, ignore_eos=True).text
    assert "does not fit in n_ctx 128" in got["long"]["error"]
    assert got["badtemp"]["error"] == "temperature must be >= 0, got -1"
    assert got["badtopp"]["error"] == "top_p must be in (0, 1], got 0"
    assert "invalid JSON" in got["line 7"]["error"]
    assert "3 ok, 4 errors" in r.stderr


def test_stop_strings_per_item(tmp_path, tiny, model):
    full = model.generate("abc", max_tokens=6, temperature=0, ignore_eos=True).text
    stop = full[3:5]
    inp, out = tmp_path / "p.jsonl", tmp_path / "o.jsonl"
    inp.write_text(json.dumps({"id": 1, "prompt": "abc", "stop": [stop]}) + "\n")
    assert invoke("-m", tiny, inp, "-o", out, *FAST).exit_code == 0
    assert records(out)[0]["text"] == full[:full.find(stop)]


def test_missing_chat_template_fails_before_writing(tmp_path, tiny):
    inp, out = tmp_path / "p.txt", tmp_path / "o.jsonl"
    inp.write_text("a\nb\n")
    r = invoke("-m", tiny, inp, "-o", out, "--chat")   # the tiny model has no template and none is named
    assert r.exit_code == 2 and "chat_template" in r.stderr and not out.exists()


# --- kills -----------------------------------------------------------------------------------------
def wait_for_lines(out, n, proc, timeout=60):
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        if out.exists() and out.read_bytes().count(b"\n") >= n:
            return
        time.sleep(0.005)
    raise AssertionError(f"the batch exited or stalled before {n} records (rc {proc.poll()})")


def check_output(out):
    got = records(out)                          # every line valid JSON, the last one complete
    ids = [x["id"] for x in got]
    assert len(ids) == len(set(ids)), "an id written twice"
    assert all("text" in x for x in got)
    return ids


def test_sigkill_part_way_then_rerun(tmp_path, tiny):
    inp, out = tmp_path / "p.txt", tmp_path / "o.jsonl"
    inp.write_text("".join(f"prompt number {i} about things\n" for i in range(40)))
    cmd = [sys.executable, "-m", "cli", "batch", "-m", str(tiny), str(inp), "-o", str(out),
           "-n", "24", "--temp", "0", "--ignore-eos", "-c", "128"]
    before = 0
    for kill_at in (3, 14, 27):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_lines(out, kill_at, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        ids = check_output(out)
        assert max(before, kill_at) <= len(ids) < 40   # killed part-way; nothing written earlier was lost
        before = len(ids)
    # a crash mid-write would leave a torn tail: make one, the rerun must repair it
    with open(out, "ab") as f:
        f.write(b'{"id": 40, "text": "half a rec')
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "cut a torn last line" in done.stderr and "already done" in done.stderr
    assert sorted(check_output(out)) == list(range(1, 41))


def test_ctrl_c_part_way_then_rerun(tmp_path, tiny):
    inp, out = tmp_path / "p.txt", tmp_path / "o.jsonl"
    inp.write_text("".join(f"another prompt {i}\n" for i in range(20)))
    cmd = [sys.executable, "-m", "cli", "batch", "-m", str(tiny), str(inp), "-o", str(out),
           "-n", "24", "--temp", "0", "--ignore-eos", "-c", "128"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for_lines(out, 4, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "rerun the same command to resume" in err and "Traceback" not in err
    check_output(out)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert sorted(check_output(out)) == list(range(1, 21))
