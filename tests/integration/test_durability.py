"""Messages survive restarts: clean ones (SIGTERM/SIGINT, both modes) and kill -9 in the
default durable mode."""

import signal
import threading
import time

import pytest

MODES = {"durable": [], "nosync": ["-N"]}


def _produce(c, plan):
    """plan: list of (queue, body). Pipelined in batches."""
    batch = 200
    for start in range(0, len(plan), batch):
        chunk = plan[start:start + batch]
        c.send(b"".join(b"set %s 0 0 %d\r\n%s\r\n" % (q, len(b), b) for q, b in chunk))
        assert c.read_exact(8 * len(chunk)) == b"STORED\r\n" * len(chunk)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("mode", list(MODES))
def test_clean_restart_keeps_every_message(make_daemon, mode, sig):
    d = make_daemon(MODES[mode])
    queues = [b"ra", b"rb", b"rc"]
    plan = [(queues[i % 3], b"m%05d" % i + b"." * (i % 50)) for i in range(1500)]
    expected = {q: [b for qq, b in plan if qq == q] for q in queues}
    with d.client() as c:
        _produce(c, plan)
        # consume a few from one queue: those must stay consumed
        for i in range(10):
            assert c.get("ra") == expected[b"ra"].pop(0)
    rc = d.stop(sig)
    assert rc == 0, "exit code %r after %s\nstderr:\n%s" % (rc, sig, d.stderr())
    d.start()
    with d.client() as c:
        assert c.queue_counters() == {"ra": (500, 10), "rb": (500, 0), "rc": (500, 0)}
        for q in queues:
            assert c.drain(q.decode(), 1000) == expected[q], "queue %r differs" % q


def test_kill9_durable_keeps_every_acknowledged_message(make_daemon):
    d = make_daemon([])          # default durable mode
    c = d.client()
    sent, acked, problems = [], [], []
    stop = threading.Event()

    def producer():
        for i in range(200000):
            if stop.is_set():
                return
            body = b"ack-%06d" % i
            sent.append(body)
            try:
                c.send(b"set kq 0 0 %d\r\n%s\r\n" % (len(body), body))
                line = c.read_line()
            except (OSError, EOFError, TimeoutError):
                return           # the daemon died under us: expected
            if line != b"STORED\r\n":
                problems.append(line)
                return
            acked.append(body)

    t = threading.Thread(target=producer, daemon=True)
    t.start()
    deadline = time.monotonic() + 20
    while len(acked) < 300 and time.monotonic() < deadline and t.is_alive():
        time.sleep(0.01)
    d.kill9()                    # mid-stream, while sets are in flight
    stop.set()
    t.join(15)
    assert not t.is_alive()
    c.close()
    assert not problems, problems
    assert len(acked) >= 20, "producer got only %d acknowledgements" % len(acked)

    d.start()
    with d.client() as c2:
        counters = c2.queue_counters()
        got = c2.drain("kq", len(sent))
    assert got[:len(acked)] == acked, "an acknowledged message was lost or reordered"
    extra = got[len(acked):]
    # anything beyond the acknowledged messages may only be the unacknowledged tail
    assert extra == sent[len(acked):len(acked) + len(extra)], extra[:5]
    assert counters == {"kq": (len(got), 0)}


def test_kill9_durable_then_more_work(make_daemon):
    d = make_daemon([])
    with d.client() as c:
        for i in range(20):
            assert c.set("kw", b"before-%d" % i) == b"STORED\r\n"
        for i in range(5):
            assert c.get("kw") == b"before-%d" % i
    d.kill9()
    d.start()
    with d.client() as c:
        assert c.set("kw", b"after") == b"STORED\r\n"
        assert c.queue_counters() == {"kw": (21, 5)}
    d.kill9()
    d.start()
    with d.client() as c:
        assert c.drain("kw", 100) == [b"before-%d" % i for i in range(5, 20)] + [b"after"]
    assert d.stop() == 0


