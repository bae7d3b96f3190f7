"""Bad environments: a state directory holding garbage under Berkeley DB's file
names, a read-only one, truncated database or log files, two daemons on one
home.  Each must end in a clear error and a non-zero exit, or in a recovery
that serves correctly; never in a crash (death by a signal) or a hang."""

import os
import random
import signal
import subprocess
import time

import pytest

from conftest import mounted_tmpfs

START_LIMIT = 20.0


def outcome(d, limit=START_LIMIT):
    """Starts `d` (not waiting) and returns ("exit", code, stderr) or
    ("serving", None, stderr) once it answers a request.  The daemon binds its
    port before it opens the store, so an accepted connection alone proves
    nothing: a request has to be answered."""
    d.start(wait=False)
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        rc = d.proc.poll()
        if rc is not None:
            d.stop()                          # closes the log file
            return "exit", rc, d.stderr()
        try:
            with d.client(timeout=3) as c:
                if c.cmd(b"version\r\n").startswith(b"VERSION "):
                    return "serving", None, d.stderr()
        except (OSError, EOFError, TimeoutError):
            pass
        time.sleep(0.05)
    d.kill9()
    pytest.fail("the daemon neither served nor exited within %.0f s\n%s"
                % (limit, d.stderr()[-2000:]))


def last_line(text):
    """The daemon's last line (a LeakSanitizer run with suppressions may add
    its own summary after it)."""
    lines = [l for l in text.splitlines() if l.startswith("memcacheq: ")]
    return lines[-1] if lines else ""


def check_refusal_or_recovery(d, names):
    """The verdict every damaged home must get: a clear error and status > 0,
    or a daemon that serves correctly and stops cleanly."""
    kind, rc, err = outcome(d)
    if kind == "exit":
        assert rc > 0, "killed by signal %d (a crash)\n%s" % (-rc, err[-3000:])
        line = last_line(err)
        assert line.startswith("memcacheq: ") and "warning" not in line, \
            "no final error line: %r" % line
        assert any(n in err for n in names) or "recover" in line.lower(), \
            "the error does not name the problem (%s): %r" % (", ".join(names), line)
        cores = [p for p in os.listdir(d.home) if p.startswith("core")]
        assert not cores, cores
        return "refused: " + line
    with d.client() as c:
        c.queue_counters()
        assert c.set("after", b"recovered") == b"STORED\r\n"
        assert c.get("after") == b"recovered"
    rc = d.stop()
    assert rc == 0, "exit code %r after SIGTERM\n%s" % (rc, d.stderr()[-3000:])
    return "recovered"


def populate(make_daemon, home, n=300):
    """A real environment with n messages in queue tq, stopped cleanly."""
    d = make_daemon([], home=home)
    with d.client() as c:
        c.send(b"".join(b"set tq 0 0 1000\r\n%s\r\n" % (b"%05d" % i * 200) for i in range(n)))
        assert c.read_exact(8 * n) == b"STORED\r\n" * n
    assert d.stop() == 0
    return d


# --------------------------------------------------------------------------------------
# garbage under BDB names
# --------------------------------------------------------------------------------------

GARBAGE = {
    "queues-db-random": {"queues.db": 8192},
    "messages-db-random": {"messages.db": 100000},
    "purge-db-random": {"purge.db": 4096},
    "queues-db-empty": {"queues.db": 0},
    "log-random": {"log.0000000001": 50000},
    "log-empty": {"log.0000000001": 0},
    "log-random-late-number": {"log.0000000007": 20000},
    "region-file-random": {"__db.001": 10000},
    "all-random": {"queues.db": 8192, "messages.db": 8192, "purge.db": 8192,
                   "log.0000000001": 8192},
}


@pytest.mark.parametrize("case", list(GARBAGE))
def test_garbage_named_like_bdb_files(make_daemon, tmp_path, case):
    home = tmp_path / "home"
    home.mkdir()
    rnd = random.Random(case)
    for name, size in GARBAGE[case].items():
        (home / name).write_bytes(rnd.randbytes(size))
    d = make_daemon(["-N"], home=home, start=False)
    print(case, "->", check_refusal_or_recovery(d, list(GARBAGE[case])))


def test_unrelated_files_in_home_are_left_alone(make_daemon, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "README").write_text("not a database\n")
    d = make_daemon(["-N"], home=home, start=False)
    assert check_refusal_or_recovery(d, ["README"]) == "recovered"
    assert (home / "README").read_text() == "not a database\n"


# --------------------------------------------------------------------------------------
# truncated files of a real environment
# --------------------------------------------------------------------------------------

