"""gguf-runner batch: prompts in (a text file, one per line, or JSONL), one JSONL record per item out.

Crash safety: each record is appended with ONE write() of a complete line and fsynced, with SIGINT
blocked in between, so a kill or Ctrl-C leaves the whole record or nothing; a torn last line (a write
cut short by a crash) is cut away on the next run, which skips the ids already written.
"""
from __future__ import annotations

import errno
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .sampling import SamplingParams

# Per-item JSONL fields that overlay the run's settings, and the JSON types they accept.
ITEM_FIELDS = {"max_tokens": int, "temperature": float, "top_k": int, "top_p": float, "min_p": float,
               "seed": int, "stop": list}


class BatchError(ValueError):
    """The input or output file cannot be read or written: the run stops."""


def check_generation(kw: dict) -> dict:
    """Validate generate() keyword arguments; ValueError with a one-line message naming the field."""
    n = kw.get("max_tokens")
    if n is not None and n < -1:
        raise ValueError(f"max_tokens must be >= 0, or -1 for 'until the context is full', got {n}")
    if kw.get("seed") == -1:   # llama.cpp's "random seed"
        kw = {**kw, "seed": None}
    sampling = {k: v for k, v in kw.items() if k not in ("max_tokens", "stop", "ignore_eos")}
    try:
        SamplingParams(**sampling)
    except ValueError as e:
        message = str(e).split(", got SamplingParams")[0]
        raise ValueError(f"{message}, got {sampling.get(message.split()[0])}") from None
    return kw


def _typed(name: str, value):
    """A per-item field checked against ITEM_FIELDS (bools are not numbers; ints are floats)."""
    want = ITEM_FIELDS[name]
    if name == "stop":
        value = [value] if isinstance(value, str) else value
        if isinstance(value, list) and all(isinstance(s, str) for s in value):
            return value
    elif name == "seed" and value is None:
        return None
    elif not isinstance(value, bool) and isinstance(value, (int, float) if want is float else int):
        return value
    raise ValueError(f"{name}: expected {'a string or a list of strings' if name == 'stop' else want.__name__}, "
                     f"got {json.dumps(value)}")


@dataclass
class Item:
    id: str | int
    prompt: str | None = None
    messages: list | None = None
    options: dict = field(default_factory=dict)
    error: str | None = None


def parse_jsonl_line(line: str, lineno: int) -> Item:
    """One JSONL line -> an Item; a bad line -> an Item with .error (its id, or "line N")."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        return Item(f"line {lineno}", error=f"line {lineno}: invalid JSON ({e.msg})")
    if not isinstance(obj, dict):
        return Item(f"line {lineno}", error=f"line {lineno}: expected a JSON object")
    if "id" not in obj or isinstance(obj["id"], bool) or not isinstance(obj["id"], (str, int)):
        return Item(f"line {lineno}", error=f"line {lineno}: missing or bad 'id' (a string or an integer)")
    item = Item(obj["id"])
    try:
        if ("prompt" in obj) == ("messages" in obj):
            raise ValueError("expected exactly one of 'prompt' or 'messages'")
        if "prompt" in obj:
            if not isinstance(obj["prompt"], str) or not obj["prompt"]:
                raise ValueError("'prompt' must be a non-empty string")
            item.prompt = obj["prompt"]
        else:
            msgs = obj["messages"]
            if not isinstance(msgs, list) or not msgs or not all(
                    isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                    for m in msgs):
                raise ValueError("'messages' must be a non-empty list of {role, content} strings")
            item.messages = msgs
        item.options = {k: _typed(k, v) for k, v in obj.items() if k in ITEM_FIELDS}
    except ValueError as e:
        item.error = f"line {lineno}: {e}"
    return item


def read_items(path: str | os.PathLike, fmt: str = "auto") -> list[Item]:
    """fmt: "text" (one prompt per line, blank lines skipped, id = line number), "jsonl", or "auto"
    (jsonl for .jsonl/.ndjson/.json files). Ids repeated in a JSONL file become error items."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise BatchError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    if fmt == "auto":
        fmt = "jsonl" if path.suffix.lower() in (".jsonl", ".ndjson", ".json") else "text"
    lines = [(n, line.rstrip("\r")) for n, line in enumerate(text.split("\n"), 1) if line.strip()]
    if fmt == "text":
        return [Item(n, prompt=line) for n, line in lines]
    items, first_line = [], {}
    for n, line in lines:
        item = parse_jsonl_line(line, n)
        key = json.dumps(item.id)
        if key in first_line:
            item = Item(f"line {n}", error=f"line {n}: duplicate id {key} (first on line {first_line[key]})")
        else:
            first_line[key] = n
        items.append(item)
    return items


