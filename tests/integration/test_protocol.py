"""Core protocol behaviour: the seed transcript, FIFO order, bodies, flags, multi-get,
gets, delete and noreply."""

import pytest


def test_seed_transcript_byte_exact(conn):
    assert conn.cmd(b"set q4 0 0 5\r\nhello\r\n") == b"STORED\r\n"
    assert conn.cmd(b"set q4 0 0 5\r\nworld\r\n") == b"STORED\r\n"
    assert conn.cmd(b"stats queue\r\n", b"END\r\n") == b"STAT q4 2/0\r\nEND\r\n"
    assert conn.cmd(b"get q4\r\n", b"END\r\n") == b"VALUE q4 0 5\r\nhello\r\nEND\r\n"
    assert conn.cmd(b"stats queue\r\n", b"END\r\n") == b"STAT q4 2/1\r\nEND\r\n"
    assert conn.cmd(b"get q4\r\n", b"END\r\n") == b"VALUE q4 0 5\r\nworld\r\nEND\r\n"
    assert conn.cmd(b"get q4\r\n", b"END\r\n") == b"END\r\n"
    assert conn.cmd(b"stats queue\r\n", b"END\r\n") == b"STAT q4 2/2\r\nEND\r\n"


def test_version_and_bare_newline(conn):
    assert conn.cmd(b"version\r\n") == b"VERSION 0.1.0\r\n"
    # bare \n is accepted on command lines
    assert conn.cmd(b"version\n") == b"VERSION 0.1.0\r\n"
    assert conn.cmd(b"set bn 0 0 2\nhi\r\n") == b"STORED\r\n"
    assert conn.cmd(b"get bn\n", b"END\r\n") == b"VALUE bn 0 2\r\nhi\r\nEND\r\n"


def test_unknown_queue_get_is_just_end(conn):
    assert conn.cmd(b"get never_used\r\n", b"END\r\n") == b"END\r\n"
    assert conn.cmd(b"stats queue\r\n", b"END\r\n") == b"END\r\n"


