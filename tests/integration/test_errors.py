"""Every error row of the contract: exact reply, then the same connection keeps working."""

import pytest

BAD_FORMAT = b"CLIENT_ERROR bad command line format\r\n"
VERSION_REPLY = b"VERSION 0.1.0\r\n"


def assert_still_usable(c, key=b"after_err"):
    assert c.cmd(b"version\r\n") == VERSION_REPLY
    assert c.cmd(b"set %s 0 0 2\r\nok\r\n" % key) == b"STORED\r\n"
    assert c.cmd(b"get %s\r\n" % key, b"END\r\n") == b"VALUE %s 0 2\r\nok\r\nEND\r\n" % key


# Bad set lines without a byte count to trust: only the line is sent, and
# nothing after it is consumed.
BAD_SET_LINES = {
    "negative_bytes": b"set q 0 0 -1\r\n",
    "non_numeric_bytes": b"set q 0 0 abc\r\n",
    "bytes_with_junk": b"set q 0 0 5x\r\n",
    "missing_bytes": b"set q 0 0\r\n",
    "missing_exptime_and_bytes": b"set q 0\r\n",
    "only_key": b"set q\r\n",
}

# Bad set lines whose byte count is valid: the client sends the body anyway,
# so it is swallowed with the error.  Each body here ("get q") would be a
# request of its own, with a reply of its own, if it were left in the stream.
BAD_SET_LINES_WITH_BODY = {
    "non_numeric_flags": b"set q abc 0 5\r\n",
    "negative_flags": b"set q -1 0 5\r\n",
    "flags_too_big": b"set q 4294967296 0 5\r\n",
    "non_numeric_exptime": b"set q 0 soon 5\r\n",
    "extra_junk": b"set q 0 0 5 junk\r\n",
    "extra_field": b"set q 0 0 5 noreply junk\r\n",
}


@pytest.mark.parametrize("line", list(BAD_SET_LINES.values()), ids=list(BAD_SET_LINES))
def test_bad_set_line(conn, line):
    assert conn.cmd(line) == BAD_FORMAT
    assert_still_usable(conn)
    # nothing was stored in q
    assert conn.cmd(b"get q\r\n", b"END\r\n") == b"END\r\n"


@pytest.mark.parametrize("line", list(BAD_SET_LINES_WITH_BODY.values()),
                         ids=list(BAD_SET_LINES_WITH_BODY))
def test_bad_set_line_swallows_its_body(conn, line):
    assert conn.cmd(b"set q 0 0 6\r\nkeepme\r\n") == b"STORED\r\n"
    # one reply only: had "get q" run, it would have taken keepme
    assert (conn.cmd(line + b"get q\r\n" + b"version\r\n", VERSION_REPLY)
            == BAD_FORMAT + VERSION_REPLY)
    assert conn.cmd(b"get q\r\n", b"END\r\n") == b"VALUE q 0 6\r\nkeepme\r\nEND\r\n"
    assert_still_usable(conn)


def test_key_of_250_bytes_accepted(conn):
    key = b"k" * 250
    assert conn.cmd(b"set %s 0 0 3\r\nabc\r\n" % key) == b"STORED\r\n"
    assert conn.stats_queue_raw() == b"STAT %s 1/0\r\nEND\r\n" % key
    assert conn.cmd(b"get %s\r\n" % key, b"END\r\n") == b"VALUE %s 0 3\r\nabc\r\nEND\r\n" % key


def test_key_of_251_bytes_rejected_and_body_consumed(conn):
    key = b"k" * 251
    # the body contains a line that would be a valid command if it were not consumed
    assert conn.cmd(b"set %s 0 0 7\r\nversion\r\n" % key) == b"CLIENT_ERROR key too long\r\n"
    assert_still_usable(conn)
    assert conn.stats_queue_raw() == b"STAT after_err 1/1\r\nEND\r\n"


def test_get_with_251_byte_key(conn):
    key = b"k" * 251
    assert conn.cmd(b"get %s\r\n" % key) == b"CLIENT_ERROR key too long\r\n"
    assert_still_usable(conn)


@pytest.mark.parametrize("key", [b"a\x01b", b"esc\x1b", b"del\x7f", b"\x1fx"],
                         ids=["soh", "esc", "del", "unit_sep"])
