"""Bytes changed in messages.db while the daemon is stopped: a damaged message is never
delivered, it is reported (log line naming queue and sequence, stats damaged_messages)
and set aside, and every sound message behind it is still delivered, in order."""

import random
import re
import struct

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