def test_fifo_order_10000_messages_over_several_queues(conn):
    queues = [b"fa", b"fb", b"fc", b"fd", b"fe"]
    total = 10000
    batch = 500
    expected = {q: [] for q in queues}
    msgs = []
    for i in range(total):
        q = queues[(i * 7 + i // 3) % len(queues)]
        body = b"msg-%05d-%s" % (i, b"x" * (i % 37))
        expected[q].append(body)
        msgs.append((q, body))
    for start in range(0, total, batch):
        chunk = msgs[start:start + batch]
        conn.send(b"".join(b"set %s 0 0 %d\r\n%s\r\n" % (q, len(b), b) for q, b in chunk))
        replies = conn.read_exact(len(b"STORED\r\n") * len(chunk))
        assert replies == b"STORED\r\n" * len(chunk), replies[:200]

    counters = conn.queue_counters()
    assert counters == {q.decode(): (len(expected[q]), 0) for q in queues}

    for q in queues:
        want = expected[q]
        got = []
        for start in range(0, len(want), batch):
            n = min(batch, len(want) - start)
            conn.send(b"get %s\r\n" % q * n)
            for _ in range(n):
                vals = conn.read_values()
                assert len(vals) == 1, "queue %r ran dry early after %d" % (q, len(got))
                key, flags, body = vals[0]
                assert key == q.decode() and flags == 0
                got.append(body)
        assert got == want, "FIFO order broken in %r" % q
        assert conn.cmd(b"get %s\r\n" % q, b"END\r\n") == b"END\r\n"

    counters = conn.queue_counters()
    assert counters == {q.decode(): (len(expected[q]), len(expected[q])) for q in queues}


BINARY_BODY = (bytes(range(256)) + b"\r\nEND\r\nVALUE x 0 1\r\n\r\n\n\r\x00"
               + bytes(range(255, -1, -1)) + b"\r\n")


def test_binary_body_all_byte_values(conn):
    body = BINARY_BODY
    assert conn.cmd(b"set bin 0 0 %d\r\n%s\r\n" % (len(body), body)) == b"STORED\r\n"
    assert conn.cmd(b"set bin 0 0 3\r\n\r\n\n\r\n") == b"STORED\r\n"
    expect = b"VALUE bin 0 %d\r\n%s\r\nEND\r\n" % (len(body), body)
    conn.send(b"get bin\r\n")
    assert conn.read_exact(len(expect)) == expect
    assert conn.cmd(b"get bin\r\n", b"END\r\n") == b"VALUE bin 0 3\r\n\r\n\n\r\nEND\r\n"
    assert conn.cmd(b"get bin\r\n", b"END\r\n") == b"END\r\n"


def test_zero_length_body(conn):
    assert conn.cmd(b"set z 0 0 0\r\n\r\n") == b"STORED\r\n"
    assert conn.cmd(b"stats queue\r\n", b"END\r\n") == b"STAT z 1/0\r\nEND\r\n"
    assert conn.cmd(b"get z\r\n", b"END\r\n") == b"VALUE z 0 0\r\n\r\nEND\r\n"
    assert conn.cmd(b"get z\r\n", b"END\r\n") == b"END\r\n"


def test_max_body_option_boundary(make_daemon):
    d = make_daemon(["-N", "-B", "4096"])
    with d.client() as c:
        exact = bytes((i * 31) % 256 for i in range(4096))
        assert c.cmd(b"set mb 0 0 4096\r\n" + exact + b"\r\n") == b"STORED\r\n"
        over = b"o" * 4097
        assert (c.cmd(b"set mb 0 0 4097\r\n" + over + b"\r\n")
                == b"SERVER_ERROR object too large for cache\r\n")
        # the rejected body was swallowed: the stream is still in sync
        assert c.cmd(b"version\r\n") == b"VERSION 0.1.0\r\n"
        assert c.cmd(b"set mb 0 0 1\r\nz\r\n") == b"STORED\r\n"
        assert c.get("mb") == exact
        assert c.get("mb") == b"z"
        assert c.get("mb") is None


def test_default_max_body_is_1mib(daemon):
    with daemon.client() as c:
        big = bytes((i * 7 + 3) % 256 for i in range(1048576))
        assert c.cmd(b"set big 0 0 1048576\r\n" + big + b"\r\n") == b"STORED\r\n"
        assert (c.cmd(b"set big 0 0 1048577\r\n" + b"y" * 1048577 + b"\r\n")
                == b"SERVER_ERROR object too large for cache\r\n")
        assert c.cmd(b"version\r\n") == b"VERSION 0.1.0\r\n"
        assert c.get("big") == big
        assert c.get("big") is None


@pytest.mark.parametrize("flags", [b"0", b"1", b"65535", b"4294967295"])
def test_flags_round_trip(conn, flags):
    assert conn.cmd(b"set fl " + flags + b" 0 3\r\nabc\r\n") == b"STORED\r\n"
    assert conn.cmd(b"get fl\r\n", b"END\r\n") == b"VALUE fl " + flags + b" 3\r\nabc\r\nEND\r\n"


@pytest.mark.parametrize("flags", [b"4294967296", b"-1", b"99999999999999999999", b"1x"])
def test_flags_out_of_range(conn, flags):
    # the byte count is valid, so the body that follows is swallowed with the
    # error ("abc" would otherwise get an ERROR reply of its own)
    assert (conn.cmd(b"set fl " + flags + b" 0 3\r\nabc\r\n")
            == b"CLIENT_ERROR bad command line format\r\n")
    assert conn.cmd(b"version\r\n") == b"VERSION 0.1.0\r\n"
    assert conn.cmd(b"get fl\r\n", b"END\r\n") == b"END\r\n"
    assert conn.cmd(b"stats queue\r\n", b"END\r\n") == b"END\r\n"


def test_exptime_is_ignored(conn):
    assert conn.cmd(b"set ex 5 1 2\r\nhi\r\n") == b"STORED\r\n"
    assert conn.cmd(b"set ex 6 3600 2\r\nho\r\n") == b"STORED\r\n"
    assert conn.cmd(b"get ex\r\n", b"END\r\n") == b"VALUE ex 5 2\r\nhi\r\nEND\r\n"
    assert conn.cmd(b"get ex\r\n", b"END\r\n") == b"VALUE ex 6 2\r\nho\r\nEND\r\n"


ZEROS = b"0" * 24


def test_numbers_with_leading_zeros_are_read_by_value(conn):
    # However many zeros pad a number, its value decides: flags, exptime,
    # bytes, the verbosity level and delete's time all read as usual.
    line = b"set lz %s7 -%s1 %s5\r\nhello\r\n" % (ZEROS, ZEROS, ZEROS)
    assert conn.cmd(line) == b"STORED\r\n"
    assert conn.cmd(b"set lz 0 0 %s1\r\nx\r\n" % ZEROS) == b"STORED\r\n"
    assert conn.cmd(b"set lz 0 0 01\r\ny\r\n") == b"STORED\r\n"
    assert conn.cmd(b"version\r\n") == b"VERSION 0.1.0\r\n"   # no stray reply
    assert conn.cmd(b"get lz\r\n", b"END\r\n") == b"VALUE lz 7 5\r\nhello\r\nEND\r\n"
    assert conn.get("lz") == b"x"
    assert conn.get("lz") == b"y"
    assert conn.cmd(b"verbosity %s1\r\n" % ZEROS) == b"OK\r\n"
    assert conn.set("lz", b"z") == b"STORED\r\n"
    assert conn.cmd(b"delete lz %s\r\n" % ZEROS) == b"DELETED\r\n"
    assert conn.cmd(b"stats queue\r\n", b"END\r\n") == b"END\r\n"


def test_zero_padded_numbers_out_of_range_are_refused_and_swallow_the_block(conn):
    assert conn.set("lzr", b"keepme") == b"STORED\r\n"
    # flags above 2^32 - 1: refused, and the 5-byte block "get lzr" is
    # swallowed with it rather than run
    line = b"set lzr %s4294967296 0 %s7\r\nget lzr\r\n" % (ZEROS, ZEROS)
    assert (conn.cmd(line + b"version\r\n", b"VERSION 0.1.0\r\n")
            == b"CLIENT_ERROR bad command line format\r\nVERSION 0.1.0\r\n")
    assert conn.cmd(b"delete lzr %s1\r\n" % ZEROS) == b"CLIENT_ERROR bad command line format\r\n"
    assert conn.get("lzr") == b"keepme"


def test_multi_get_one_message_per_queue_in_named_order(conn):
    assert conn.set("q1", b"one-a", flags=1) == b"STORED\r\n"
    assert conn.set("q1", b"one-b", flags=2) == b"STORED\r\n"
    assert conn.set("q3", b"three", flags=3) == b"STORED\r\n"
    # q2 never existed; order of VALUE blocks follows the order named
    assert conn.cmd(b"get q3 q2 q1\r\n", b"END\r\n") == (
        b"VALUE q3 3 5\r\nthree\r\nVALUE q1 1 5\r\none-a\r\nEND\r\n")
    assert conn.cmd(b"get q1 q2 q3\r\n", b"END\r\n") == b"VALUE q1 2 5\r\none-b\r\nEND\r\n"
    assert conn.cmd(b"get q1 q2 q3\r\n", b"END\r\n") == b"END\r\n"
    assert conn.stats_queue_raw() == b"STAT q1 2/2\r\nSTAT q3 1/1\r\nEND\r\n"


def test_multi_get_with_a_big_message_after_small_ones(conn):
    """The messages of one get share a buffer that grows for a big one: the
    small ones read before it must come back intact, in order."""
    big = bytes(range(256)) * 300                    # 76,800 bytes
    assert conn.set("mgs", b"small-1", flags=1) == b"STORED\r\n"
    assert conn.set("mgs", b"small-2", flags=2) == b"STORED\r\n"
    assert conn.set("mgb", big, flags=3) == b"STORED\r\n"
    conn.send(b"get mgs mgs mgb mgs\r\n")
    assert conn.read_values() == [("mgs", 1, b"small-1"), ("mgs", 2, b"small-2"), ("mgb", 3, big)]
    assert conn.stats_queue_raw() == b"STAT mgb 1/1\r\nSTAT mgs 2/2\r\nEND\r\n"


def test_gets_has_cas_field(conn):
    for body in (b"first", b"second", b"third"):
        assert conn.set("gq", body) == b"STORED\r\n"
    assert conn.set("gother", b"x") == b"STORED\r\n"
    conn.send(b"gets gq\r\n")
    v1 = conn.read_values(with_cas=True)
    conn.send(b"gets gq gempty gother\r\n")
    v2 = conn.read_values(with_cas=True)
    conn.send(b"gets gq\r\n")
    v3 = conn.read_values(with_cas=True)
    assert [v[:3] for v in v1] == [("gq", 0, b"first")]
    assert [v[:3] for v in v2] == [("gq", 0, b"second"), ("gother", 0, b"x")]
    assert [v[:3] for v in v3] == [("gq", 0, b"third")]
    cas = [v1[0][3], v2[0][3], v3[0][3]]
    # the cas is the message sequence: increasing along one queue
    assert cas[0] < cas[1] < cas[2], cas
    assert all(c >= 0 for c in cas)
    assert conn.cmd(b"gets gq\r\n", b"END\r\n") == b"END\r\n"


def test_gets_line_format(conn):
    assert conn.set("gf", b"abc", flags=7) == b"STORED\r\n"
    line = conn.cmd(b"gets gf\r\n")
    parts = line[:-2].split(b" ")
    assert parts[:4] == [b"VALUE", b"gf", b"7", b"3"] and len(parts) == 5, line
    assert parts[4].isdigit(), line
    assert conn.read_until(b"END\r\n") == b"abc\r\nEND\r\n"


def test_delete_queue(conn):
    for body in (b"a", b"b", b"c"):
        assert conn.set("dq", body) == b"STORED\r\n"
    assert conn.set("keep", b"k") == b"STORED\r\n"
    assert conn.cmd(b"delete dq\r\n") == b"DELETED\r\n"
    assert conn.cmd(b"delete dq\r\n") == b"NOT_FOUND\r\n"
    assert conn.stats_queue_raw() == b"STAT keep 1/0\r\nEND\r\n"
    assert conn.cmd(b"get dq\r\n", b"END\r\n") == b"END\r\n"
    # the "0" time argument form
    assert conn.cmd(b"delete keep 0\r\n") == b"DELETED\r\n"
    assert conn.cmd(b"delete keep 0\r\n") == b"NOT_FOUND\r\n"
    assert conn.stats_queue_raw() == b"END\r\n"
    assert conn.cmd(b"get keep\r\n", b"END\r\n") == b"END\r\n"
    # a deleted queue can be used again and holds only new messages
    assert conn.set("dq", b"new") == b"STORED\r\n"
    assert conn.cmd(b"get dq\r\n", b"END\r\n") == b"VALUE dq 0 3\r\nnew\r\nEND\r\n"
    assert conn.cmd(b"get dq\r\n", b"END\r\n") == b"END\r\n"


def test_delete_unknown_queue(conn):
    assert conn.cmd(b"delete nothing_here\r\n") == b"NOT_FOUND\r\n"


def test_noreply_set_and_delete(conn):
    conn.send(b"set nr 0 0 5 noreply\r\nhello\r\n")
    conn.send(b"set nr 9 0 5 noreply\r\nworld\r\n")
    # the next reply on the wire must be the version's: nothing was sent for the sets
    assert conn.cmd(b"version\r\n") == b"VERSION 0.1.0\r\n"
    assert conn.stats_queue_raw() == b"STAT nr 2/0\r\nEND\r\n"
    assert conn.cmd(b"get nr\r\n", b"END\r\n") == b"VALUE nr 0 5\r\nhello\r\nEND\r\n"
    conn.send(b"delete nr noreply\r\n")
    assert conn.cmd(b"version\r\n") == b"VERSION 0.1.0\r\n"
    assert conn.stats_queue_raw() == b"END\r\n"
    assert conn.cmd(b"get nr\r\n", b"END\r\n") == b"END\r\n"
    # "delete <q> 0 noreply" and noreply on a missing queue are silent too
    conn.send(b"set nr2 0 0 1 noreply\r\nx\r\n")
    conn.send(b"delete nr2 0 noreply\r\n")
    conn.send(b"delete nr2 noreply\r\n")
    assert conn.cmd(b"version\r\n") == b"VERSION 0.1.0\r\n"
    assert conn.stats_queue_raw() == b"END\r\n"
    conn.expect_silence()


def test_verbosity_and_admin_commands(conn):
    assert conn.cmd(b"verbosity 1\r\n") == b"OK\r\n"
    assert conn.cmd(b"verbosity 0\r\n") == b"OK\r\n"
    conn.send(b"verbosity 0 noreply\r\n")
    assert conn.cmd(b"db_checkpoint\r\n") == b"OK\r\n"
    assert conn.cmd(b"db_archive\r\n") == b"OK\r\n"
    assert conn.cmd(b"version\r\n") == b"VERSION 0.1.0\r\n"


def test_quit_closes_connection(daemon):
    with daemon.client() as c:
        assert c.set("qq", b"v") == b"STORED\r\n"
        c.send(b"quit\r\n")
        assert c.read_to_close() == b""
    with daemon.client() as c:
        assert c.get("qq") == b"v"
