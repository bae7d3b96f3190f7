"""Bytes changed in messages.db while the daemon is stopped: a damaged message is never
delivered, it is reported (log line naming queue and sequence, stats damaged_messages)
and set aside, and every sound message behind it is still delivered, in order."""

import random
import re
import struct
import tarfile
from pathlib import Path

import pytest

QUEUE = "dq"
COUNT = 300


def page_size(data):
    """The page size from a Berkeley DB btree file's metadata page."""
    magic, = struct.unpack_from("<I", data, 12)
    assert magic == 0x053162, "not a btree file (magic %#x)" % magic
    return struct.unpack_from("<I", data, 20)[0]


def make_bodies(n, seed):
    rng = random.Random(seed)
    letters = b"abcdefghijklmnopqrstuvwxyz"
    return [b"body-%05d-" % i + bytes(rng.choice(letters) for _ in range(rng.randrange(40, 120)))
            for i in range(n)]


def fill(c, queue, bodies):
    c.send(b"".join(b"set %s 7 0 %d\r\n%s\r\n" % (queue.encode(), len(b), b) for b in bodies))
    assert c.read_exact(8 * len(bodies)) == b"STORED\r\n" * len(bodies)


def flip_records(path, bodies, nrecords, seed):
    """Changes one byte inside the stored record (its 16-byte header or its body) of
    `nrecords` messages found exactly once in the file past its first page; returns
    their indexes, sorted."""
    data = bytearray(path.read_bytes())
    first = page_size(data)
    rng = random.Random(seed)
    eligible = [i for i, b in enumerate(bodies)
                if data.count(b) == 1 and data.find(b) >= first + 16]
    assert len(eligible) >= nrecords, "only %d records can be damaged" % len(eligible)
    chosen = sorted(rng.sample(eligible, nrecords))
    for i in chosen:
        off = data.find(bodies[i])
        pos = rng.randrange(off - 16, off + len(bodies[i]))
        data[pos] ^= rng.randrange(1, 256)
    path.write_bytes(bytes(data))
    return chosen


def stopped_cleanly(d):
    rc = d.stop()
    assert rc == 0, "exit code %r\nstderr:\n%s" % (rc, d.stderr())


def damage_lines(d, queue):
    return [int(m.group(1)) for m in
            re.finditer(r"queue “%s”: message (\d+) is damaged \(([^)]*)\)" % queue, d.stderr())]


@pytest.mark.parametrize("nflips", [5, 50])
def test_flipped_bytes_are_never_delivered(make_daemon, nflips):
    d = make_daemon(["-N"])
    bodies = make_bodies(COUNT, nflips)
    others = [b"other-%03d" % i for i in range(20)]
    with d.client() as c:
        fill(c, QUEUE, bodies)
        fill(c, "other", others)
    stopped_cleanly(d)
    damaged = flip_records(d.home / "messages.db", bodies, nflips, seed=nflips)

    d.start()
    with d.client() as c:
        delivered = c.drain(QUEUE, COUNT)
        wrong = [b for b in delivered if b not in bodies]
        assert not wrong, "%d wrong bodies delivered, e.g. %r" % (len(wrong), wrong[:3])
        expected = [b for i, b in enumerate(bodies) if i not in damaged]
        assert delivered == expected
        assert c.drain("other", 20) == others
        assert int(c.stats()["damaged_messages"]) == nflips
        assert c.queue_counters() == {QUEUE: (COUNT, COUNT), "other": (20, 20)}
        # the queue goes on working
        assert c.set(QUEUE, b"after") == b"STORED\r\n"
    # One warning each, in order, up to the log's rate limit (50 warnings per 10 s).
    logged = damage_lines(d, QUEUE)
    assert logged == damaged[:len(logged)] and len(logged) >= min(nflips, 40), d.stderr()

    # Set aside for good: a restart finds nothing more to report.
    d.restart()
    with d.client() as c:
        assert c.get(QUEUE) == b"after"
        assert c.get(QUEUE) is None
        assert int(c.stats()["damaged_messages"]) == 0
    assert "holds %d damaged message records set aside" % nflips in d.stderr()


