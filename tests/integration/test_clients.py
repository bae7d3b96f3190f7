"""Unmodified third-party clients: pymemcache and libmemcached's memccp/memccat."""

import shutil
import subprocess

from pymemcache.client.base import Client

from conftest import clean_env


def _client(daemon):
    return Client(("127.0.0.1", daemon.port), connect_timeout=10, timeout=10)


def _norm(d):
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}


def test_pymemcache(daemon):
    cl = _client(daemon)
    try:
        # default noreply=True: pymemcache sends "noreply" and returns True without waiting
        assert cl.set("pq", b"first") is True
        assert cl.set("pq", b"second", noreply=False) is True
        assert cl.set("pq", "third") is True
        assert cl.get("pq") == b"first"
        assert cl.get("pq") == b"second"
        assert cl.get("pq") == b"third"
        assert cl.get("pq") is None

        assert cl.set("pm1", b"one", noreply=False) is True
        assert cl.set("pm3", b"three", noreply=False) is True
        got = _norm(cl.get_many(["pm1", "pm2", "pm3"]))
        assert got == {"pm1": b"one", "pm3": b"three"}
        assert _norm(cl.get_many(["pm1", "pm2", "pm3"])) == {}

        assert cl.set("pd", b"x") is True
        assert cl.delete("pd", noreply=False) is True
        assert cl.delete("pd", noreply=False) is False
        assert cl.set("pd2", b"y") is True
        assert cl.delete("pd2") is True          # noreply by default
        assert cl.get("pd2") is None

        st = _norm(cl.stats())
        assert int(st["pid"]) == daemon.pid
        assert int(st["curr_connections"]) >= 1
        assert int(st["set_cmds"]) >= 7
        qst = _norm(cl.stats("queue"))
        assert qst["pq"] in (b"3/3", "3/3")
        assert "pd" not in qst and "pd2" not in qst
        assert cl.version() == b"0.1.0"
    finally:
        cl.close()


def test_pymemcache_flags_and_binary(daemon):
    cl = _client(daemon)
    try:
        body = bytes(range(256)) * 4
        assert cl.set("pb", body, noreply=False, flags=4294967295) is True
        res = cl.gets("pb")
        assert res[0] == body and res[1] is not None
        assert cl.get("pb") is None
    finally:
        cl.close()


def test_memccp_memccat(daemon, tmp_path):
    memccp = shutil.which("memccp") or "/usr/bin/memccp"
    memccat = shutil.which("memccat") or "/usr/bin/memccat"
    srv = "--servers=127.0.0.1:%d" % daemon.port
    content = b"line one\nline two\n\x01\x02 binary-ish\n"
    path = tmp_path / "mcq-file.txt"
    path.write_bytes(content)
    r = subprocess.run([memccp, srv, str(path)], capture_output=True, timeout=20,
                       env=clean_env(), cwd=tmp_path)
    assert r.returncode == 0, r
    with daemon.client() as c:
        # stored under the file's basename
        assert c.stats_queue_raw() == b"STAT mcq-file.txt 1/0\r\nEND\r\n"
    r = subprocess.run([memccat, srv, "mcq-file.txt"], capture_output=True, timeout=20,
                       env=clean_env(), cwd=tmp_path)
    assert r.returncode == 0, r
    assert r.stdout in (content, content + b"\n"), r.stdout
    with daemon.client() as c:
        assert c.stats_queue_raw() == b"STAT mcq-file.txt 1/1\r\nEND\r\n"
        assert c.get("mcq-file.txt") is None


def test_pymemcache_noreply_error_does_not_cost_a_message(make_daemon):
    """pymemcache's sets are noreply by default.  A refused noreply set (too
    large for -B) must leave no error line in the stream: pymemcache would
    read it as the reply to its next get, drop that connection, and with it
    the message the get had taken off the queue."""
    d = make_daemon(["-N", "-B", "100"])
    cl = _client(d)
    try:
        assert cl.set("nq", b"x" * 200) is True      # refused, silently (noreply)
        assert cl.set("nq", b"m1") is True
        assert cl.set("nq", b"m2") is True
        assert cl.get("nq") == b"m1"
        assert cl.get("nq") == b"m2"
        assert cl.get("nq") is None
        assert _norm(cl.stats("queue"))["nq"] in (b"2/2", "2/2")
    finally:
        cl.close()
