"""In durable mode the sync thread binds itself to the CPUs that take the
interrupts of the disk holding the home (src/placement.c): each fsync
completes there in steps, and each step waited while the thread sat
elsewhere.  What to expect is worked out here from sysfs and /proc on our
own, then compared with the threads' affinity: on a machine whose disk
interrupts cover every CPU (or with no such disk under the test's
directory) the daemon must leave every thread alone."""

import os
import time

import pytest


def _irq_cpus(path):
    """The CPUs of the MSI interrupts of the device holding path (looked for
    up to the first PCI device), or None."""
    dev = os.stat(path).st_dev
    if os.major(dev) == 0:
        return None
    here = os.path.realpath("/sys/dev/block/%d:%d" % (os.major(dev), os.minor(dev)))
    while here.startswith("/sys/devices/"):
        msi = os.path.join(here, "msi_irqs")
        if os.path.isdir(msi):
            cpus = set()
            for irq in os.listdir(msi):
                for name in ("effective_affinity_list", "smp_affinity_list"):
                    try:
                        text = open("/proc/irq/%s/%s" % (irq, name)).read().strip()
                    except OSError:
                        continue
                    if not text:
                        continue
                    for part in text.split(","):
                        lo, _, hi = part.partition("-")
                        cpus.update(range(int(lo), int(hi or lo) + 1))
                    break
            return cpus or None
        if os.path.realpath(os.path.join(here, "subsystem")).endswith("/bus/pci"):
            return None
        here = os.path.dirname(here)
    return None


def _expected(path):
    allowed = os.sched_getaffinity(0)
    irq = _irq_cpus(path)
    both = allowed & irq if irq else allowed
    return both if both else allowed


def _threads(pid):
    out = {}
    for tid in os.listdir("/proc/%d/task" % pid):
        comm = open("/proc/%d/task/%s/comm" % (pid, tid)).read().strip()
        out[comm] = os.sched_getaffinity(int(tid))
    return out


def _settled(d, want, moved, timeout=5.0):
    """The threads' CPUs once the sync thread has want and, if it moved,
    its log line is out (written after the move)."""
    deadline = time.monotonic() + timeout
    while True:
        got = _threads(d.proc.pid)
        # A GLib thread names itself once it runs: just after the start it
        # may still show as "memcacheq".
        done = got.get("mcq-sync") == want and (not moved or "fsync thread on CPUs" in d.stderr())
        if done or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


def test_durable_sync_thread_runs_where_the_disks_interrupts_go(make_daemon):
    allowed = os.sched_getaffinity(0)
    d = make_daemon(["-v"])
    want = _expected(d.home)
    moved = want != allowed
    got = _settled(d, want, moved)
    assert got.get("mcq-sync") == want, (got, want, d.stderr())
    # Only the sync thread: the main loop goes wherever there is room.
    assert got["memcacheq"] == allowed, got
    assert ("fsync thread on CPUs" in d.stderr()) == moved, d.stderr()
    # And it still serves.
    with d.client() as c:
        c.send(b"set q 0 0 2\r\nhi\r\nget q\r\n")
        want_reply = b"STORED\r\nVALUE q 0 2\r\nhi\r\nEND\r\n"
        assert c.read_exact(len(want_reply)) == want_reply


@pytest.mark.parametrize("args", [["-N"], ["--no-cpu-placement"]], ids=["no-sync", "option-off"])
def test_every_thread_left_alone(make_daemon, args):
    """-N has no fsync on its hot path; --no-cpu-placement turns it off."""
    allowed = os.sched_getaffinity(0)
    d = make_daemon(args + ["-v"])
    # Served a request: the sync thread has long started.
    with d.client() as c:
        c.send(b"set q 0 0 2\r\nhi\r\n")
        assert c.read_exact(8) == b"STORED\r\n"
    assert all(cpus == allowed for cpus in _threads(d.proc.pid).values())
    assert "fsync thread on CPUs" not in d.stderr()