def test_damage_is_on_the_bus(make_daemon):
    """DamagedMessages on the daemon object counts what stats damaged_messages counts."""
    from test_dbus import DAEMON_IFACE, ROOT_PATH, PrivateBus, wait_until
    bus = PrivateBus()
    try:
        d = make_daemon(["-N"], env={"DBUS_SYSTEM_BUS_ADDRESS": bus.address})
        bus.wait_name()
        assert bus.get_all(ROOT_PATH, DAEMON_IFACE)["DamagedMessages"] == 0
        bodies = make_bodies(100, 3)
        with d.client() as c:
            fill(c, QUEUE, bodies)
        stopped_cleanly(d)
        damaged = flip_records(d.home / "messages.db", bodies, 3, seed=3)
        d.start()
        bus.wait_name()
        with d.client() as c:
            assert c.drain(QUEUE, 100) == [b for i, b in enumerate(bodies) if i not in damaged]
            assert int(c.stats()["damaged_messages"]) == 3
        wait_until(lambda: bus.get_all(ROOT_PATH, DAEMON_IFACE)["DamagedMessages"] == 3,
                   what="DamagedMessages == 3")
    finally:
        bus.close()


# Key bytes: queue id (0-3), sequence (4-11).  Seq k becoming k + 1 keeps the page in
# order; id 1 becoming 0 does not, and misleads searches for the keys near it.
@pytest.mark.parametrize("byte", [11, 3], ids=["seq-to-next", "id-out-of-order"])
def test_changed_key_is_passed_over(make_daemon, byte):
    """A record whose key changed is missing from its queue: the queue passes over it,
    and the messages around it are still found."""
    d = make_daemon(["-N"])
    bodies = make_bodies(COUNT, 7)
    with d.client() as c:
        fill(c, QUEUE, bodies)
    stopped_cleanly(d)
    path = d.home / "messages.db"
    data = bytearray(path.read_bytes())
    first = page_size(data)
    # Queue id 1; its key k turned into k + 1's (order on the page is kept).
    key = lambda seq: struct.pack(">IQ", 1, seq)
    k = next(seq for seq in range(100, COUNT - 1, 2)
             if data.count(key(seq)) == 1 and data.find(key(seq)) >= first)
    data[data.find(key(k)) + byte] ^= 1
    path.write_bytes(bytes(data))

    d.start()
    with d.client() as c:
        assert c.drain(QUEUE, COUNT) == bodies[:k] + bodies[k + 1:]
        assert int(c.stats()["damaged_messages"]) == 1
        assert c.queue_counters() == {QUEUE: (COUNT, COUNT)}
    assert damage_lines(d, QUEUE) == [k], d.stderr()
    assert "message %d is damaged (missing from messages.db)" % k in d.stderr()


def test_messages_missing_past_the_last_record_are_passed_over_at_once(make_daemon):
    """A queue whose record in queues.db claims far more messages than messages.db holds
    (a damaged tail): once the real ones are delivered, one get passes over the rest."""
    d = make_daemon(["-N"])
    bodies = make_bodies(50, 5)
    with d.client() as c:
        fill(c, QUEUE, bodies)
    stopped_cleanly(d)
    path = d.home / "queues.db"
    data = bytearray(path.read_bytes())
    record = struct.pack(">IQQQ", 1, 0, 50, 50)           # id, head, tail, enqueued
    assert data.count(record) == 1
    extra = 10 ** 9
    pos = data.find(record)
    data[pos:pos + len(record)] = struct.pack(">IQQQ", 1, 0, 50 + extra, 50 + extra)
    path.write_bytes(bytes(data))

    d.start()
    with d.client() as c:
        assert c.queue_counters() == {QUEUE: (50 + extra, 0)}
        assert c.drain(QUEUE, 50) == bodies
        assert int(c.stats()["damaged_messages"]) == extra
        assert c.queue_counters() == {QUEUE: (50 + extra, 50 + extra)}
        assert c.set(QUEUE, b"next") == b"STORED\r\n" and c.get(QUEUE) == b"next"
    assert ("queue “%s”: messages 50 to %d are damaged (missing from messages.db)"
            % (QUEUE, 50 + extra - 1)) in d.stderr()


def test_environment_stopped_by_berkeley_db_is_explained(make_daemon):
    """Damage Berkeley DB itself gives up on (a free-list page of another type): one
    warning says what it means and points at the salvage procedure."""
    d = make_daemon(["-N"])
    with d.client() as c:
        fill(c, QUEUE, [b"x"] * 10)
    stopped_cleanly(d)
    path = d.home / "messages.db"
    data = bytearray(path.read_bytes())
    size = page_size(data)
    free, = struct.unpack_from("<I", data, 28)           # the metadata's free-list head
    assert free != 0
    data[free * size + 25] = 99                           # that page's type
    path.write_bytes(bytes(data))

    d.start()
    with d.client() as c:
        assert c.set(QUEUE, b"y").startswith(b"SERVER_ERROR ")
    text = d.stderr()
    assert text.count("Berkeley DB has stopped the environment (DB_RUNRECOVERY)") == 1, text
    assert "salvage the home (see “Damaged messages” in memcacheq(8))" in text


