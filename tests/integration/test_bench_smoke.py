"""Smoke test of memcacheq-bench: it measures a real memcacheq without
errors, and its verification catches a server that answers wrongly.

The bench binary is $MEMCACHEQ_BENCH, else bench/memcacheq-bench next to the
daemon binary (<build>/src/bench/memcacheq-bench).
"""

import json
import os
import socket
import subprocess
import threading
from collections import deque
from pathlib import Path

import pytest

from conftest import binary_path

RUN_TIMEOUT = 60


def bench_path():
    env = os.environ.get("MEMCACHEQ_BENCH")
    if env:
        return Path(env)
    return binary_path().parent / "bench" / "memcacheq-bench"


@pytest.fixture(scope="module")
def bench_bin():
    path = bench_path()
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail("memcacheq-bench not found or not executable: %s "
                    "(build the tree, or set MEMCACHEQ_BENCH)" % path)
    return path


def run_bench(bench_bin, *args):
    """Run the bench with --json; returns (exit status, parsed result or None, stderr)."""
    proc = subprocess.run([str(bench_bin), "--json"] + [str(a) for a in args],
                          stdin=subprocess.DEVNULL, capture_output=True,
                          timeout=RUN_TIMEOUT)
    out = proc.stdout.decode(errors="replace").strip()
    err = proc.stderr.decode(errors="replace")
    result = json.loads(out.splitlines()[-1]) if out else None
    return proc.returncode, result, err


# --------------------------------------------------------------------------------------
# against memcacheq
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", [["-N"], []], ids=["nosync", "durable"])
def test_bench_measures_memcacheq(bench_bin, make_daemon, mode):
    d = make_daemon(mode)
    rc, res, err = run_bench(bench_bin, "-p", d.port, "-c", 4, "-q", 2, "-d", 100,
                             "--mix=setget", "-t", 1.5, "-w", 0.3, "--pid", d.pid)
    assert rc == 0, "bench failed (%s)\nstderr:\n%s\ndaemon:\n%s" % (rc, err, d.stderr())
    assert res["ops"] > 0 and res["ops_per_sec"] > 0
    assert res["errors"] == 0
    assert res["misses"] == 0
    assert res["gets"] == res["hits"] > 0
    assert res["sets"] > 0
    assert 0 < res["p50_us"] <= res["p99_us"] <= res["p999_us"] <= res["max_us"]
    assert res["server_cpu_us_per_op"] is not None and res["server_cpu_us_per_op"] >= 0
    assert d.running()


def test_bench_fill_then_drain(bench_bin, make_daemon):
    """-n with --mix=set stores exactly n messages; another run (another run tag)
    reads them all back, verified, and then finds the queues empty."""
    d = make_daemon(["-N"])
    rc, res, err = run_bench(bench_bin, "-p", d.port, "-c", 3, "-q", 3, "-d", 300,
                             "--mix=set", "-n", 300, "-P", 8)
    assert rc == 0, err
    assert res["ops"] == res["sets"] == 300
    with d.client() as c:
        counters = c.queue_counters()
    assert sum(enq for enq, _ in counters.values()) == 300

    rc, res, err = run_bench(bench_bin, "-p", d.port, "-c", 3, "-q", 3, "-d", 300,
                             "--mix=get", "-n", 303)
    assert rc == 0, err
    assert res["gets"] == 303
    assert res["hits"] == 300 and res["foreign"] == 300 and res["misses"] == 3
    assert res["errors"] == 0


def test_bench_usage_errors(bench_bin):
    for args in (["--mix=bogus"], ["-d", "10"], ["-c", "0"], ["-t", "1", "-n", "5"],
                 ["--protocol=http"], ["--cache", "--protocol=redis"],
                 # negative times were once taken for "not given" (the default)
                 ["-t", "-1"], ["-w", "-1"], ["-t", "abc"], ["-n", "5", "-t", "2"]):
        proc = subprocess.run([str(bench_bin)] + args, capture_output=True, timeout=10)
        assert proc.returncode == 2, args
        assert proc.stderr.startswith(b"memcacheq-bench: "), proc.stderr
    # A switch given a value is refused, not taken as the bare switch.
    proc = subprocess.run([str(bench_bin), "--quiet=no"], capture_output=True, timeout=10)
    assert proc.returncode == 2 and b"--quiet takes no value" in proc.stderr, proc.stderr
    proc = subprocess.run([str(bench_bin), "--help"], capture_output=True, timeout=10)
    assert proc.returncode == 0 and b"--connections" in proc.stdout


