"""Disk full: the state directory on a 32 MiB tmpfs, filled with sets until the
daemon answers SERVER_ERROR.

What must hold: the error is clear (names the disk / space); nothing already
stored is harmed; `get` keeps working and frees space; sets work again
afterwards; a SIGTERM restart is clean and the data intact.

Berkeley DB notes (what was found out writing this):
  * every set is written twice: to the log at commit, and to messages.db at
    the next checkpoint; log files (10 MiB each) can only be removed
    (db_archive, or -R automatically) once a checkpoint has moved their
    contents into the database files.  On a full disk a checkpoint cannot
    write its pages, so the logs cannot be removed either;
  * a get is a transaction too: it needs log space to record the removal;
  * recovery at start writes pages as well.
Observed with memcacheq 0.1.0 (default options, and with -R -C 1 as well):
the first failing set answers "SERVER_ERROR out of disk space: ..." (good),
but from then on every get answers "SERVER_ERROR out of disk space: removing
a message", db_checkpoint and db_archive fail the same way, and after SIGTERM
the daemon cannot start again (recovery needs space: DB_RUNRECOVERY).  No
stored message is damaged: once the tmpfs is made larger, a restart recovers
every one of them byte for byte.  -R with frequent checkpoints only delays
the wall.  So the daemon has to keep space in reserve (e.g. refuse sets
while free space is below a margin, or hold a ballast file it can drop) to
honour the above; these tests check the behaviour, not the mechanism.

Needs root (mount); skipped otherwise.
"""

import hashlib
import os
import signal
import subprocess
import threading
import time

import pytest

from conftest import mounted_tmpfs

TMPFS_SIZE = "32m"
BODY = 60000                   # bytes per message; ~500 fill 32 MiB
MAX_SETS = 3000


