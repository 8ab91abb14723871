"""gguf-runner chat: an interactive conversation with history.

Each turn renders the whole conversation with the chat template and generates from it; the model
reuses the KV cache for the prefix it already holds, so only the new turn is evaluated. Ctrl-C while
answering stops the answer (what was said stays in the history); Ctrl-C at the prompt clears the line.
When the conversation no longer fits, the oldest turns go (the system prompt stays).
"""
from __future__ import annotations

import contextlib
import faulthandler
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

from .cache import ContextFullError

HELP = """commands:
  /reset          forget the conversation (keeps the system prompt)
  /system TEXT    set the system prompt (empty: none)
  /save FILE      save the conversation as JSON messages
  /load FILE      load a conversation saved with /save
  /exit           leave (or Ctrl-D)
input: end a line with \\ to continue it on the next; or wrap a multi-line message in \"\"\" ... \"\"\""""


def read_message(ask) -> str:
    """One message from ask(prompt) -> line: `\\`-continued lines, or a \"\"\" block. EOFError at Ctrl-D."""
    line = ask("> ")
    if line.lstrip().startswith('"""'):
        rest = line.lstrip()[3:]
        if rest.rstrip().endswith('"""'):
            return rest.rstrip()[:-3]
        parts = [rest] if rest else []
        while True:
            line = ask("... ")
            if line.rstrip().endswith('"""'):
                parts.append(line.rstrip()[:-3])
                return "\n".join(parts).rstrip("\n")
            parts.append(line)
    parts = []
    while line.endswith("\\"):
        parts.append(line[:-1])
        line = ask("... ")
    return "\n".join([*parts, line])


def check_messages(data) -> list[dict]:
    """A /load file: a list of {role, content} (or {"messages": [...]})."""
    if isinstance(data, dict):
        data = data.get("messages")
    if not isinstance(data, list) or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in data):
        raise ValueError("expected a JSON list of {\"role\": ..., \"content\": ...} messages")
    return [{"role": m["role"], "content": m["content"]} for m in data]


class ChatSession:
    """The conversation (system prompt + turns) and one verb, ask(text)."""

    def __init__(self, model, *, system: str | None = None, chat_template: str | None = None,
                 gen: dict | None = None, out=None, err=None):
        self.model, self.system, self.chat_template = model, system or None, chat_template
        self.gen = dict(gen or {})
        self.turns: list[dict] = []
        self.out, self.err = out or sys.stdout, err or sys.stderr

    def messages(self) -> list[dict]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.turns

    def _ids(self, messages: list[dict]) -> list[int]:
        prompt = self.model.render_chat(messages, self.chat_template)
        t = self.model.tokenizer
        bos = t.tokens[t.bos_id] if t.bos_id is not None else None
        return self.model.tokenize(prompt, add_bos=not (bos and prompt.startswith(bos)), special=True)

    def _fit(self) -> list[int]:
        """The prompt's ids, after dropping the oldest turns until it leaves room for an answer."""
        n_ctx, want = self.model.n_ctx, self.gen.get("max_tokens")
        room = n_ctx // 4 if want is None or want < 0 else max(1, min(want, n_ctx // 4))
        dropped = 0
        while True:
            ids = self._ids(self.messages())
            if len(ids) + room <= n_ctx:
                break
            starts = [i for i, m in enumerate(self.turns) if m["role"] == "user"]
            if len(starts) < 2:   # only the newest message is left
                if len(ids) < n_ctx:
                    break
                raise ContextFullError(f"message of {len(ids)} tokens does not fit in the context "
                                       f"({n_ctx} tokens); it was not sent")
            del self.turns[:starts[1]]
            dropped += 1
        if dropped:
            self._note(f"[context full: dropped the oldest {dropped} turn{'s' * (dropped > 1)}]")
        return ids

    def _note(self, text: str) -> None:
        print(text, file=self.err, flush=True)

    def ask(self, text: str):
        """Answer one user message, streaming to out. Returns the Completion, or None if interrupted
        or refused (the error is shown; the session goes on)."""
        self.turns.append({"role": "user", "content": text})
        try:
            stream = self.model.generate(self._fit(), stream=True, **self.gen)
        except (ValueError, KeyboardInterrupt) as e:
            self.turns.pop()
            self._note(f"error: {e}" if isinstance(e, ValueError) else "[interrupted]")
            return None
        pieces, interrupted = [], False
        try:
            for piece in stream:
                pieces.append(piece)
                self.out.write(piece)
                self.out.flush()
        except KeyboardInterrupt:
            interrupted = True
        except ValueError as e:
            self.turns.pop()
            self._note(f"\nerror: {e}")
            return None
        answer = "".join(pieces)
        self.turns.append({"role": "assistant", "content": answer})
        if answer and not answer.endswith("\n"):
            self.out.write("\n")
            self.out.flush()
        if interrupted:
            self._note("[interrupted]")
            return None
        c = stream.completion
        if c.finish_reason == "length" and len(c.tokens) + c.prompt_tokens >= self.model.n_ctx:
            self._note("[the answer filled the context; older turns will be dropped]")
        return c

    def command(self, line: str) -> bool:
        """Run a /command; False means leave."""
        name, _, arg = line.strip().partition(" ")
        arg = arg.strip()
        if name in ("/exit", "/quit"):
            return False
        if name == "/reset":
            self.turns.clear()
            self._note("[conversation cleared]")
        elif name == "/system":
            self.system = arg or None
            self._note(f"[system prompt {'set' if arg else 'removed'}]")
        elif name == "/save" and arg:
            try:
                Path(arg).write_text(json.dumps(self.messages(), indent=2, ensure_ascii=False) + "\n")
                self._note(f"[saved {len(self.messages())} messages to {arg}]")
            except OSError as e:
                self._note(f"error: cannot write {arg}: {e.strerror}")
        elif name == "/load" and arg:
            try:
                messages = check_messages(json.loads(Path(arg).read_text()))
            except (OSError, ValueError) as e:
                self._note(f"error: cannot load {arg}: {getattr(e, 'strerror', None) or e}")
                return True
            if messages and messages[0]["role"] == "system":
                self.system = messages.pop(0)["content"]
            self.turns = messages
            self._note(f"[loaded {len(messages)} messages from {arg}]")
        else:
            self._note(HELP)
        return True


