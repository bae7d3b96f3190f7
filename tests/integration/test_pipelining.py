"""Pipelining, slow writers, slow readers and many concurrent connections."""

import socket
import threading
import time

import pytest

from conftest import Conn


def test_pipeline_100_mixed_commands(conn):
    queues = {}          # name -> list of (flags, body)
    counters = {}        # name -> [enqueued, dequeued]
    req, exp = [], []

    def stats_queue_reply():
        return b"".join(b"STAT %s %d/%d\r\n" % (q, e, d)
                        for q, (e, d) in sorted(counters.items())) + b"END\r\n"

    def get_reply(names):
        out = b""
        for q in names:
            if queues.get(q):
                flags, body = queues[q].pop(0)
                counters[q][1] += 1
                out += b"VALUE %s %d %d\r\n%s\r\n" % (q, flags, len(body), body)
        return out + b"END\r\n"

    for i in range(100):
        q = b"pp%d" % (i % 3)
        kind = i % 8
        if i == 60:
            req.append(b"delete ppdel\r\n")
            exp.append(b"DELETED\r\n")
            del queues[b"ppdel"], counters[b"ppdel"]
        elif i == 61:
            req.append(b"delete ppdel\r\n")
            exp.append(b"NOT_FOUND\r\n")
        elif kind in (0, 1, 4) or (kind == 6 and i < 60):
            if kind == 6:
                q = b"ppdel"
            body = (b"<%03d\r\n>" % i) * (i % 5 + 1)
            req.append(b"set %s %d 0 %d\r\n%s\r\n" % (q, i, len(body), body))
            exp.append(b"STORED\r\n")
            queues.setdefault(q, []).append((i, body))
            counters.setdefault(q, [0, 0])[0] += 1
        elif kind == 2:
            req.append(b"get %s\r\n" % q)
            exp.append(get_reply([q]))
        elif kind == 3:
            req.append(b"version\r\n")
            exp.append(b"VERSION 0.1.0\r\n")
        elif kind == 5:
            req.append(b"get pp2 nonexistent pp0 pp1\r\n")
            exp.append(get_reply([b"pp2", b"nonexistent", b"pp0", b"pp1"]))
        else:
            req.append(b"stats queue\r\n")
            exp.append(stats_queue_reply())
    assert len(req) == 100
    expected = b"".join(exp)
    conn.send(b"".join(req))
    got = conn.read_exact(len(expected))
    assert got == expected
    conn.expect_silence()


def test_one_byte_writes(daemon):
    c = daemon.client()
    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    msg = b"set ob 5 0 5\r\nhel\nl\r\nget ob\r\nversion\n"
    for i in range(len(msg)):
        c.send(msg[i:i + 1])
        time.sleep(0.003)
    expected = b"STORED\r\nVALUE ob 5 5\r\nhel\nl\r\nEND\r\nVERSION 0.1.0\r\n"
    assert c.read_exact(len(expected)) == expected
    c.expect_silence()
    c.close()


def test_large_reply_to_slow_reader(daemon):
    n_queues = 8
    size = 1048576
    bodies = [bytes([(q * 17 + 1) % 256]) * (size - 1) + bytes([q]) for q in range(n_queues)]
    with daemon.client() as w:
        for q in range(n_queues):
            assert w.cmd(b"set big%d %d 0 %d\r\n" % (q, q, size) + bodies[q] + b"\r\n") \
                == b"STORED\r\n"

    slow = Conn(daemon.port, rcvbuf=16384)
    slow.send(b"get " + b" ".join(b"big%d" % q for q in range(n_queues)) + b"\r\n")
    # while the slow reader reads nothing, the server keeps serving others
    time.sleep(0.5)
    with daemon.client() as other:
        assert other.cmd(b"version\r\n") == b"VERSION 0.1.0\r\n"
        assert other.set("side", b"s") == b"STORED\r\n"
        assert other.get("side") == b"s"

    expected = b"".join(b"VALUE big%d %d %d\r\n%s\r\n" % (q, q, size, bodies[q])
                        for q in range(n_queues)) + b"END\r\n"
    got = bytearray()
    deadline = time.monotonic() + 60
    while len(got) < len(expected):
        assert time.monotonic() < deadline, "slow read did not finish (%d bytes)" % len(got)
        chunk = slow.sock.recv(min(65536, len(expected) - len(got)))
        assert chunk, "server closed after %d of %d bytes" % (len(got), len(expected))
        got += chunk
        time.sleep(0.002)
    assert len(got) == len(expected)
    assert bytes(got) == expected
    assert slow.cmd(b"version\r\n") == b"VERSION 0.1.0\r\n"
    slow.close()


