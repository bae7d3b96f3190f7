"""In durable mode the disk is synced by the sync thread, never by the main
loop, which reads and answers every client: an fsync there (0.2-2 ms) stalls
all of them.  Berkeley DB syncs in the caller's thread when it truncates
messages.db (the file's last page freed), which a few short queues churning
used to do hundreds of times per second; the one place left is the switch
to a new log file.  And the sync thread must not push the main loop off
its CPU every time it wakes up."""

import os
import re
import shutil
import subprocess
import threading
import time

import pytest

QUEUES = 10
ROUNDS = 300
DEPTH = 8
BODY = b"x" * 100


def _log_numbers(home):
    return [int(m.group(1)) for m in (re.fullmatch(r"log\.(\d+)", n) for n in os.listdir(home)) if m]


def _wait_traced(pid, timeout=10.0):
    """True once every thread of pid has a tracer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tracers = []
        for tid in os.listdir("/proc/%d/task" % pid):
            with open("/proc/%d/task/%s/status" % (pid, tid)) as f:
                tracers += [int(l.split()[1]) for l in f if l.startswith("TracerPid:")]
        if tracers and all(t != 0 for t in tracers):
            return True
        time.sleep(0.05)
    return False


def _churn(d, q, errors):
    """DEPTH sets then DEPTH gets on one queue, ROUNDS times, pipelined."""
    try:
        with d.client() as c:
            for _ in range(ROUNDS):
                c.send(b"set %s 0 0 %d\r\n%s\r\n" % (q, len(BODY), BODY) * DEPTH)
                assert c.read_exact(8 * DEPTH) == b"STORED\r\n" * DEPTH
                c.send(b"get %s\r\n" % q * DEPTH)
                reply = b"VALUE %s 0 %d\r\n%s\r\nEND\r\n" % (q, len(BODY), BODY)
                assert c.read_exact(len(reply) * DEPTH) == reply * DEPTH
    except Exception as e:          # reported by the test, not lost in a thread
        errors.append(repr(e))


@pytest.mark.parametrize("args", [[], ["-A", "8192"]], ids=["4k-pages", "8k-pages"])
def test_short_queues_churning_never_make_the_main_loop_fsync(make_daemon, tmp_path, args):
    strace = shutil.which("strace")
    assert strace, "strace is missing: scripts/deps test installs it"
    d = make_daemon(args)
    home = d.home
    trace = tmp_path / "fsyncs"
    tracer = subprocess.Popen([strace, "-qq", "-f", "-e", "trace=fsync,fdatasync",
                               "-o", str(trace), "-p", str(d.pid)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        if not _wait_traced(d.pid):
            tracer.kill()
            err = tracer.communicate()[1].decode(errors="replace")
            if "Operation not permitted" in err:
                pytest.skip("this machine forbids ptrace: " + err.strip())
            pytest.fail("strace did not attach: " + err)
        logs_before = max(_log_numbers(home))
        errors = []
        clients = [threading.Thread(target=_churn, args=(d, b"churn%d" % i, errors))
                   for i in range(QUEUES)]
        for t in clients:
            t.start()
        for t in clients:
            t.join(120)
        assert errors == []
        logs_after = max(_log_numbers(home))
    finally:
        tracer.terminate()
        tracer.wait(10)

    calls = [l.split(None, 1) for l in trace.read_text().splitlines() if "sync(" in l]
    on_main = [l for tid, l in calls if int(tid) == d.pid]
    elsewhere = [l for tid, l in calls if int(tid) != d.pid]
    sets = QUEUES * ROUNDS * DEPTH
    # The trace works: the sync thread made the sets durable.
    assert len(elsewhere) > 0
    # Each new log file costs one fsync of the file before it, on the main
    # loop; nothing else may.  (Before the free-page reserve: 202 for 8.)
    switches = logs_after - logs_before
    assert len(on_main) <= switches + 2, (
        "%d fsyncs on the main loop for %d sets and %d log switches:\n%s"
        % (len(on_main), sets, switches, "\n".join(on_main[:20])))


def _thread_policies(pid):
    """comm -> scheduling policy (field 41 of stat: 0 normal, 3 batch)."""
    out = {}
    for tid in os.listdir("/proc/%d/task" % pid):
        with open("/proc/%d/task/%s/stat" % (pid, tid)) as f:
            stat = f.read()
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        out[comm] = int(stat[stat.rindex(")") + 2:].split()[38])
    return out


def test_the_sync_thread_does_not_preempt_the_main_loop(make_daemon):
    """Its wake-ups (three per fsync) used to preempt the main thread
    thousands of times per second: it runs under SCHED_BATCH, the main
    thread stays a normal one."""
    d = make_daemon([])
    # The thread names and sets its policy itself once it runs, which can
    # come after the daemon already listens.
    deadline = time.monotonic() + 10
    policies = _thread_policies(d.pid)
    while policies.get("mcq-sync") != 3 and time.monotonic() < deadline:
        time.sleep(0.05)
        policies = _thread_policies(d.pid)
    assert policies["mcq-sync"] == 3, policies
    assert policies["memcacheq"] == 0, policies