def test_bench_unreachable_server(bench_bin):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]          # bound, not listening: refused
        proc = subprocess.run([str(bench_bin), "-p", str(port), "-t", "1"],
                              capture_output=True, timeout=10)
    assert proc.returncode == 2
    assert b"cannot connect" in proc.stderr


# --------------------------------------------------------------------------------------
# against a fake server that cheats
# --------------------------------------------------------------------------------------

class FakeQueueServer:
    """A tiny memcache-protocol FIFO queue server; `cheat` makes its gets wrong."""

    def __init__(self, cheat=None):
        self.cheat = cheat
        self.queues = {}
        self.first = {}
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.closing = False
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self):
        self.closing = True
        self.sock.close()

    def _accept(self):
        while not self.closing:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _value(self, key):
        with self.lock:
            q = self.queues.setdefault(key, deque())
            if self.cheat == "replay":              # never removes: same message again
                return self.first.get(key) if q else None
            if self.cheat == "other-queue":         # answers from some other queue
                for other, oq in self.queues.items():
                    if other != key and oq:
                        return (key,) + oq.popleft()[1:]
            if self.cheat == "drop":                # loses everything
                return None
            return q.popleft() if q else None

    def _reply_get(self, key):
        item = self._value(key)
        if item is None:
            return b"END\r\n"
        _, flags, body = item
        if self.cheat == "corrupt":
            i = len(body) // 2
            body = body[:i] + bytes([body[i] ^ 1]) + body[i + 1:]
        elif self.cheat == "short":
            body = body[:-1]
        elif self.cheat == "flags":
            flags = (flags + 1) & 0xffffffff
        return b"VALUE %s %d %d\r\n%s\r\nEND\r\n" % (key, flags, len(body), body)

    def _serve(self, conn):
        buf = b""
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
                out = []
                while True:
                    nl = buf.find(b"\r\n")
                    if nl < 0:
                        break
                    parts = buf[:nl].split()
                    if parts and parts[0] == b"set":
                        n = int(parts[4])
                        if len(buf) < nl + 2 + n + 2:
                            break
                        body = buf[nl + 2:nl + 2 + n]
                        buf = buf[nl + 2 + n + 2:]
                        key, flags = parts[1], int(parts[2])
                        with self.lock:
                            self.queues.setdefault(key, deque()).append((key, flags, body))
                            self.first.setdefault(key, (key, flags, body))
                        out.append(b"STORED\r\n")
                    elif parts and parts[0] == b"get":
                        buf = buf[nl + 2:]
                        out.append(self._reply_get(parts[1]))
                    else:
                        buf = buf[nl + 2:]
                        out.append(b"ERROR\r\n")
                if out:
                    conn.sendall(b"".join(out))
        except OSError:
            pass
        finally:
            conn.close()


@pytest.fixture
def fake_server(request):
    srv = FakeQueueServer(request.param)
    yield srv
    srv.close()


@pytest.mark.parametrize("fake_server", [None], indirect=True, ids=["honest"])
def test_bench_accepts_honest_fake(bench_bin, fake_server):
    """The fake server itself is a correct queue: no errors (so the cheating
    variants below fail because of the cheat)."""
    rc, res, err = run_bench(bench_bin, "-p", fake_server.port, "-c", 3, "-q", 2,
                             "-n", 400, "--timeout", 5)
    assert rc == 0, err
    assert res["errors"] == 0 and res["ops"] == 400
    assert res["hits"] == res["gets"] == 199 and res["sets"] == 201  # 134 + 133 + 133 alternating


@pytest.mark.parametrize("fake_server",
                         ["corrupt", "short", "flags", "replay", "other-queue", "drop"],
                         indirect=True)
def test_bench_catches_wrong_replies(bench_bin, fake_server):
    rc, res, err = run_bench(bench_bin, "-p", fake_server.port, "-c", 3, "-q", 2,
                             "-n", 400, "--timeout", 5)
    assert rc == 1, "bench exit status %r for a %s server\n%s" % (rc, fake_server.cheat, err)
    assert res["errors"] > 0
    # Wrong answers never count as operations.
    assert res["hits"] < 200
    assert "memcacheq-bench: connection" in err