def test_200_concurrent_connections(daemon):
    n = 200
    per_shared = 5
    conns = []
    try:
        for i in range(n):
            conns.append(daemon.client())
        barrier = threading.Barrier(n + 1, timeout=60)
        errors = []

        def worker(i, c):
            try:
                own = b"own%03d" % i
                assert c.cmd(b"set %s 0 0 2\r\nA%d\r\n" % (own, i % 10)) == b"STORED\r\n"
                for k in range(per_shared):
                    body = b"%03d:%d" % (i, k)
                    assert c.cmd(b"set shared 0 0 %d\r\n%s\r\n" % (len(body), body)) \
                        == b"STORED\r\n"
                barrier.wait()      # everyone is connected and has stored
                barrier.wait()      # main thread has looked at the stats
                assert c.cmd(b"set %s 0 0 2\r\nB%d\r\n" % (own, i % 10)) == b"STORED\r\n"
                assert c.get(own) == b"A%d" % (i % 10)
                assert c.get(own) == b"B%d" % (i % 10)
                assert c.get(own) is None
            except Exception as e:   # reported by the main thread
                errors.append((i, repr(e)))
                barrier.abort()

        threads = [threading.Thread(target=worker, args=(i, conns[i]), daemon=True)
                   for i in range(n)]
        for t in threads:
            t.start()
        st = counters = None
        try:
            barrier.wait()
            with daemon.client() as s:
                st = s.stats()
                counters = s.queue_counters()
            barrier.wait()
        except threading.BrokenBarrierError:
            pass
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads)
        assert not errors, errors[:5]
        assert st is not None and counters is not None, "barrier broken"
        assert int(st["curr_connections"]) >= n + 1, st["curr_connections"]
        assert counters["shared"] == (n * per_shared, 0)

        with daemon.client() as s:
            shared = s.drain("shared", n * per_shared)
        assert len(shared) == n * per_shared
        assert sorted(shared) == sorted(b"%03d:%d" % (i, k) for i in range(n)
                                        for k in range(per_shared))
        # each producer's messages keep their relative order
        seen = {}
        for body in shared:
            i, k = body.split(b":")
            assert int(k) == seen.get(i, -1) + 1, "order broken for producer %s" % i
            seen[i] = int(k)
    finally:
        for c in conns:
            c.close()


MODES = {"nosync": ["-N"], "durable": []}


@pytest.mark.parametrize("mode", MODES.values(), ids=MODES.keys())
def test_checkpoints_keep_their_place_in_a_pipeline(make_daemon, mode):
    # Sets and gets run on the main thread and checkpoints on the
    # maintenance thread; the replies must still come back in request order, and a
    # checkpoint must not overtake the set before it.
    d = make_daemon(mode)
    c = d.client()
    req, exp = [], []
    for i in range(150):
        body = b"m%04d" % i
        req.append(b"set ck%d 0 0 %d\r\n%s\r\n" % (i % 3, len(body), body))
        exp.append(b"STORED\r\n")
        if i % 50 == 49:
            req.append(b"db_checkpoint\r\ndb_archive\r\n")
            exp.append(b"OK\r\nOK\r\n")
    for i in range(150):
        body = b"m%04d" % i
        req.append(b"get ck%d\r\n" % (i % 3))
        exp.append(b"VALUE ck%d 0 %d\r\n%s\r\nEND\r\n" % (i % 3, len(body), body))
    expected = b"".join(exp)
    c.send(b"".join(req))
    assert c.read_exact(len(expected)) == expected
    c.expect_silence()
    # the checkpointed state is what a restart finds
    assert c.set("ck_after", b"x") == b"STORED\r\n"
    c.close()
    d.stop()
    d.start()
    with d.client() as c2:
        assert c2.stats_queue_raw() == b"STAT ck0 50/50\r\nSTAT ck1 50/50\r\nSTAT ck2 50/50\r\nSTAT ck_after 1/0\r\nEND\r\n"


@pytest.mark.parametrize("mode", MODES.values(), ids=MODES.keys())
def test_deleting_a_deep_queue_does_not_stall_the_others(make_daemon, mode):
    # The messages of a deleted queue are removed in chunks between
    # requests; meanwhile other queues answer at once, and a queue made
    # again under the old name holds only its new messages.
    d = make_daemon(mode)
    c = d.client()
    n = 20000
    c.send(b"".join(b"set deep 0 0 6 noreply\r\n%06d\r\n" % i for i in range(n)))
    assert c.cmd(b"version\r\n") == b"VERSION 0.1.0\r\n"
    assert c.stats_queue_raw() == b"STAT deep %d/0\r\nEND\r\n" % n
    assert c.cmd(b"delete deep\r\n") == b"DELETED\r\n"
    worst = 0.0
    for i in range(200):
        t = time.monotonic()
        assert c.set("other", b"o%d" % i) == b"STORED\r\n"
        assert c.cmd(b"get other\r\n", b"END\r\n") == b"VALUE other 0 %d\r\no%d\r\nEND\r\n" % (len(b"o%d" % i), i)
        worst = max(worst, time.monotonic() - t)
    assert worst < 1.0, worst
    assert c.set("deep", b"fresh") == b"STORED\r\n"
    assert c.cmd(b"get deep\r\n", b"END\r\n") == b"VALUE deep 0 5\r\nfresh\r\nEND\r\n"
    assert c.cmd(b"get deep\r\n", b"END\r\n") == b"END\r\n"
    c.close()
    d.stop()
    d.start()
    with d.client() as c2:
        assert c2.stats_queue_raw() == b"STAT deep 1/1\r\nSTAT other 200/200\r\nEND\r\n"
        assert c2.cmd(b"get deep\r\n", b"END\r\n") == b"END\r\n"
