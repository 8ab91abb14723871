"""gguf-runner chat: multi-line input, commands, history that outgrows the context, Ctrl-C in the middle
of an answer (the model state stays consistent), and the real thing through a pty on SmolLM2."""
import io
import json
import os
import pty
import select
import signal
import sys
import time

import pytest
from click.testing import CliRunner
from models import MISTRAL

import cli
import gguf_runner
from gguf_runner.repl import ChatSession, check_messages, read_message

GREEDY = {"max_tokens": 8, "temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module")
def tiny(tiny_gguf):
    return tiny_gguf(MISTRAL)


def session(path, n_ctx=256, system=None, **kw):
    model = gguf_runner.load(path, n_ctx=n_ctx)
    return ChatSession(model, system=system, chat_template="chatml", gen={**GREEDY, **kw},
                       out=io.StringIO(), err=io.StringIO())


def lines(*xs):
    it = iter(xs)

    def ask(prompt):
        try:
            return next(it)
        except StopIteration:
            raise EOFError from None
    return ask


def test_read_message_continuations_and_blocks():
    assert read_message(lines("hello")) == "hello"
    assert read_message(lines("one \\", "two\\", "three")) == "one \ntwo\nthree"
    assert read_message(lines('"""', "a", "", "b", '"""')) == "a\n\nb"
    assert read_message(lines('"""first', 'last"""')) == "first\nlast"
    assert read_message(lines('"""all on one line"""')) == "all on one line"
    with pytest.raises(EOFError):
        read_message(lines('"""', "never closed"))


def test_check_messages():
    ok = [{"role": "user", "content": "hi", "extra": 1}]
    assert check_messages(ok) == [{"role": "user", "content": "hi"}]
    assert check_messages({"messages": ok}) == [{"role": "user", "content": "hi"}]
    for bad in ({"x": 1}, [{"role": "user"}], "text", [1]):
        with pytest.raises(ValueError):
            check_messages(bad)


def test_answers_keep_history_and_match_a_fresh_chat(tiny):
    s = session(tiny, system="be brief")
    first = s.ask("hello")
    second = s.ask("and then?")
    assert first.text and second.text and s.out.getvalue() == first.text + "\n" + second.text + "\n"
    roles = [m["role"] for m in s.messages()]
    assert roles == ["system", "user", "assistant", "user", "assistant"]
    fresh = gguf_runner.load(tiny, n_ctx=256)
    assert fresh.chat(s.messages()[:-1], chat_template="chatml", **GREEDY).text == second.text


def test_context_full_drops_oldest_turns_keeps_system(tiny):
    s = session(tiny, n_ctx=160, system="sys")
    for i in range(8):
        assert s.ask(f"message number {i} with some words") is not None
        assert len(s._ids(s.messages())) <= 160
    assert "context full: dropped the oldest" in s.err.getvalue()
    msgs = s.messages()
    assert msgs[0] == {"role": "system", "content": "sys"}
    assert msgs[1]["role"] == "user" and msgs[-2]["content"] == "message number 7 with some words"
    assert len(msgs) < 17


def test_message_too_long_for_the_context_is_refused(tiny):
    s = session(tiny, n_ctx=64)
    assert s.ask("word " * 100) is None
    assert "does not fit in the context" in s.err.getvalue() and s.turns == []
    assert s.ask("short") is not None


def test_interrupt_mid_forward_keeps_partial_answer_and_a_consistent_model(tiny):
    s = session(tiny, max_tokens=12)
    s.ask("first question")
    ffn, calls = s.model.transformer.feed_forward, [0]

    def interrupting(i, h):
        calls[0] += 1
        if calls[0] == 11:    # layer 0's cache already holds the new token: a real mid-forward stop
            raise KeyboardInterrupt
        return ffn(i, h)

    s.model.transformer.feed_forward = interrupting
    assert s.ask("second question") is None
    s.model.transformer.feed_forward = ffn
    assert "[interrupted]" in s.err.getvalue()
    partial = s.turns[-1]
    assert partial["role"] == "assistant" and s.turns[-2]["content"] == "second question"
    third = s.ask("third question")
    fresh = gguf_runner.load(tiny, n_ctx=256)
    assert third.text == fresh.chat(s.messages()[:-1], chat_template="chatml", **{**GREEDY, "max_tokens": 12}).text


def test_commands(tiny, tmp_path):
    s = session(tiny)
    s.ask("hi")
    assert s.command("/system be terse") and s.messages()[0] == {"role": "system", "content": "be terse"}
    f = tmp_path / "conv.json"
    assert s.command(f"/save {f}")
    saved = json.loads(f.read_text())
    assert [m["role"] for m in saved] == ["system", "user", "assistant"]
    assert s.command("/reset") and s.turns == [] and s.system == "be terse"
    assert s.command("/system") and s.system is None
    assert s.command(f"/load {f}") and s.messages() == saved
    assert s.command(f"/load {tmp_path / 'missing.json'}") and "error: cannot load" in s.err.getvalue()
    (tmp_path / "bad.json").write_text("[1, 2]")
    assert s.command(f"/load {tmp_path / 'bad.json'}") and s.messages() == saved
    assert s.command("/nonsense") and "/save FILE" in s.err.getvalue()
    assert not s.command("/exit") and not s.command("/quit")