TRUNCATIONS = [("messages.db", 0.5), ("messages.db", 1000), ("queues.db", 4096),
               ("queues.db", 0), ("purge.db", 0), ("log.0000000001", 0.5),
               ("log.0000000001", 100)]


@pytest.mark.parametrize("name, size", TRUNCATIONS,
                         ids=["%s-%s" % t for t in TRUNCATIONS])
def test_truncated_file(make_daemon, tmp_path, name, size):
    home = tmp_path / "home"
    d = populate(make_daemon, home)
    path = home / name
    full = path.stat().st_size
    path.write_bytes(path.read_bytes()[:int(full * size) if isinstance(size, float) else size])
    # (a cut log shows as "past end of log" in Berkeley DB's own words)
    verdict = check_refusal_or_recovery(d, [name] + (["end of log"] if "log" in name else []))
    print("%s %d -> %s bytes: %s" % (name, full, size, verdict))


def test_truncated_log_tail_recovers_every_message(make_daemon, tmp_path):
    """Losing the end of the last log file is what a crash mid-write looks
    like, and the data files are complete after a clean stop: recovery must
    keep every message."""
    home = tmp_path / "home"
    d = populate(make_daemon, home)
    log = home / "log.0000000001"
    log.write_bytes(log.read_bytes()[:log.stat().st_size // 2])
    d.start()
    with d.client() as c:
        bodies = c.drain("tq", 1000)
    assert bodies == [b"%05d" % i * 200 for i in range(300)]


# --------------------------------------------------------------------------------------
# read-only state directory
# --------------------------------------------------------------------------------------

@pytest.fixture
def tmpfs_dir(tmp_path):
    with mounted_tmpfs(tmp_path / "ro", "8m",
                       "needs root to mount a tmpfs (chmod does not stop root)") as mnt:
        yield mnt


def remount(mnt, how):
    res = subprocess.run(["mount", "-o", "remount," + how, str(mnt)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("where", ["home-itself", "home-to-create", "existing-env"])
def test_read_only_home(tmpfs_dir, make_daemon, where):
    home = tmpfs_dir if where == "home-itself" else tmpfs_dir / "home"
    if where == "existing-env":
        populate(make_daemon, home, n=10)
    remount(tmpfs_dir, "ro")
    d = make_daemon(["-N"], home=home, start=False)
    kind, rc, err = outcome(d)
    assert kind == "exit", "served from a read-only home"
    assert rc == 1, "exit code %r\n%s" % (rc, err)
    line = last_line(err)
    assert str(home) in line and "read-only" in line.lower(), line
    remount(tmpfs_dir, "rw")          # so that teardown can clean up


# --------------------------------------------------------------------------------------
# two daemons, one home
# --------------------------------------------------------------------------------------

def test_second_daemon_on_same_home_refuses(make_daemon, tmp_path):
    home = tmp_path / "home"
    first = make_daemon(["-N"], home=home)
    with first.client() as c:
        assert c.set("shared", b"one") == b"STORED\r\n"
    second = make_daemon(["-N"], home=home, start=False)
    kind, rc, err = outcome(second)
    assert kind == "exit" and rc == 1, (kind, rc, err)
    line = last_line(err)
    assert "already in use" in line and str(home) in line, line
    assert "pid %d" % first.pid in line, line
    # the first is unharmed
    with first.client() as c:
        assert c.get("shared") == b"one"
    assert first.stop(signal.SIGTERM) == 0


def test_second_daemon_refuses_after_lock_file_deleted(make_daemon, tmp_path):
    """The exclusion holds even when memcacheq.lock is deleted under a running
    daemon: the second one still refuses, and the first keeps every message."""
    home = tmp_path / "home"
    first = make_daemon([], home=home)
    with first.client() as c:
        c.send(b"".join(b"set shared 0 0 4\r\nm%03d\r\n" % i for i in range(200)))
        assert c.read_exact(8 * 200) == b"STORED\r\n" * 200
    (home / "memcacheq.lock").unlink()
    second = make_daemon([], home=home, start=False)
    kind, rc, err = outcome(second)
    assert kind == "exit" and rc == 1, (kind, rc, err[-2000:])
    line = last_line(err)
    assert "already in use" in line and str(home) in line, line
    with first.client() as c:
        assert c.set("shared", b"last") == b"STORED\r\n"
        bodies = c.drain("shared", 1000)
    assert bodies == [b"m%03d" % i for i in range(200)] + [b"last"]
    assert first.stop(signal.SIGTERM) == 0
    first.start()
    with first.client() as c:
        assert c.queue_counters()["shared"] == (201, 201)
