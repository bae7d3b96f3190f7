"""stats, stats reset and stats queue."""

import time

STAT_NAMES = ["pid", "uptime", "time", "version", "pointer_size", "rusage_user",
              "rusage_system", "curr_connections", "total_connections",
              "connection_structures", "get_cmds", "get_hits", "set_cmds", "set_hits",
              "bytes_read", "bytes_written", "threads"]

INT_STATS = ["pid", "uptime", "time", "pointer_size", "curr_connections",
             "total_connections", "connection_structures", "get_cmds", "get_hits",
             "set_cmds", "set_hits", "bytes_read", "bytes_written", "threads"]


def test_stats_names_and_values(daemon):
    with daemon.client() as c:
        raw = c.cmd(b"stats\r\n", b"END\r\n")
        assert raw.endswith(b"\r\nEND\r\n")
        lines = raw.split(b"\r\n")[:-2]
        assert all(l.startswith(b"STAT ") for l in lines), raw
        st = {}
        for l in lines:
            _, name, value = l.decode().split(" ", 2)
            assert name not in st, "duplicate stat %s" % name
            st[name] = value
        missing = [n for n in STAT_NAMES if n not in st]
        assert not missing, "missing stats %s in %r" % (missing, raw)
        for n in INT_STATS:
            assert st[n].isdigit(), "%s=%r is not an unsigned integer" % (n, st[n])
        assert int(st["pid"]) == daemon.pid
        assert st["version"] == "0.1.0"
        assert int(st["pointer_size"]) in (32, 64)
        assert abs(int(st["time"]) - time.time()) < 60
        assert int(st["uptime"]) < 600
        assert int(st["curr_connections"]) >= 1
        assert int(st["total_connections"]) >= int(st["curr_connections"])
        assert int(st["threads"]) >= 1
        for n in ("rusage_user", "rusage_system"):
            float(st[n])  # "seconds.microseconds"
        assert int(st["set_cmds"]) == 0 and int(st["get_cmds"]) == 0


def test_counters_move(daemon):
    with daemon.client() as c:
        before = c.stats()
        for i in range(3):
            assert c.set("cm", b"v%d" % i) == b"STORED\r\n"
        assert c.get("cm") == b"v0"
        assert c.get("cm") == b"v1"
        assert c.get("cm") == b"v2"
        assert c.get("cm") is None
        after = c.stats()
        assert int(after["set_cmds"]) - int(before["set_cmds"]) == 3
        assert int(after["get_hits"]) - int(before["get_hits"]) == 3
        assert int(after["get_cmds"]) - int(before["get_cmds"]) == 4
        assert int(after["bytes_read"]) > int(before["bytes_read"])
        assert int(after["bytes_written"]) > int(before["bytes_written"])
        # curr/total connections see a second client
        with daemon.client() as c2:
            assert c2.cmd(b"version\r\n") == b"VERSION 0.1.0\r\n"
            during = c.stats()
            assert int(during["curr_connections"]) >= int(after["curr_connections"]) + 1
            assert int(during["total_connections"]) > int(after["total_connections"])


def test_stats_reset(daemon):
    with daemon.client() as c:
        for i in range(5):
            assert c.set("sr", b"x" * 100) == b"STORED\r\n"
        for i in range(2):
            assert c.get("sr") == b"x" * 100
        before = c.stats()
        assert int(before["set_cmds"]) == 5 and int(before["get_hits"]) == 2
        assert c.cmd(b"stats reset\r\n") == b"RESET\r\n"
        after = c.stats()
        for n in ("set_cmds", "get_cmds", "get_hits", "set_hits"):
            assert int(after[n]) == 0, "%s=%s after stats reset" % (n, after[n])
        assert int(after["bytes_read"]) < int(before["bytes_read"])
        assert int(after["bytes_written"]) < int(before["bytes_written"])
        # queue counters are not reset
        assert c.stats_queue_raw() == b"STAT sr 5/2\r\nEND\r\n"
        assert c.get("sr") == b"x" * 100
        assert int(c.stats()["get_hits"]) == 1


def _stats_block(c):
    out = {}
    while True:
        line = c.read_line()
        if line == b"END\r\n":
            return out
        _, name, value = line.decode().split(" ", 2)
        out[name] = value.strip()


