"""Files of a store removed, emptied or cut: the daemon either refuses with one
line naming the file and what to do (exit 1), or recovers and warns with what
it found; it never starts on less than it had without saying so."""

import os
import shutil

import pytest

from test_bad_env import last_line, outcome

N = 300
BODIES = [b"%05d" % i * 200 for i in range(N)]


def fill(make_daemon, home, args=(), kill=False):
    """N acknowledged 1000-byte messages in queue tq; then a clean stop or kill -9."""
    d = make_daemon(list(args), home=home)
    with d.client() as c:
        c.send(b"".join(b"set tq 0 0 1000\r\n%s\r\n" % b for b in BODIES))
        assert c.read_exact(8 * N) == b"STORED\r\n" * N
    if kill:
        d.kill9()
    else:
        assert d.stop() == 0
    return d


def refused(d):
    kind, rc, err = outcome(d)
    assert kind == "exit" and rc == 1, (kind, rc, err[-3000:])
    return last_line(err)


def serves(d):
    kind, rc, err = outcome(d)
    assert kind == "serving", (kind, rc, err[-3000:])
    return err


def logs(home):
    return sorted(home.glob("log.*"))


def test_queues_db_removed_rebuilds_the_queue_from_messages(make_daemon, tmp_path):
    home = tmp_path / "home"
    d = fill(make_daemon, home)
    (home / "queues.db").unlink()
    err = serves(d)
    assert "300 messages in messages.db belonged to no queue" in err, err
    assert "recovered.1" in err, err
    with d.client() as c:
        assert c.queue_counters() == {"recovered.1": (300, 0)}
        assert c.drain("recovered.1", 1000) == BODIES
        assert c.set("tq", b"new") == b"STORED\r\n"
    assert d.stop() == 0
    d.start()
    with d.client() as c:
        assert c.queue_counters() == {"recovered.1": (300, 300), "tq": (1, 0)}


def test_older_queues_db_is_widened_to_every_message(make_daemon, tmp_path):
    home = tmp_path / "home"
    d = make_daemon([], home=home)
    with d.client() as c:
        for b in BODIES[:100]:
            assert c.set("tq", b) == b"STORED\r\n"
        assert c.get("tq") == BODIES[0]
    assert d.stop() == 0
    shutil.copy(home / "queues.db", tmp_path / "queues.db.old")
    d.start()
    with d.client() as c:
        for b in BODIES[100:200]:
            assert c.set("tq", b) == b"STORED\r\n"
    assert d.stop() == 0
    shutil.copy(tmp_path / "queues.db.old", home / "queues.db")
    err = serves(d)
    assert "queue tq: 100 messages in messages.db lay outside its record" in err, err
    with d.client() as c:
        assert c.queue_counters() == {"tq": (200, 1)}
        assert c.set("tq", b"last") == b"STORED\r\n"
        assert c.drain("tq", 1000) == BODIES[1:200] + [b"last"]


@pytest.mark.parametrize("how", ["removed", "emptied", "cut"])
def test_messages_db_lost_refuses(make_daemon, tmp_path, how):
    home = tmp_path / "home"
    d = fill(make_daemon, home)
    path = home / "messages.db"
    if how == "removed":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[:0 if how == "emptied" else 1000])
    line = refused(d)
    if how == "removed":
        assert "messages.db lacks 300 of the 300 messages that queues.db lists" in line, line
    elif how == "emptied":
        assert "messages.db is empty (0 bytes)" in line, line
    else:
        assert "messages.db is cut short (1000 bytes, less than its first page)" in line, line
    assert "Restore it from a backup" in line or "restore it from a backup" in line, line


def test_logs_removed_after_clean_stop_keeps_everything(make_daemon, tmp_path):
    home = tmp_path / "home"
    d = fill(make_daemon, home)
    for f in logs(home):
        f.unlink()
    err = serves(d)
    assert "stopped cleanly, so the database files hold every message" in err, err
    with d.client() as c:
        assert c.queue_counters() == {"tq": (300, 0)}
        assert c.drain("tq", 1000) == BODIES
    assert d.stop() == 0


def test_logs_removed_after_kill_refuses_until_the_loss_is_accepted(make_daemon, tmp_path):
    home = tmp_path / "home"
    d = fill(make_daemon, home, kill=True)
    for f in logs(home):
        f.unlink()
    line = refused(d)
    assert "the log files (log.*) are missing" in line, line
    assert "did not stop cleanly" in line and "memcacheq.state" in line, line
    assert refused(d) == line                 # refusing changed nothing
    (home / "memcacheq.state").rename(tmp_path / "memcacheq.state")
    err = serves(d)
    assert "started from the database files alone" in err, err
    with d.client() as c:
        left = c.queue_counters().get("tq", (0, 0))
        assert c.drain("tq", 1000) == BODIES[:left[0]]


@pytest.mark.parametrize("args", [[], ["-N"]], ids=["durable", "nosync"])
def test_log_cut_after_kill_refuses(make_daemon, tmp_path, args):
    home = tmp_path / "home"
    d = fill(make_daemon, home, args, kill=True)
    log = logs(home)[-1]
    data = log.read_bytes()
    used = len(data.rstrip(b"\0"))           # durable mode zero-fills its log files
    log.write_bytes(data[:used // 4])
    line = refused(d)
    assert "the log ends at %s offset" % log.name in line, line
    assert "did not stop cleanly" in line and "memcacheq.state" in line, line
    (home / "memcacheq.state").rename(tmp_path / "memcacheq.state")
    serves(d)
    with d.client() as c:
        enq, deq = c.queue_counters().get("tq", (0, 0))
        assert c.drain("tq", 1000) == BODIES[:enq]


@pytest.mark.parametrize("kill", [False, True], ids=["stopped", "killed"])
def test_home_of_an_older_memcacheq_opens_unchanged(make_daemon, tmp_path, kill):
    """A home without memcacheq.state, as older memcacheq versions leave it
    (MEMCACHEQ_BASE_BIN, if set, names such a binary to make it with), opens
    with every message and counter and no warning about its files."""
    home = tmp_path / "home"
    maker = make_daemon([], home=home, start=False)
    maker.binary = os.environ.get("MEMCACHEQ_BASE_BIN", maker.binary)
    maker.start()
    with maker.client() as c:
        c.send(b"".join(b"set %s 0 0 7\r\n%s%05d\r\n" % (q, q, i)
                        for q in (b"qa", b"qb", b"qc") for i in range(200)))
        assert c.read_exact(8 * 600) == b"STORED\r\n" * 600
        for i in range(37):
            assert c.get("qa") == b"qa%05d" % i
        assert c.cmd(b"delete qc\r\n") == b"DELETED\r\n"
    if kill:
        maker.kill9()
    else:
        assert maker.stop() == 0
    (home / "memcacheq.state").unlink(missing_ok=True)
    d = make_daemon([], home=home, start=False)
    err = serves(d)
    assert "missing" not in err and "messages.db" not in err, err
    with d.client() as c:
        assert c.queue_counters() == {"qa": (200, 37), "qb": (200, 0)}
        assert c.drain("qa", 1000) == [b"qa%05d" % i for i in range(37, 200)]
        assert c.drain("qb", 1000) == [b"qb%05d" % i for i in range(200)]
    assert d.stop() == 0