def test_chat_command_with_piped_input(tiny, tmp_path):
    f = tmp_path / "c.json"
    r = CliRunner().invoke(cli.main, ["chat", "-m", str(tiny), "--chat-template", "chatml", "-n", "4", "--temp", "0",
                                      "--ignore-eos", "--system", "be nice"],
                           input=f'hello\n"""\ntwo\nlines"""\n/save {f}\n/exit\nnever read\n')
    assert r.exit_code == 0, r.output
    saved = json.loads(f.read_text())
    assert [m["content"] for m in saved if m["role"] != "assistant"] == ["be nice", "hello", "two\nlines"]
    assert r.stdout == "".join(m["content"] + "\n" for m in saved if m["role"] == "assistant")
    eof = CliRunner().invoke(cli.main, ["chat", "-m", str(tiny), "--chat-template", "chatml"], input="")
    assert eof.exit_code == 0 and eof.stdout == ""   # Ctrl-D at once


def test_chat_command_errors(tiny):
    r = CliRunner().invoke(cli.main, ["chat", "-m", str(tiny)])   # no template in the file, none named
    assert r.exit_code == 2 and r.stderr.startswith("error: ") and len(r.stderr.splitlines()) == 1
    r = CliRunner().invoke(cli.main, ["chat", "-m", str(tiny), "--chat-template", "nope"])
    assert r.exit_code == 2 and "unknown chat template 'nope'" in r.stderr


# --- through a terminal --------------------------------------------------------------------------
class Pty:
    def __init__(self, argv):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:   # the child: the pty is its controlling terminal, so ^C sends it SIGINT
            # start as a terminal would start it, not with whatever signal state pytest's process has
            # (an ignored or blocked SIGINT survives exec)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, set())
            os.environ["TERM"] = "dumb"
            os.execv(argv[0], argv)
        self.buf = ""

    def expect(self, text, timeout=90):
        """Wait until `text` appears in output not consumed yet; consume up to its end."""
        end = time.monotonic() + timeout
        while text not in self.buf:
            left = end - time.monotonic()
            assert left > 0, f"timed out waiting for {text!r}; got {self.buf[-500:]!r}"
            if select.select([self.fd], [], [], left)[0]:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:   # EIO: the child has gone
                    chunk = b""
                assert chunk, f"the chat ended while waiting for {text!r}; got {self.buf[-500:]!r}"
                self.buf += chunk.decode("utf-8", "replace")
        before, self.buf = self.buf.split(text, 1)
        return before

    def send(self, text):
        os.write(self.fd, text.encode())

    def wait(self, timeout=30):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:   # keep draining so the child never blocks on a full pty
                if select.select([self.fd], [], [], 0.1)[0]:
                    os.read(self.fd, 4096)
            except OSError:
                pass
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
        os.kill(self.pid, 9)
        raise AssertionError("the chat did not exit")


def test_chat_in_a_terminal(smollm2_path):
    p = Pty([sys.executable, "-m", "cli", "chat", "-m", str(smollm2_path), "-n", "400", "--temp", "0", "-c", "1024"])
    p.expect("> ")
    p.send("What is the capital of France?\r")
    answer = p.expect("\n> ")
    assert "Paris" in answer
    p.send("Write a very long story about a dragon and a knight.\r")
    p.expect("story about a dragon and a knight.")   # the echo
    start = time.monotonic()
    while len(p.buf.strip()) < 20 and time.monotonic() - start < 60:   # the answer has begun
        if select.select([p.fd], [], [], 1)[0]:
            p.buf += os.read(p.fd, 4096).decode("utf-8", "replace")
    p.send("\x03")
    p.expect("[interrupted]")
    p.expect("> ")
    p.send("/reset\r")
    p.expect("[conversation cleared]")
    p.expect("> ")
    p.send("/exit\r")
    assert p.wait() == 0


def test_ctrl_c_at_the_prompt_clears_the_line(smollm2_path):
    p = Pty([sys.executable, "-m", "cli", "chat", "-m", str(smollm2_path), "-c", "1024"])
    p.expect("> ")
    p.send("half a line that is never sent")
    p.expect("never sent")
    # at once, while readline may still be busy with the echo (not waiting in select()): the moment
    # a Ctrl-C used to be lost (PromptInterrupts)
    p.send("\x03")              # at the prompt: clears the line, the session goes on
    p.expect("> ")
    p.send("/exit\r")
    assert p.wait() == 0


PROMPT_CHILD = """
import os, signal, sys, threading
import readline
from gguf_runner.repl import PromptInterrupts

def elsewhere():   # takes a SIGINT on this thread, so nothing interrupts the main thread's select()
    os.read(int(sys.argv[1]), 1)
    signal.pthread_kill(threading.get_ident(), signal.SIGINT)

with PromptInterrupts():
    threading.Thread(target=elsewhere, daemon=True).start()
    try:
        input("> ")
    except KeyboardInterrupt:
        print("interrupted")
"""


def test_a_sigint_the_prompt_did_not_wait_for_still_interrupts_it():
    """The lost Ctrl-C made deterministic: readline runs signal handlers only when its select() is
    interrupted, so a SIGINT recorded while it was not waiting there (here: taken by another thread)
    must still end input()."""
    go, send = os.pipe()
    os.set_inheritable(go, True)
    p = Pty([sys.executable, "-c", PROMPT_CHILD, str(go)])
    os.close(go)
    p.expect("> ")
    os.write(send, b"!")
    os.close(send)
    p.expect("interrupted", timeout=30)
    assert p.wait() == 0