def test_control_char_key_rejected_and_body_consumed(conn, key):
    reply = conn.cmd(b"set %s 0 0 7\r\nversion\r\n" % key)
    assert reply == b"CLIENT_ERROR key contains control characters\r\n"
    assert_still_usable(conn)
    assert conn.stats_queue_raw() == b"STAT after_err 1/1\r\nEND\r\n"


def test_oversize_body_swallowed(make_daemon):
    d = make_daemon(["-N", "-B", "100"])
    with d.client() as c:
        body = (b"version\r\n" * 12)[:101]
        assert len(body) == 101
        assert (c.cmd(b"set big 0 0 101\r\n" + body + b"\r\n")
                == b"SERVER_ERROR object too large for cache\r\n")
        assert_still_usable(c)
        assert c.cmd(b"get big\r\n", b"END\r\n") == b"END\r\n"


def test_body_longer_than_declared(conn):
    assert conn.cmd(b"set q 0 0 3\r\nhello\r\n") == b"CLIENT_ERROR bad data chunk\r\n"
    assert_still_usable(conn)
    assert conn.cmd(b"get q\r\n", b"END\r\n") == b"END\r\n"


def test_body_shorter_than_declared(conn):
    # "hello\r\nget" becomes the 10-byte body, " q\r\n" is not CRLF -> bad data chunk,
    # and the server skips through the next \n.
    conn.send(b"set q 0 0 10\r\nhello\r\n")
    conn.send(b"get q\r\n")
    assert conn.read_line() == b"CLIENT_ERROR bad data chunk\r\n"
    assert_still_usable(conn)
    assert conn.cmd(b"get q\r\n", b"END\r\n") == b"END\r\n"
    conn.expect_silence()


def test_unknown_command(conn):
    assert conn.cmd(b"frobnicate q1 q2\r\n") == b"ERROR\r\n"
    assert_still_usable(conn)
    # a cache's storage verbs are unknown here too; a client sends their body with the
    # line, and the whole request gets one ERROR (the body must not run as commands)
    assert conn.cmd(b"add q 0 0 9\r\nversion\r\n\r\n") == b"ERROR\r\n"
    assert conn.cmd(b"version\r\n") == VERSION_REPLY
    assert conn.cmd(b"get q\r\n", b"END\r\n") == b"END\r\n"
    assert conn.stats_queue_raw() == b"STAT after_err 1/1\r\nEND\r\n"


def test_empty_line(conn):
    assert conn.cmd(b"\r\n") == b"ERROR\r\n"
    assert_still_usable(conn)


def test_get_without_key(conn):
    assert conn.cmd(b"get\r\n") == b"ERROR\r\n"
    assert_still_usable(conn)
    assert conn.cmd(b"get \r\n") == b"ERROR\r\n"
    assert conn.cmd(b"version\r\n") == VERSION_REPLY


def test_line_too_long_closes_only_that_connection(daemon):
    other = daemon.client()
    assert other.set("ltl", b"survivor") == b"STORED\r\n"
    c = daemon.client()
    c.send(b"g" * 20000)
    data = c.read_to_close()
    c.close()
    assert data == b"CLIENT_ERROR line too long\r\n"
    # the server is unharmed: an existing connection and a new one both work
    assert other.cmd(b"version\r\n") == VERSION_REPLY
    with daemon.client() as fresh:
        assert_still_usable(fresh)
        assert fresh.get("ltl") == b"survivor"
    other.close()


def test_line_too_long_reply_arrives_before_a_clean_close(daemon):
    # More than one read's worth follows the error: closing with it unread
    # would make the kernel reset the connection and drop the reply.
    c = daemon.client()
    c.send(b"get " + b"k" * 200_000)
    data = b""
    while True:
        chunk = c.sock.recv(4096)   # a reset raises here and fails the test
        if not chunk:
            break
        data += chunk
    c.close()
    assert data == b"CLIENT_ERROR line too long\r\n"


def test_line_of_16384_bytes_is_not_too_long(conn):
    # a line up to the limit is a normal (unknown) command line
    line = b"x" * 16000 + b"\r\n"
    assert conn.cmd(line) == b"ERROR\r\n"
    assert_still_usable(conn)


