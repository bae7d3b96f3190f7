"""-Y/--auth-file: memcached's ASCII authentication.  Until a connection has
sent `set <any> <flags> <exptime> <n>` with the body `user password`, every
request is answered `CLIENT_ERROR unauthenticated` and has no effect; the
credentials file must be private and well-formed or the daemon does not
start."""

import os
import shutil
import signal
import socket
import subprocess
import time

import pytest
from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheClientError

from conftest import IO_TIMEOUT, Conn, clean_env, free_port, pid_listens_on

USER, PASSWORD = "alice", "Zq7-s3cret-pw"
AUTH = b"set auth 0 0 %d\r\n%s %s\r\n" % (len(USER) + 1 + len(PASSWORD),
                                          USER.encode(), PASSWORD.encode())
UNAUTH = b"CLIENT_ERROR unauthenticated\r\n"
FAILURE = b"CLIENT_ERROR authentication failure\r\n"
SSA = shutil.which("systemd-socket-activate") or "/usr/bin/systemd-socket-activate"


def auth_set(user, password, noreply=False):
    body = b"%s %s" % (user.encode(), password.encode())
    return b"set auth 0 0 %d%s\r\n%s\r\n" % (len(body), b" noreply" if noreply else b"", body)


@pytest.fixture
def auth_file(tmp_path):
    path = tmp_path / "mcq-auth"
    path.write_text("ops:other-pw\n%s:%s\n" % (USER, PASSWORD))
    path.chmod(0o600)
    return path


@pytest.fixture
def authd(make_daemon, auth_file):
    return make_daemon(["-N", "--dbus=none", "--auth-file=%s" % auth_file])


def authed_client(daemon):
    c = daemon.client()
    assert c.cmd(AUTH) == b"STORED\r\n"
    return c


def seed_held(daemon):
    """An authenticated connection puts two messages in `held`."""
    with authed_client(daemon) as c:
        assert c.set("held", b"one") == b"STORED\r\n"
        assert c.set("held", b"two") == b"STORED\r\n"
        return c.queue_counters()


def assert_held_untouched(daemon, before):
    with authed_client(daemon) as c:
        assert c.queue_counters() == before
        assert c.drain("held", 2) == [b"one", b"two"]


def start_failure(mcq_bin, tmp_path, args, env=None):
    """Runs the daemon expecting it to refuse to start; returns stderr."""
    proc = subprocess.run([str(mcq_bin), "-H", str(tmp_path / "home"), "-p", str(free_port()),
                           "--dbus=none"] + args,
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=20,
                          env=clean_env(env))
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


# ---- refusals before authentication ------------------------------------------------

REFUSED = [
    b"get held\r\n", b"gets held\r\n", b"get held other\r\n", b"delete held\r\n",
    b"delete held 0\r\n", b"delete held noreply\r\n", b"db_checkpoint\r\n", b"db_archive\r\n",
    b"stats\r\n", b"stats queue\r\n", b"stats reset\r\n", b"version\r\n", b"verbosity 2\r\n",
    b"verbosity 2 noreply\r\n", b"bogus\r\n", b"\r\n", b"quit\r\n", b"get\r\n",
]


def test_every_command_before_auth_is_refused(authd):
    before = seed_held(authd)
    with authd.client() as c:
        for req in REFUSED:
            assert c.cmd(req) == UNAUTH, req
        # quit did not close it, and it authenticates normally afterwards
        assert c.cmd(AUTH) == b"STORED\r\n"
        assert c.cmd(b"version\r\n") == b"VERSION 0.1.0\r\n"
        assert c.cmd(b"stats queue\r\n", b"END\r\n") == b"STAT held 2/0\r\nEND\r\n"
    assert_held_untouched(authd, before)


