"""The GGUF fuzz script in CI: 500 mutated files (the script's default run is 10,000), each must open
or fail with one clean one-line error. A subprocess, so a crash (SIGBUS/SIGSEGV) or the address-space
limit that catches huge allocations cannot take pytest down with it."""
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_500_fuzzed_gguf_files_open_or_fail_cleanly():
    script = Path(__file__).with_name("fuzz_gguf.py")
    r = subprocess.run([sys.executable, str(script), "--cases", "500", "--seed", "1"],
                       capture_output=True, text=True, timeout=600, cwd=script.parent)
    print(r.stdout[-3000:], r.stderr[-3000:])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "500 cases:" in r.stdout and " 0 failures" in r.stdout