def test_stats_in_a_pipeline_count_only_what_came_before(daemon):
    """Counters followed parse time, so a pipelined "stats" counted requests
    sent after it, and "stats reset" followed by a set and a get left
    set_hits and get_hits above set_cmds and get_cmds."""
    with daemon.client() as c:
        assert c.cmd(b"stats reset\r\n") == b"RESET\r\n"
        c.send(b"stats\r\nget pa\r\nget pb\r\nset pq 0 0 1\r\nx\r\n")
        first = _stats_block(c)
        assert c.read_line() == b"END\r\n" and c.read_line() == b"END\r\n"
        assert c.read_line() == b"STORED\r\n"
        assert (first["get_cmds"], first["set_cmds"]) == ("0", "0"), first
        c.send(b"stats reset\r\nset pq 0 0 1\r\ny\r\nget pq\r\nstats\r\n")
        assert c.read_line() == b"RESET\r\n"
        assert c.read_line() == b"STORED\r\n"
        assert c.read_values() == [("pq", 0, b"x")]
        after = _stats_block(c)
        assert (after["set_cmds"], after["set_hits"]) == ("1", "1"), after
        assert (after["get_cmds"], after["get_hits"]) == ("1", "1"), after


def test_stats_queue_sorted_by_name(daemon):
    with daemon.client() as c:
        for q in (b"qb", b"qa", b"qc", b"Z", b"q-a"):
            assert c.cmd(b"set %s 0 0 1\r\n1\r\n" % q) == b"STORED\r\n"
        assert c.cmd(b"set qa 0 0 1\r\n2\r\n") == b"STORED\r\n"
        assert c.get("qc") == b"1"
        want = b"".join(b"STAT %s\r\n" % l for l in sorted(
            [b"qb 1/0", b"qa 2/0", b"qc 1/1", b"Z 1/0", b"q-a 1/0"]))
        assert c.stats_queue_raw() == want + b"END\r\n"


def test_stats_queue_not_truncated_with_many_queues(daemon):
    n = 400
    names = [b"queue-with-a-long-name-%04d" % i for i in range(n)]
    with daemon.client() as c:
        c.send(b"".join(b"set %s 0 0 1\r\nx\r\n" % q for q in names))
        assert c.read_exact(8 * n) == b"STORED\r\n" * n
        raw = c.stats_queue_raw()
        assert len(raw) > 4096
        assert raw == b"".join(b"STAT %s 1/0\r\n" % q for q in sorted(names)) + b"END\r\n"


def _fill(c, queues):
    for q, (n_set, n_get) in queues.items():
        for i in range(n_set):
            assert c.set(q, b"%s-%d" % (q.encode(), i)) == b"STORED\r\n"
        for i in range(n_get):
            assert c.get(q) == b"%s-%d" % (q.encode(), i)


def test_queue_counters_persist_across_sigterm_restart(make_daemon):
    d = make_daemon(["-N"])
    with d.client() as c:
        _fill(c, {"pa": (3, 1), "pb": (2, 2), "pc": (1, 0)})
        assert c.stats_queue_raw() == b"STAT pa 3/1\r\nSTAT pb 2/2\r\nSTAT pc 1/0\r\nEND\r\n"
    d.restart()   # asserts exit code 0
    with d.client() as c:
        assert c.stats_queue_raw() == b"STAT pa 3/1\r\nSTAT pb 2/2\r\nSTAT pc 1/0\r\nEND\r\n"
        assert c.set("pa", b"more") == b"STORED\r\n"
        assert c.get("pa") == b"pa-1"
        assert c.stats_queue_raw() == b"STAT pa 4/2\r\nSTAT pb 2/2\r\nSTAT pc 1/0\r\nEND\r\n"


def test_queue_counters_persist_across_kill9_durable(make_daemon):
    d = make_daemon([])   # durable: STORED only after fsync
    with d.client() as c:
        _fill(c, {"ka": (4, 3), "kb": (1, 0)})
        assert c.stats_queue_raw() == b"STAT ka 4/3\r\nSTAT kb 1/0\r\nEND\r\n"
    d.kill9()
    d.start()
    with d.client() as c:
        assert c.stats_queue_raw() == b"STAT ka 4/3\r\nSTAT kb 1/0\r\nEND\r\n"
        assert c.get("ka") == b"ka-3"
        assert c.get("kb") == b"kb-0"
        assert c.stats_queue_raw() == b"STAT ka 4/4\r\nSTAT kb 1/1\r\nEND\r\n"