def test_pipelined_commands_before_auth_are_refused(authd):
    before = seed_held(authd)
    with authd.client() as c:
        c.send(b"".join(REFUSED) + b"delete held\r\nget held\r\n")
        for req in REFUSED + [b"delete held\r\n", b"get held\r\n"]:
            assert c.read_line() == UNAUTH, req
        c.expect_silence()
    assert_held_untouched(authd, before)
    # the auth set and what follows it in the same write: only what follows runs
    seed_held(authd)
    with authd.client() as c:
        c.send(b"get held\r\n" + AUTH + b"get held\r\nstats queue\r\n")
        assert c.read_line() == UNAUTH
        assert c.read_line() == b"STORED\r\n"
        assert c.read_values() == [("held", 0, b"one")]
        assert c.read_until(b"END\r\n") == b"STAT held 4/3\r\nEND\r\n"


def test_set_body_before_auth_is_swallowed(authd):
    before = seed_held(authd)
    inner = b"delete held\r\ndb_checkpoint\r\nget held\r\n"
    with authd.client() as c:
        # a malformed set line with a valid length: its block is skipped unread
        c.send(b"set q x 0 %d\r\n%s\r\n" % (len(inner), inner))
        assert c.read_line() == UNAUTH
        # a block too long to be credentials (over 1 KiB): skipped, not buffered
        big = inner * 200
        c.send(b"set q 0 0 %d\r\n%s\r\n" % (len(big), big))
        assert c.read_line() == UNAUTH
        # a well-formed set is an auth attempt: its block is checked, never run
        c.send(b"set q 0 0 %d\r\n%s\r\n" % (len(inner), inner))
        assert c.read_line() == FAILURE
        # a noreply set is answered all the same
        c.send(b"set q 0 0 %d noreply\r\n%s\r\n" % (len(inner), inner))
        assert c.read_line() == FAILURE
        c.expect_silence()
    assert_held_untouched(authd, before)


def test_wrong_password(authd):
    seed_held(authd)
    with authd.client() as c:
        assert c.cmd(auth_set(USER, PASSWORD + "x")) == FAILURE
        assert c.cmd(b"delete held\r\n") == UNAUTH      # still unauthenticated
        assert c.cmd(auth_set("ops", PASSWORD)) == FAILURE   # another user's password
        assert c.cmd(AUTH) == b"STORED\r\n"              # third try, right password
        assert c.cmd(b"get held\r\n", b"END\r\n") == b"VALUE held 0 3\r\none\r\nEND\r\n"
    with authd.client() as c:
        assert c.cmd(b"set auth 0 0 5\r\nalice\r\n") == \
            b"CLIENT_ERROR bad authentication token format\r\n"
        assert c.cmd(b"get held\r\n") == UNAUTH


def test_connection_closed_after_three_wrong_passwords(authd):
    before = seed_held(authd)
    with authd.client() as c:
        wrong = auth_set(USER, "nope")
        c.send(wrong * 2)
        assert c.read_line() == FAILURE
        assert c.read_line() == FAILURE
        # the third closes it; what was pipelined after it never runs
        c.send(wrong + AUTH + b"delete held\r\n")
        assert c.read_to_close() == FAILURE
    assert_held_untouched(authd, before)


def test_noreply_auth_set_is_silent_on_success(authd):
    with authd.client() as c:
        c.send(auth_set(USER, PASSWORD, noreply=True))
        c.expect_silence()
        assert c.cmd(b"version\r\n") == b"VERSION 0.1.0\r\n"


def test_each_connection_authenticates(authd):
    with authed_client(authd) as a, authd.client() as b:
        assert a.set("q", b"x") == b"STORED\r\n"
        assert b.cmd(b"get q\r\n") == UNAUTH
        assert a.get("q") == b"x"


# ---- clients -----------------------------------------------------------------------

def test_pymemcache(authd):
    before = seed_held(authd)
    # pymemcache's sets are noreply by default: the auth set is answered with nothing
    client = Client(("127.0.0.1", authd.port), timeout=IO_TIMEOUT, connect_timeout=IO_TIMEOUT)
    try:
        assert client.set("auth", "%s %s" % (USER, PASSWORD)) is True
        assert client.set("jobs", b"job-1") is True
        assert client.set("jobs", b"job-2", noreply=False) is True
        assert client.get("jobs") == b"job-1"
        assert client.get("held") == b"one"
        assert client.stats()[b"curr_queues"] == 2
    finally:
        client.close()
    # the same with noreply=False: STORED comes back as True
    client = Client(("127.0.0.1", authd.port), timeout=IO_TIMEOUT, connect_timeout=IO_TIMEOUT)
    try:
        assert client.set("auth", "%s %s" % (USER, PASSWORD), noreply=False) is True
        assert client.get("jobs") == b"job-2"
    finally:
        client.close()


