"""A short run of the stream fuzzer (tests/fuzz/stream-fuzz): random and mutated
request streams, partial writes, abrupt closes; then the daemon must still
answer a seed transcript exactly, exit 0 on SIGTERM and have logged no
sanitizer report (in CI the suite's daemon is the ASan+UBSan build)."""

import subprocess
import sys
from pathlib import Path

STREAM_FUZZ = Path(__file__).resolve().parents[1] / "fuzz" / "stream-fuzz"


def test_stream_fuzz_short_run(mcq_bin):
    proc = subprocess.run([sys.executable, str(STREAM_FUZZ), "--bin", str(mcq_bin),
                           "--seconds", "15", "--seed", "20240101"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=180)
    out = proc.stdout.decode(errors="replace")
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == 0, out + err[-6000:]
    assert "-> OK" in out, out