def body_for(i):
    seed = hashlib.sha256(b"disk-full-%d" % i).digest()
    return (seed * (BODY // len(seed) + 1))[:BODY]


@pytest.fixture
def small_tmpfs(tmp_path):
    with mounted_tmpfs(tmp_path / "mnt", TMPFS_SIZE,
                       "needs root to mount a small tmpfs as the state directory") as mnt:
        yield mnt


@pytest.fixture
def full_disk(small_tmpfs, make_daemon):
    """A durable daemon whose home is on the small tmpfs, filled until a set
    fails.  Returns (daemon, conn, stored bodies in order, the error line).
    (small_tmpfs is set up before make_daemon, so it is torn down after every
    daemon is dead.)"""
    d = make_daemon([], home=small_tmpfs / "home")
    c = d.client(timeout=30)
    stored, error = [], None
    for i in range(MAX_SETS):
        body = body_for(i)
        reply = c.cmd(b"set dfq %d 0 %d\r\n%s\r\n" % (i, len(body), body))
        if reply != b"STORED\r\n":
            error = reply
            break
        stored.append(body)
    yield d, c, stored, error
    c.close()


def remount(mnt, size):
    res = subprocess.run(["mount", "-o", "remount,size=%s" % size, str(mnt)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def drain_all(c, expected):
    """Gets every message back: byte-identical, in order, then END."""
    for i, body in enumerate(expected):
        c.send(b"get dfq\r\n")
        vals = c.read_values()
        assert vals, "message %d of %d is missing" % (i, len(expected))
        key, flags, got = vals[0]
        assert flags == i and got == body, "message %d differs" % i
    assert c.get("dfq") is None, "more messages than were acknowledged"


def test_set_on_full_disk_gets_clear_error_and_daemon_lives(full_disk):
    d, c, stored, error = full_disk
    assert error is not None, "%d sets of %d bytes all STORED on a %s tmpfs" % (
        MAX_SETS, BODY, TMPFS_SIZE)
    assert error.startswith(b"SERVER_ERROR "), error
    assert b"disk" in error.lower() or b"space" in error.lower(), error
    assert len(stored) > 100, "failed too early: after %d sets (%r)" % (len(stored), error)
    assert d.running(), d.stderr()
    # the same connection and others still get answers
    assert c.cmd(b"version\r\n").startswith(b"VERSION ")
    # The refusal starts a checkpoint that moves logged data into the
    # database files and removes old log files, which can make room again:
    # the next set is either refused the same clear way or stored.
    again = c.cmd(b"set dfq 0 0 %d\r\n%s\r\n" % (BODY, body_for(0)))
    assert again == b"STORED\r\n" or (
        again.startswith(b"SERVER_ERROR") and b"space" in again.lower()), again


def test_refused_noreply_set_on_full_disk_sends_nothing(full_disk):
    """A noreply set refused for lack of space logs the failure but sends no
    SERVER_ERROR: the client reads no reply to it, and the line would be
    taken as the reply to its next request."""
    d, c, stored, error = full_disk
    assert error is not None
    sent, refused = len(stored), False
    body = body_for(sent)
    for _ in range(MAX_SETS // 20):          # until the disk is really full
        c.send(b"set dfq 7 0 %d noreply\r\n%s\r\n" % (len(body), body) * 20)
        sent += 20
        assert c.cmd(b"version\r\n").startswith(b"VERSION "), \
            "an error line was sent for a noreply set"
        if c.queue_counters()["dfq"][0] < sent:
            refused = True
            break
    assert refused, "%d sets of %d bytes all stored on a %s tmpfs" % (sent, BODY, TMPFS_SIZE)


def test_full_disk_harms_nothing_stored(full_disk, small_tmpfs):
    """Whatever happens on the full disk, once there is room again every
    STORED message is there, byte-identical."""
    d, c, stored, error = full_disk
    assert error is not None
    c.close()
    d.stop()                         # exit code checked in test_restart_*
    remount(small_tmpfs, "96m")
    d.start()
    with d.client(timeout=30) as c2:
        drain_all(c2, stored)


def test_get_works_on_full_disk_and_frees_space(full_disk):
    d, c, stored, error = full_disk
    assert error is not None
    # get keeps working on the full disk
    drain_all(c, stored)
    # and, with the help of a checkpoint and db_archive if need be, frees room
    assert c.cmd(b"db_checkpoint\r\n") == b"OK\r\n"
    assert c.cmd(b"db_archive\r\n") == b"OK\r\n"
    # sets work again, at the latest once messages.db, now mostly free
    # pages, has been compacted (at most every 10 s)
    for i in range(20):
        set_when_room(c, "dfq", body_for(10000 + i), flags=i)
    drain_all(c, [body_for(10000 + i) for i in range(20)])


def test_restart_on_full_disk_is_clean_and_data_intact(full_disk):
    d, c, stored, error = full_disk
    assert error is not None
    c.close()
    rc = d.stop(signal.SIGTERM)
    assert rc == 0, "exit code %r after SIGTERM on a full disk\n%s" % (rc, d.stderr()[-3000:])
    d.start()                        # on the still full disk
    try:
        with d.client(timeout=30) as c2:
            drain_all(c2, stored)
    except (OSError, EOFError):
        # the port is bound before the store opens: a start that fails later
        # shows up as a reset connection
        d.proc.wait(10)
        log = [l for l in d.stderr().splitlines() if "unable to flush" not in l
               and "write failed" not in l and "BDB0137" not in l]
        pytest.fail("the daemon did not come back on the full disk (exit code %r):\n%s"
                    % (d.proc.poll(), "\n".join(log[-8:])))


def fill_with_ballast(mnt):
    """Takes every block left on the tmpfs, as another program would: big
    writes, then small ones for the last partial chunk."""
    for name, size in (("ballast", 65536), ("ballast2", 512)):
        with open(mnt / name, "wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError:
                pass


def test_gets_on_a_disk_filled_by_another_program_lose_nothing(full_disk, small_tmpfs):
    """Past the daemon's reserve, another program takes the last block: a get
    that cannot log its removal must fail whole (its message stays first in
    the queue), and one that answers must have really taken its message; once
    there is room again every stored message comes back exactly once, in
    order, and a restart finds nothing left over."""
    d, c, stored, error = full_disk
    assert error is not None
    fill_with_ballast(small_tmpfs)
    delivered, failures = [], 0
    for _ in range(20):
        c.send(b"get dfq\r\n" * 10)
        for _ in range(10):
            line = c.read_line()
            if line == b"END\r\n":
                continue
            if line.startswith(b"SERVER_ERROR"):
                failures += 1
                continue
            parts = line.split()
            assert parts[0] == b"VALUE", line
            data = c.read_exact(int(parts[3]) + 2)[:-2]
            assert c.read_line() == b"END\r\n"
            i = int(parts[2])
            assert data == body_for(i), "message %d damaged" % i
            delivered.append(i)
    assert failures > 0, "no get failed on a disk without a free block: test did not bite"
    # every failing request warns, and Berkeley DB with it: rate-limited to
    # 50 warnings per 10 s (plus the start-up ones)
    warnings = d.stderr().count("warning:")
    assert warnings <= 60, "%d warning lines for %d failed gets" % (warnings, failures)
    (small_tmpfs / "ballast").unlink()
    (small_tmpfs / "ballast2").unlink()
    remount(small_tmpfs, "96m")
    rest = []
    for _ in range(len(stored) + 1):
        c.send(b"get dfq\r\n")
        vals = c.read_values()
        if not vals:
            break
        rest.append(vals[0][1])
        assert vals[0][2] == body_for(vals[0][1])
    assert delivered + rest == list(range(len(stored))), \
        "lost or repeated: %d delivered on the full disk, %d after, %d stored" % (
            len(delivered), len(rest), len(stored))
    c.close()
    d.stop()
    d.start()
    with d.client(timeout=30) as c2:
        assert c2.get("dfq") is None


def test_reserve_holds_with_messages_that_fill_whole_pages(small_tmpfs, make_daemon):
    """1000-byte messages each take a whole 4 KiB overflow page in the
    database, over three times what their log records suggest: once sets are
    refused, the checkpoint that follows must still leave free space, and
    every stored message must come back."""
    d = make_daemon([], home=small_tmpfs / "home")
    body = b"k" * 1000
    stored = 0
    with d.client(timeout=30) as c:
        for _ in range(400):
            c.send(b"set kq 0 0 1000\r\n%s\r\n" % body * 50)
            replies = [c.read_line() for _ in range(50)]
            stored += replies.count(b"STORED\r\n")
            refused = [r for r in replies if r != b"STORED\r\n"]
            assert all(r.startswith(b"SERVER_ERROR out of disk space") for r in refused), refused
            if refused:
                break
        assert refused, "never refused on a %s tmpfs" % TMPFS_SIZE
        assert c.cmd(b"db_checkpoint\r\n") == b"OK\r\n"
        st = os.statvfs(small_tmpfs)
        assert st.f_bavail * st.f_frsize >= 1024 * 1024, \
            "%d KiB left after the checkpoint" % (st.f_bavail * st.f_frsize // 1024)
        got = c.drain("kq", stored)
        assert len(got) == stored and all(b == body for b in got)


def test_sets_work_again_after_a_full_disk_is_drained(tmp_path, make_daemon):
    """Small messages fill messages.db itself up to the reserve; Berkeley DB
    keeps the pages of consumed messages inside the file, so draining alone
    gave no space back and every set stayed refused, even after a restart.
    Under space pressure the daemon compacts the file once it is mostly free."""
    with mounted_tmpfs(tmp_path / "mnt", "24m",
                       "needs root to mount a small tmpfs as the state directory") as mnt:
        d = make_daemon([], home=mnt / "home")
        with d.client(timeout=30) as c:
            # Go on past the first refusal, as a client retrying would: the
            # checkpoints that follow move the log into messages.db until
            # the file itself fills the disk down to the reserve.
            stored, refused_in_a_row = [], 0
            for i in range(6000):
                body = b"%08d" % i * 1250
                reply = c.cmd(b"set sq 0 0 %d\r\n%s\r\n" % (len(body), body))
                if reply == b"STORED\r\n":
                    stored.append(i)
                    refused_in_a_row = 0
                    continue
                assert b"space" in reply, reply
                refused_in_a_row += 1
                if refused_in_a_row == 200:
                    break
            assert refused_in_a_row == 200 and len(stored) > 100
            for i in stored:
                assert c.get("sq") == b"%08d" % i * 1250
            assert c.get("sq") is None
            deadline = time.monotonic() + 15
            while True:
                reply = c.cmd(b"set sq 0 0 5\r\nafter\r\n")
                if reply == b"STORED\r\n" or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert reply == b"STORED\r\n", reply
        d.stop()
        d.start()
        with d.client(timeout=30) as c:
            assert c.get("sq") == b"after"
            assert c.get("sq") is None
        d.stop()


def fill_past_refusals(c, queue, size, refusals=3, pause=1.0, limit=5000):
    """Sets size-byte messages, numbered, until `refusals` refusals, pausing
    after each as a retrying producer would (the checkpoints in between let
    more in).  Returns the numbers stored, in order."""
    stored, refused = [], 0
    for i in range(limit):
        body = (b"%08d" % i).ljust(size, b"z")
        reply = c.cmd(b"set %s 0 0 %d\r\n%s\r\n" % (queue.encode(), size, body))
        if reply == b"STORED\r\n":
            stored.append(i)
            continue
        assert reply.startswith(b"SERVER_ERROR out of disk space"), reply
        refused += 1
        if refused == refusals:
            return stored
        time.sleep(pause)
    raise AssertionError("%d sets of %d bytes never refused" % (limit, size))


def set_when_room(c, queue, body, within=15, flags=0):
    """A set after a drain: STORED once the drained space is given back
    (compaction runs at most every 10 s), within `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        reply = c.cmd(b"set %s %d 0 %d\r\n%s\r\n" % (queue.encode(), flags, len(body), body))
        if reply == b"STORED\r\n":
            return
        assert reply.startswith(b"SERVER_ERROR out of disk space"), reply
        assert time.monotonic() < deadline, "sets still refused after the drain: %r" % reply
        time.sleep(0.5)


def free_kib(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize // 1024


def numbers(bodies):
    return [int(b[:8]) for b in bodies]


@pytest.mark.parametrize("how", ["pipelined", "multi-get", "delete"])
def test_big_messages_never_fill_a_full_disk_to_zero(tmp_path, make_daemon, how):
    """1 MB messages fill a 24 MiB disk to the reserve.  Then 17 gets sent at
    once, multi-gets naming 16 queues, or the delete of the queue used to write their
    log (each removal logs the whole message) in one transaction: the disk
    went to 0 bytes free, every later request failed with No space left on
    device, and the environment could not be recovered at the next start.
    Short of space the daemon now commits one request at a time and
    checkpoints (removing old log files) every half log file."""
    with mounted_tmpfs(tmp_path / "mnt", "24m",
                       "needs root to mount a small tmpfs as the state directory") as mnt:
        d = make_daemon([], home=mnt / "home")
        with d.client(timeout=30) as c:
            assert c.cmd(b"set keep 0 0 4\r\nkept\r\n") == b"STORED\r\n"
            if how == "multi-get":
                stored = []
                for q in range(8):
                    stored += [(q, i) for i in fill_past_refusals(c, "m%d" % q, 1_000_000, 1, 0.5)]
            else:
                stored = fill_past_refusals(c, "big", 1_000_000)
            assert len(stored) >= 10
            low = free_kib(mnt)
            if how == "pipelined":
                c.send(b"get big\r\n" * len(stored))
                got = [v[2] for _ in stored for v in c.read_values()]
                assert numbers(got) == stored
            elif how == "multi-get":
                got = []
                for _ in range(len(stored) + 1):
                    vals = c.get(*["m%d" % (q % 8) for q in range(16)])
                    if not vals:
                        break
                    got += [(int(k[1:]), int(b[:8])) for k, _, b in vals]
                assert sorted(got) == sorted(stored)
            else:
                assert c.cmd(b"delete big\r\n") == b"DELETED\r\n"
                # The purge runs in steps, each of which may open a new log
                # file before the checkpoint after it removes the old one:
                # wait for a second without such a dip.
                deadline, steady = time.monotonic() + 20, 0
                while steady < 10 and time.monotonic() < deadline:
                    steady = steady + 1 if free_kib(mnt) >= low else 0
                    time.sleep(0.1)
            assert free_kib(mnt) > 1024, "%d KiB free (%d before)" % (free_kib(mnt), low)
            assert c.get("keep") == b"kept"
            set_when_room(c, "keep", b"again")
        assert d.stop() == 0
        d.start()
        with d.client() as c:
            assert c.get("keep") == b"again"


def test_restart_on_a_full_disk_then_draining_it(tmp_path, make_daemon):
    """Sets fill a 24 MiB disk to the reserve; the daemon restarts; a consumer
    drains it one get at a time.  After the restart nothing told the gets
    that space was short (only sets looked), so their log piled up to the
    16 MiB checkpoint trigger, filled the disk, and the next start failed
    (DB_RUNRECOVERY).  Every message must come back, and the disk must be
    usable after."""
    with mounted_tmpfs(tmp_path / "mnt", "24m",
                       "needs root to mount a small tmpfs as the state directory") as mnt:
        d = make_daemon([], home=mnt / "home")
        with d.client(timeout=30) as c:
            stored = fill_past_refusals(c, "rq", 10_000)
        assert d.stop() == 0
        d.start()
        with d.client(timeout=30) as c:
            got = c.drain("rq", len(stored))
            assert numbers(got) == stored
            set_when_room(c, "rq", b"after")
        assert d.stop() == 0
        d.start()
        with d.client() as c:
            assert c.get("rq") == b"after"


class FreeSpaceSampler:
    """Samples the free space of a file system every millisecond in a
    thread, keeping the lowest figure seen."""

    def __init__(self, path):
        self.path = path
        self.low = free_kib(path) * 1024
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            st = os.statvfs(self.path)
            self.low = min(self.low, st.f_bavail * st.f_frsize)
            time.sleep(0.001)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def big_body(i, size):
    seed = hashlib.sha256(b"big-%d" % i).digest()
    return (b"%08d" % i + seed * (size // len(seed) + 1))[:size]


def set_big_until_refused(c, queue, first, size, refusals=3):
    """Sets numbered size-byte messages from `first` on until `refusals`
    refusals, pausing after each as a retrying producer would.  Returns the
    numbers stored."""
    stored, refused, i = [], 0, first
    while refused < refusals:
        body = big_body(i, size)
        reply = c.cmd(b"set %s 0 0 %d\r\n%s\r\n" % (queue.encode(), size, body))
        if reply == b"STORED\r\n":
            stored.append(i)
            i += 1
            continue
        assert reply.startswith(b"SERVER_ERROR out of disk space"), reply
        refused += 1
        time.sleep(0.3)
    return stored


def get_big(c, queue, i, size):
    c.send(b"get %s\r\n" % queue.encode())
    line = c.read_line()
    assert line.startswith(b"VALUE "), "get of message %d answered %r" % (i, line)
    data = c.read_exact(int(line.split()[3]) + 2)[:-2]
    assert c.read_line() == b"END\r\n"
    assert data == big_body(i, size), "message %d differs" % i


@pytest.mark.parametrize("disk,args,size,drain", [
    ("8m", [], 1_000_000, "some"),
    ("16m", [], 1_000_000, "some"),
    ("8m", [], 1_000_000, "all"),
    ("32m", ["-B", "4194304"], 4_000_000, "some"),
    ("8m", ["-N"], 1_000_000, "some"),
], ids=["8MiB-1MB-some", "16MiB-1MB-some", "8MiB-1MB-all", "32MiB-4MB-some", "8MiB-1MB-no-sync"])
def test_messages_of_the_largest_size_on_a_small_disk(tmp_path, make_daemon, disk, args,
                                                      size, drain):
    """Durable mode, messages of the largest allowed size, sets until
    refused: the disk never reaches 0 free bytes; after a drain, sets are
    accepted again; a kill -9 on the full disk and a restart lose nothing,
    and no get fails for want of space.  Removing a big message logs all its
    pages, and the log files are whole files: the free space kept back has
    to follow the message size."""
    with mounted_tmpfs(tmp_path / "mnt", disk,
                       "needs root to mount a small tmpfs as the state directory") as mnt, \
            FreeSpaceSampler(mnt) as sampler:
        d = make_daemon(args, home=mnt / "home")
        with d.client(timeout=30) as c:
            stored = set_big_until_refused(c, "bq", 0, size)
            assert len(stored) >= 2, "only %d stored on a %s disk" % (len(stored), disk)
            full = free_kib(mnt)
            k = len(stored) if drain == "all" else (len(stored) + 1) // 2
            for i in stored[:k]:
                get_big(c, "bq", i, size)
            drained = free_kib(mnt)
            again = set_big_until_refused(c, "bq", stored[-1] + 1, size)
            assert len(again) >= max(1, k - 1), \
                "%d sets accepted after %d of %d were drained (free %d KiB full, %d after)" % (
                    len(again), k, len(stored), full, drained)
        d.kill9()
        d.start()
        with d.client(timeout=30) as c:
            for i in stored[k:] + again:
                get_big(c, "bq", i, size)
            assert c.get("bq") is None
        assert d.stop() == 0
    assert sampler.low > 0, "the disk reached 0 free bytes"


def small_body(i):
    return (b"%08d" % i).ljust(500, b"s")


def set_small_until_refused(c, queue, first):
    """Pipelines numbered 500-byte sets from `first` on, 50 at a time,
    until 200 in a row are refused.  Returns the numbers stored, in order."""
    stored, refused_in_a_row, i = [], 0, first
    while refused_in_a_row < 200:
        c.send(b"".join(b"set %s 0 0 500\r\n%s\r\n" % (queue.encode(), small_body(i + k))
                        for k in range(50)))
        for k in range(50):
            reply = c.read_line()
            if reply == b"STORED\r\n":
                stored.append(i + k)
                refused_in_a_row = 0
            else:
                assert reply.startswith(b"SERVER_ERROR out of disk space"), reply
                refused_in_a_row += 1
        i += 50
    return stored


def get_small(c, queue, i):
    c.send(b"get %s\r\n" % queue.encode())
    vals = c.read_values()
    assert vals and vals[0][2] == small_body(i), "message %d: %r" % (i, vals[:1])


def test_small_messages_drained_by_half_make_room_again(tmp_path, make_daemon):
    """500-byte messages share leaf pages, and a queue's leaves are freed as
    its head moves on: after half a full disk is drained, sets are accepted
    again, no get fails for want of space, the disk never reaches 0 bytes,
    and a kill -9 and restart lose nothing."""
    with mounted_tmpfs(tmp_path / "mnt", "16m",
                       "needs root to mount a small tmpfs as the state directory") as mnt, \
            FreeSpaceSampler(mnt) as sampler:
        d = make_daemon([], home=mnt / "home")
        with d.client(timeout=30) as c:
            stored = set_small_until_refused(c, "sq", 0)
            half = len(stored) // 2
            for i in stored[:half]:
                get_small(c, "sq", i)
            again = set_small_until_refused(c, "sq", stored[-1] + 1000)
            assert len(again) >= half // 4, "%d sets accepted after %d of %d were drained" % (
                len(again), half, len(stored))
        d.kill9()
        d.start()
        with d.client(timeout=30) as c:
            for i in stored[half:] + again:
                get_small(c, "sq", i)
            assert c.get("sq") is None
        assert d.stop() == 0
    assert sampler.low > 0, "the disk reached 0 free bytes"