def test_pymemcache_wrong_password(authd):
    before = seed_held(authd)
    client = Client(("127.0.0.1", authd.port), timeout=IO_TIMEOUT, connect_timeout=IO_TIMEOUT)
    try:
        with pytest.raises(MemcacheClientError, match="authentication failure"):
            client.set("auth", "%s wrong" % USER, noreply=False)
        with pytest.raises(MemcacheClientError, match="unauthenticated"):
            client.get("held")
        with pytest.raises(MemcacheClientError, match="unauthenticated"):
            client.delete("held", noreply=False)
    finally:
        client.close()
    assert_held_untouched(authd, before)


# ---- the unix socket and socket activation -------------------------------------------

def test_unix_socket_requires_auth(make_daemon, auth_file, tmp_path):
    path = str(tmp_path / "mcq.sock")
    d = make_daemon(["-N", "--dbus=none", "-s", path, "-p", "0", "-Y", str(auth_file)],
                    start=False)
    d.command = lambda: [d.binary, "-H", str(d.home)] + d.args
    d.start(wait=False)
    deadline = time.monotonic() + 10
    while not os.path.exists(path):
        assert d.running() and time.monotonic() < deadline, d.stderr()
        time.sleep(0.02)
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(IO_TIMEOUT)
    s.connect(path)
    with s:
        f = s.makefile("rwb")
        f.write(b"get q\r\n" + AUTH + b"set q 0 0 1\r\nx\r\nget q\r\n")
        f.flush()
        assert f.readline() == UNAUTH
        assert f.readline() == b"STORED\r\n"
        assert f.readline() == b"STORED\r\n"
        assert f.readline() == b"VALUE q 0 1\r\n"


def test_socket_activation_with_auth(mcq_bin, tmp_path, auth_file):
    errf = open(tmp_path / "ssa.stderr", "wb")
    port = free_port()
    proc = subprocess.Popen([SSA, "-l", "127.0.0.1:%d" % port, str(mcq_bin), "-H",
                             str(tmp_path / "home"), "-N", "--dbus=none", "-Y", str(auth_file)],
                            stdin=subprocess.DEVNULL, stdout=errf, stderr=errf, env=clean_env())
    try:
        deadline = time.monotonic() + 10
        while not pid_listens_on(proc.pid, port):
            assert proc.poll() is None and time.monotonic() < deadline, "activator did not listen"
            time.sleep(0.02)
        with Conn(port) as c:
            assert c.cmd(b"set sa 0 0 3\r\nx y\r\n") == FAILURE   # an auth attempt, wrong
            assert c.cmd(b"get sa\r\n") == UNAUTH
            assert c.cmd(AUTH) == b"STORED\r\n"
            assert c.cmd(b"set sa 0 0 1\r\nx\r\n") == b"STORED\r\n"
            assert c.get("sa") == b"x"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        errf.close()


# ---- the file ------------------------------------------------------------------------

@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o644])
def test_file_open_to_others_is_refused(mcq_bin, tmp_path, auth_file, mode):
    auth_file.chmod(mode)
    line = start_failure(mcq_bin, tmp_path, ["--auth-file=%s" % auth_file])
    assert str(auth_file) in line and "group or others" in line, line
    assert "mode %04o" % mode in line, line
    assert PASSWORD not in line


def test_file_in_credentials_directory_may_show_group_bits(make_daemon, tmp_path):
    creds = tmp_path / "credentials"
    creds.mkdir()
    path = creds / "memcacheq-auth"
    path.write_text("%s:%s\n" % (USER, PASSWORD))
    path.chmod(0o440)
    d = make_daemon(["-N", "--dbus=none", "-Y", str(path)],
                    env={"CREDENTIALS_DIRECTORY": str(creds)})
    with authed_client(d) as c:
        assert c.set("q", b"ok") == b"STORED\r\n"