class PromptInterrupts:
    """While active, every SIGINT ends an input() waiting at a readline prompt (main thread only).

    CPython's readline module waits for keys in select() and runs signal handlers only when that
    select() fails with EINTR. A SIGINT that arrives while the main thread is anywhere else (still
    echoing the key typed just before the Ctrl-C), or that another thread takes, is recorded and left
    pending: input() goes back into select() and sleeps on, so the Ctrl-C is lost and the next Enter
    sends the line it was meant to clear. So every signal also writes its number to a pipe
    (signal.set_wakeup_fd); a watcher thread counts the SIGINTs there against the runs of the SIGINT
    handler, and while one is owed it sends the main thread NUDGE, which interrupts select() and so
    makes readline run the pending handler. NUDGE's handler is a C one (faulthandler's, writing to
    /dev/null): a Python handler could run inside input()'s own signal check, which it makes with the
    KeyboardInterrupt already raised, and that is a SystemError."""

    NUDGE = getattr(signal, "SIGUSR2", None)   # None: not a POSIX system, no guard

    def __init__(self):
        self.handled, self.stopping = 0, False

    def _on_sigint(self, signum, frame):
        self.handled += 1
        raise KeyboardInterrupt

    def _watch(self, main: int) -> None:
        seen = 0
        while True:
            got = os.read(self.r, 512)
            if not got:   # __exit__ closed the write end
                return
            seen += got.count(signal.SIGINT)
            give_up = time.monotonic() + 2
            while self.handled < seen and not self.stopping:
                if time.monotonic() > give_up:   # two SIGINTs that one handler run took care of
                    seen = self.handled
                    break
                signal.pthread_kill(main, self.NUDGE)
                time.sleep(0.01)

    def __enter__(self):
        self.r, self.w = os.pipe()
        os.set_blocking(self.w, False)
        self.devnull = open(os.devnull, "w")
        faulthandler.register(self.NUDGE, file=self.devnull, all_threads=False)
        self.old_sigint = signal.signal(signal.SIGINT, self._on_sigint)
        self.old_fd = signal.set_wakeup_fd(self.w, warn_on_full_buffer=False)
        # the watcher never takes a SIGINT itself (threads inherit the mask of the thread starting them)
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, self.NUDGE})
        try:
            self.watcher = threading.Thread(target=self._watch, args=(threading.get_ident(),),
                                            name="ctrl-c watcher", daemon=True)
            self.watcher.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        return self

    def __exit__(self, *exc):
        self.stopping = True
        signal.set_wakeup_fd(self.old_fd)
        os.close(self.w)
        self.watcher.join()
        os.close(self.r)
        signal.signal(signal.SIGINT, self.old_sigint)
        faulthandler.unregister(self.NUDGE)
        self.devnull.close()


def loop(session: ChatSession, ask=None) -> None:
    """Read, answer, repeat, until /exit or Ctrl-D. Prompts show only when stdin is a terminal."""
    terminal = ask is None and sys.stdin.isatty()
    if ask is None:
        ask = input if terminal else lambda _prompt: input()
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    guard = contextlib.nullcontext()
    # Ctrl-C is how a chat stops an answer: take it even if we were started with SIGINT ignored
    # (as a shell does for background jobs) or blocked.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        if terminal and PromptInterrupts.NUDGE is not None:
            guard = PromptInterrupts()
    with guard:
        _loop(session, ask)


def _loop(session: ChatSession, ask) -> None:
    session._note("[chat: /help for commands, Ctrl-C stops an answer, Ctrl-D or /exit leaves]")
    while True:
        try:
            text = read_message(ask)
        except KeyboardInterrupt:   # at the prompt: drop the line
            print(file=session.err, flush=True)
            continue
        except EOFError:
            print(file=session.err, flush=True)
            return
        if not text.strip():
            continue
        if text.startswith("/"):
            if not session.command(text):
                return
            continue
        session.ask(text)