class Output:
    """The JSONL output: repaired and read on open (the ids already done), then appended to."""

    def __init__(self, path: str | os.PathLike, log=None):
        self.path, self.done, self.log = Path(path), set(), log or sys.stderr
        if self.path.is_file():
            self._repair()
        try:
            existed = self.path.exists()
            self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            if not existed:   # make the new directory entry durable too
                self._fsync_dir()
        except OSError as e:
            raise BatchError(f"cannot write {self.path}: {e.strerror}") from None

    def _repair(self) -> None:
        try:
            data = self.path.read_bytes()
        except OSError as e:
            raise BatchError(f"cannot read {self.path}: {e.strerror}") from None
        keep = data.rfind(b"\n") + 1               # drop an unterminated tail
        lines = data[:keep].split(b"\n")[:-1]
        records = []
        for i, line in enumerate(lines):
            try:
                records.append(json.loads(line))
            except ValueError:
                if i == len(lines) - 1:            # a complete but garbled last line: torn too
                    keep -= len(line) + 1
                else:
                    print(f"warning: {self.path}: line {i + 1} is not valid JSON; left as is", file=self.log)
        if keep < len(data):
            try:
                os.truncate(self.path, keep)
            except OSError as e:
                raise BatchError(f"cannot repair {self.path}: {e.strerror}") from None
            print(f"{self.path}: cut a torn last line ({len(data) - keep} bytes)", file=self.log)
        self.done = {json.dumps(r["id"]) for r in records if isinstance(r, dict) and "id" in r}

    def _fsync_dir(self) -> None:
        try:
            fd = os.open(self.path.parent, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)

    def append(self, record: dict) -> None:
        """One write() of one complete line, then fsync; SIGINT waits until both are done."""
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        mask = getattr(signal, "pthread_sigmask", None)
        old = mask(signal.SIG_BLOCK, {signal.SIGINT}) if mask else None
        try:
            size = os.fstat(self.fd).st_size
            try:
                written = os.write(self.fd, line)
                if written != len(line):
                    raise OSError(errno.ENOSPC, "short write (disk full?)")
                os.fsync(self.fd)
            except OSError as e:
                try:
                    os.ftruncate(self.fd, size)   # never leave half a record behind
                except OSError:
                    pass
                raise BatchError(f"cannot write {self.path}: {e.strerror}") from None
            self.done.add(json.dumps(record["id"]))
        finally:
            if mask:
                mask(signal.SIG_SETMASK, old)

    def close(self) -> None:
        os.close(self.fd)


def answer(model, item: Item, settings: dict, *, chat: bool = False, system: str | None = None,
           chat_template: str | None = None) -> dict:
    """One item -> its output record (an error record for anything wrong with the item)."""
    if item.error:
        return {"id": item.id, "error": item.error}
    try:
        kw = check_generation({**settings, **item.options})
        if item.messages is not None or chat:
            messages = item.messages or [{"role": "user", "content": item.prompt}]
            if system and messages[0]["role"] != "system":
                messages = [{"role": "system", "content": system}, *messages]
            c = model.chat(messages, chat_template=chat_template, **kw)
        else:
            c = model.generate(item.prompt, **kw)
    except ValueError as e:
        return {"id": item.id, "error": str(e)}
    return {"id": item.id, "text": c.text, "finish_reason": c.finish_reason, "prompt_tokens": c.prompt_tokens,
            "completion_tokens": len(c.tokens), "timings": c.timings.as_dict()}


def clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def run(model, items: list[Item], out: Output, settings: dict, *, log=None, **chat) -> dict:
    """Answer every item whose id is not in `out` yet. Returns the counts for the summary."""
    log = log or sys.stderr
    todo = [it for it in items if json.dumps(it.id) not in out.done]
    stats = {"total": len(items), "skipped": len(items) - len(todo), "ok": 0, "errors": 0, "tokens": 0}
    if stats["skipped"]:
        print(f"resuming: {stats['skipped']} of {len(items)} items already in {out.path}", file=log)
    tty = getattr(log, "isatty", lambda: False)()
    t0 = time.perf_counter()
    for i, item in enumerate(todo, 1):
        record = answer(model, item, settings, **chat)
        out.append(record)
        stats["errors" if "error" in record else "ok"] += 1
        stats["tokens"] += record.get("completion_tokens", 0)
        elapsed = time.perf_counter() - t0
        eta = elapsed / i * (len(todo) - i)
        line = f"[{i}/{len(todo)}] {stats['tokens'] / elapsed:.1f} tokens/s, ETA {clock(eta)}"
        print("\r" + line if tty else line, end="" if tty else "\n", file=log, flush=True)
    stats["seconds"] = time.perf_counter() - t0
    if tty and todo:
        print(file=log)
    return stats


def summary(stats: dict, out_path) -> str:
    tps = stats["tokens"] / stats["seconds"] if stats.get("seconds") else 0.0
    return (f"batch: {stats['ok']} ok, {stats['errors']} errors, {stats['skipped']} already done "
            f"(of {stats['total']}); {stats['tokens']} tokens in {stats.get('seconds', 0):.1f} s "
            f"({tps:.1f} tokens/s) -> {out_path}")