def test_malformed_line_names_file_and_line(mcq_bin, tmp_path):
    path = tmp_path / "auth"
    path.write_text("%s:%s\n\nno-colon-%s\n" % (USER, PASSWORD, PASSWORD))
    path.chmod(0o600)
    line = start_failure(mcq_bin, tmp_path, ["--auth-file=%s" % path])
    assert line == "memcacheq: -Y/--auth-file: %s, line 3: expected user:password" % path
    path.write_text("%s:two words\n" % USER)
    line = start_failure(mcq_bin, tmp_path, ["-Y", str(path)])
    assert "%s, line 1:" % path in line and "contains a space" in line, line
    assert "words" not in line


def test_missing_or_empty_file(mcq_bin, tmp_path):
    missing = tmp_path / "nope"
    line = start_failure(mcq_bin, tmp_path, ["--auth-file=%s" % missing])
    assert line.startswith("memcacheq: -Y/--auth-file: cannot open %s:" % missing), line
    empty = tmp_path / "empty"
    empty.write_text("\n")
    empty.chmod(0o600)
    line = start_failure(mcq_bin, tmp_path, ["--auth-file=%s" % empty])
    assert line == "memcacheq: -Y/--auth-file: %s has no user:password line" % empty
    line = start_failure(mcq_bin, tmp_path, ["--auth-file="])
    assert line == "memcacheq: -Y/--auth-file: empty path"


def test_no_password_in_logs(make_daemon, auth_file):
    d = make_daemon(["-N", "--dbus=none", "-vv", "-Y", str(auth_file)])
    with d.client() as c:
        assert c.cmd(auth_set(USER, "Wrong-pw-123")) == FAILURE
        c.send(auth_set(USER, PASSWORD, noreply=True))
        assert c.cmd(b"version\r\n") == b"VERSION 0.1.0\r\n"
    with d.client() as c:
        assert c.cmd(auth_set(USER, "Wrong-pw-456")) == FAILURE
        assert c.cmd(auth_set(USER, "Wrong-pw-789")) == FAILURE
        assert c.cmd(auth_set(USER, "Wrong-pw-000")) == FAILURE
    assert d.stop() == 0
    log = d.stderr()
    assert "authenticated as alice" in log and "wrong user name or password" in log, log
    for secret in (PASSWORD, "other-pw", "Wrong-pw"):
        assert secret not in log, log


# ---- memcacheq-bench ---------------------------------------------------------------

def test_bench_auth_file(authd, auth_file, tmp_path):
    bench = authd.binary.rsplit("/", 1)[0] + "/bench/memcacheq-bench"
    bench = os.environ.get("MEMCACHEQ_BENCH", bench)

    def run(*args):
        return subprocess.run([bench, "-p", str(authd.port), "-c", "3", "-n", "300", "--json"]
                              + list(args), stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=60)

    client_file = tmp_path / "client-auth"
    client_file.write_text("%s:%s\n" % (USER, PASSWORD))
    ok = run("--auth-file", str(client_file))
    assert ok.returncode == 0, ok.stderr
    assert b'"ops":300,' in ok.stdout and b'"errors":0,' in ok.stdout, ok.stdout
    # without it every request is refused
    refused = run()
    assert refused.returncode == 1 and b"unauthenticated" in refused.stderr, refused.stderr
    client_file.write_text("%s:wrong\n" % USER)
    wrong = run("-Y", str(client_file))
    assert wrong.returncode == 2, wrong.stderr
    assert b"authentication refused: CLIENT_ERROR authentication failure" in wrong.stderr


def test_a_fifo_is_refused_without_waiting_for_a_writer(mcq_bin, tmp_path):
    """Opening a FIFO blocks until someone writes to it: the file is refused as
    not a regular file at once, not left hanging."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    line = start_failure(mcq_bin, tmp_path, ["--auth-file=%s" % fifo])
    assert line == "memcacheq: -Y/--auth-file: %s is not a regular file" % fifo