def _fill_numbered(d, queue, n, size):
    """n messages of size bytes on queue, each its 8-digit number repeated."""
    with d.client() as c:
        for i in range(0, n, 20):
            c.send(b"".join(b"set %s 0 0 %d noreply\r\n%s\r\n" % (queue, size, b"%08d" % j * (size // 8))
                            for j in range(i, i + 20)))
        assert c.cmd(b"version\r\n").startswith(b"VERSION")


def _take_replies(buf, size, got):
    """Consumes the complete get replies at the start of buf, appending each
    message's number to got (and checking its body).  Returns what is left of
    buf and how many replies (VALUE or a bare END) it consumed."""
    replies = 0
    while True:
        if buf.startswith(b"END\r\n"):
            buf = buf[5:]
            replies += 1
            continue
        e = buf.find(b"\r\n")
        if not buf.startswith(b"VALUE") or e < 0:
            return buf, replies
        length = int(buf[:e].split()[3])
        if len(buf) < e + 2 + length + 7:
            return buf, replies
        body = buf[e + 2:e + 2 + length]
        assert body == body[:8] * (size // 8)
        got.append(int(body[:8]))
        buf = buf[e + 2 + length + 7:]
        replies += 1


def _stop_while_consuming(d, consume, after, queue, n, got, outcome):
    """SIGTERM `after` seconds into consume(); the consumer must then see a
    clean end of stream, and after a restart every message must be either
    received or still queued, in order, exactly once."""
    t = threading.Thread(target=consume)
    t.start()
    time.sleep(after)
    assert d.stop() == 0, d.stderr()
    t.join(30)
    assert outcome == ["eof"]
    assert 0 < len(got) < n
    d.start()
    with d.client() as c:
        rest = c.drain(queue.decode(), n)
    assert got + [int(b[:8]) for b in rest] == list(range(n)), \
        "received %d, %d still queued, of %d" % (len(got), len(rest), n)


def test_shutdown_takes_nothing_a_slow_pipelining_consumer_cannot_read(make_daemon):
    """A consumer sends 1000 gets of 100 KB messages at once and reads about
    4 MB/s, so at SIGTERM the daemon could go on taking messages for it for
    longer than the 10 s it gives the drain.  Once draining, its gets take
    nothing: the consumer reads everything it was given, then a clean end of
    stream, and every message is either received or still queued, in order,
    exactly once (before, ~100 messages taken during the drain were cut off
    unsent at the deadline)."""
    d = make_daemon(["-N"])
    n, size = 1000, 100_000
    _fill_numbered(d, b"deep", n, size)
    got, outcome = [], []

    def consume():
        c = d.client(rcvbuf=65536)
        buf, start, received = b"", time.monotonic(), 0
        try:
            c.send(b"get deep\r\n" * n)
            while True:
                buf, _ = _take_replies(buf, size, got)
                data = c.sock.recv(65536)
                if not data:
                    outcome.append("eof")
                    return
                buf += data
                received += len(data)
                ahead = received / 4e6 - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(ahead)
        except OSError as e:
            outcome.append("error: %r after %d messages" % (e, len(got)))
        finally:
            c.close()

    _stop_while_consuming(d, consume, 1.0, b"deep", n, got, outcome)


@pytest.mark.parametrize("mode", list(MODES))
def test_shutdown_never_resets_a_pipelining_consumer(make_daemon, mode):
    """A consumer keeps two gets in flight on big messages and reads slowly
    when SIGTERM comes.  The daemon answers what it has read and closes; the
    get it has not read must not make the kernel reset the connection, which
    would throw away the end of a message already taken off the queue: the
    consumer must see a clean end of stream, and every message must end up
    either received whole or still queued, exactly once."""
    d = make_daemon(MODES[mode])
    n, size = 400, 100_000
    _fill_numbered(d, b"big", n, size)
    got, outcome = [], []

    def consume():
        c = d.client(rcvbuf=8192)
        buf = b""
        try:
            c.send(b"get big\r\nget big\r\n")
            while True:
                buf, replies = _take_replies(buf, size, got)
                if replies:
                    c.send(b"get big\r\n" * replies)   # two stay in flight
                data = c.sock.recv(4096)
                if not data:
                    outcome.append("eof")
                    return
                buf += data
                time.sleep(0.0005)
        except OSError as e:
            outcome.append("error: %r after %d messages, %d bytes of a reply" % (e, len(got), len(buf)))
        finally:
            c.close()

    _stop_while_consuming(d, consume, 0.3, b"big", n, got, outcome)