BASE_STORE = Path(__file__).parent / "data" / "base-store.tar.gz"


def legacy_body(q, i):
    return b"legacy-%s-%03d-" % (q, i) + b"xyz" * (i % 17)


def test_store_of_the_previous_version(make_daemon, tmp_path):
    """A store written by the previous version (records without checksums; made with
    make_base_store below) keeps every message and counter, and the messages added
    since are checked."""
    home = tmp_path / "base"
    home.mkdir(mode=0o700)
    with tarfile.open(BASE_STORE) as tar:
        tar.extractall(home)
    d = make_daemon(["-N"], home=home)
    with d.client() as c:
        assert c.queue_counters() == {"a": (60, 10), "b": (30, 0), "e": (5, 5)}
        for i in range(10, 15):
            c.send(b"get a\r\n")
            assert c.read_values() == [("a", i, legacy_body(b"a", i))]
        new = [b"new-b-%02d-" % i + b"q" * i for i in range(10)]
        fill(c, "b", new)
    stopped_cleanly(d)
    # Damage one of the new messages.
    path = home / "messages.db"
    data = bytearray(path.read_bytes())
    assert data.count(new[3]) == 1
    data[data.find(new[3]) + 4] ^= 0x20
    path.write_bytes(bytes(data))

    d.start()
    with d.client() as c:       # opened (it listens before the store is open)
        assert c.queue_counters() == {"a": (60, 15), "b": (40, 0), "e": (5, 5)}
    d.restart()                 # twice: the old records stay readable
    with d.client() as c:
        c.send(b"get a\r\n" * 45)
        got = [c.read_values() for _ in range(45)]
        assert got == [[("a", i, legacy_body(b"a", i))] for i in range(15, 60)]
        assert c.get("a") is None
        assert c.drain("b", 40) == [legacy_body(b"b", i) for i in range(30)] + new[:3] + new[4:]
        assert int(c.stats()["damaged_messages"]) == 1
        assert c.queue_counters() == {"a": (60, 60), "b": (40, 40), "e": (5, 5)}
    assert damage_lines(d, "b") == [33], d.stderr()


def make_base_store(binary, home):
    """How data/base-store.tar.gz was made, with the previous version's binary:
    `python3 test_damaged_records.py BINARY HOME`, then, in HOME,
    `tar czf base-store.tar.gz log.0000000001 messages.db purge.db queues.db`."""
    from conftest import Daemon
    Path(home).mkdir(parents=True, mode=0o700)
    d = Daemon(binary, home)
    d.start()
    with d.client() as c:
        for q, n, flags in ((b"a", 60, None), (b"b", 30, 7)):
            for i in range(n):
                assert c.set(q, legacy_body(q, i), flags=i if flags is None else flags) == b"STORED\r\n"
        fill(c, "e", [b"e%d" % i for i in range(5)])
        fill(c, "gone", [b"g%d" % i for i in range(20)])
        assert c.drain("e", 5) == [b"e%d" % i for i in range(5)]
        for i in range(10):
            assert c.get("a") == legacy_body(b"a", i)
        assert c.cmd(b"delete gone\r\n") == b"DELETED\r\n"
    assert d.stop() == 0


if __name__ == "__main__":
    import sys
    make_base_store(sys.argv[1], sys.argv[2])


def test_a_salvaged_store_with_foreign_keys_starts_and_delivers(make_daemon, tmp_path):
    """The documented salvage (db5.3_dump -r | db5.3_load) can bring keys of another
    length into messages.db.  The start-up check cannot read such a file's queue
    ends: it says so and starts, and every message is still delivered in order."""
    import shutil
    import subprocess
    d = make_daemon(["-N"])
    bodies = make_bodies(20, 11)
    with d.client() as c:
        fill(c, QUEUE, bodies)
    stopped_cleanly(d)
    salvaged = tmp_path / "salvaged"
    salvaged.mkdir(mode=0o700)
    for name in ("queues", "purge", "integrity", "messages"):
        dump = subprocess.run(["db5.3_dump", "-p", str(d.home / (name + ".db"))],
                              capture_output=True, check=True, timeout=30).stdout
        if name == "messages":          # one record under an 8-byte key
            dump = dump.replace(b"DATA=END\n", b" abcdefgh\n xy\nDATA=END\n", 1)
        subprocess.run(["db5.3_load", str(salvaged / (name + ".db"))], input=dump,
                       check=True, timeout=30)
    shutil.rmtree(d.home)
    salvaged.rename(d.home)
    d.start()
    with d.client() as c:
        assert c.drain(QUEUE, 20) == bodies
    assert "messages.db holds keys that are not memcacheq's" in d.stderr()