LINE_MAX = 16384


def _get_line(content, end):
    """A get of queue "lim" padded with spaces to `content` bytes, then `end`."""
    line = b"get lim"
    return line + b" " * (content - len(line)) + end


@pytest.mark.parametrize("end", [b"\n", b"\r\n"], ids=["lf", "crlf"])
def test_line_of_16384_bytes_is_served_whatever_its_terminator(conn, end):
    # The limit is on the line's content, not counting "\r\n" or "\n".
    assert conn.set("lim", b"first") == b"STORED\r\n"
    assert conn.cmd(_get_line(LINE_MAX, end), b"END\r\n") == b"VALUE lim 0 5\r\nfirst\r\nEND\r\n"
    assert_still_usable(conn)


@pytest.mark.parametrize("end", [b"\n", b"\r\n"], ids=["lf", "crlf"])
def test_line_of_16385_bytes_is_too_long_whatever_its_terminator(daemon, end):
    with daemon.client() as c:
        assert c.set("lim", b"kept") == b"STORED\r\n"
        c.send(_get_line(LINE_MAX + 1, end))
        assert c.read_to_close() == b"CLIENT_ERROR line too long\r\n"
    with daemon.client() as fresh:
        assert fresh.get("lim") == b"kept"


def test_delete_with_a_second_name_is_refused_and_keeps_the_queue(conn):
    # "delete <queue> <time>" takes a number; a second queue name is a
    # malformed line, not a request to delete both.
    assert conn.set("dkeep", b"abc") == b"STORED\r\n"
    assert conn.set("dother", b"xyz") == b"STORED\r\n"
    assert conn.cmd(b"delete dkeep dother\r\n") == b"CLIENT_ERROR bad command line format\r\n"
    assert conn.stats_queue_raw() == b"STAT dkeep 1/0\r\nSTAT dother 1/0\r\nEND\r\n"
    assert conn.cmd(b"get dkeep\r\n", b"END\r\n") == b"VALUE dkeep 0 3\r\nabc\r\nEND\r\n"


@pytest.mark.parametrize("line", [b"delete dt 5\r\n", b"delete dt -1\r\n",
                                  b"delete dt 0 noreply extra\r\n"],
                         ids=["delay", "negative", "extra_word"])
def test_delete_with_a_delay_or_extra_words_is_refused_and_keeps_the_queue(conn, line):
    # Only "delete <queue> [0] [noreply]" is understood (memcached dropped
    # delayed deletes too): anything else is a malformed line, and the
    # queue keeps both messages, in order.
    assert conn.set("dt", b"abc") == b"STORED\r\n"
    assert conn.set("dt", b"def") == b"STORED\r\n"
    assert conn.cmd(line) == b"CLIENT_ERROR bad command line format\r\n"
    assert conn.stats_queue_raw() == b"STAT dt 2/0\r\nEND\r\n"
    assert conn.get("dt", "dt") == [("dt", 0, b"abc"), ("dt", 0, b"def")]


@pytest.mark.parametrize("line", [b"flush_all\r\n", b"flush_all 0\r\n", b"flush_all noreply\r\n",
                                  b"touch fq 10\r\n"],
                         ids=["flush_all", "flush_all_delay", "flush_all_noreply", "touch"])
def test_cache_maintenance_commands_are_unknown_and_keep_messages(conn, line):
    # A cache client's flush_all would wipe memcached; here it is an unknown
    # command: ERROR (even with noreply, which we never parsed), nothing lost.
    assert conn.set("fq", b"first") == b"STORED\r\n"
    assert conn.set("fq", b"second") == b"STORED\r\n"
    assert conn.cmd(line) == b"ERROR\r\n"
    assert conn.stats_queue_raw() == b"STAT fq 2/0\r\nEND\r\n"
    assert conn.cmd(b"get fq\r\n", b"END\r\n") == b"VALUE fq 0 5\r\nfirst\r\nEND\r\n"
    assert conn.cmd(b"get fq\r\n", b"END\r\n") == b"VALUE fq 0 6\r\nsecond\r\nEND\r\n"
