"""systemd integration without a running systemd: socket activation through
systemd-socket-activate, and sd_notify through a NOTIFY_SOCKET we bind ourselves."""

import shutil
import signal
import subprocess
import time

import pytest

from conftest import Conn, Daemon, clean_env, free_port, pid_listens_on, port_is_listening

SSA = shutil.which("systemd-socket-activate") or "/usr/bin/systemd-socket-activate"


def _start_activator(mcq_bin, home, other_port, errf):
    """systemd-socket-activate on a free port; returns (proc, port). Retries when the
    picked port was taken before the activator could bind it."""
    for attempt in range(3):
        port = free_port()
        proc = subprocess.Popen(
            [SSA, "-l", "127.0.0.1:%d" % port, str(mcq_bin),
             "-H", str(home), "-N", "-p", str(other_port)],
            stdin=subprocess.DEVNULL, stdout=errf, stderr=errf, env=clean_env())
        deadline = time.monotonic() + 10
        while proc.poll() is None and not pid_listens_on(proc.pid, port):
            assert time.monotonic() < deadline, "systemd-socket-activate did not listen"
            time.sleep(0.02)
        if proc.poll() is None:
            return proc, port
    raise AssertionError("systemd-socket-activate could not bind a port (rc=%r)"
                         % proc.returncode)


def test_socket_activation(mcq_bin, tmp_path):
    other_port = free_port()
    default_was_listening = port_is_listening(22201)
    errf = open(tmp_path / "ssa.stderr", "wb")
    proc, act_port = _start_activator(mcq_bin, tmp_path / "home", other_port, errf)
    try:
        # systemd-socket-activate execs the daemon (same pid) on the first connection
        with Conn(act_port) as c:
            assert c.cmd(b"set sa 0 0 9\r\nactivated\r\n") == b"STORED\r\n"
            assert c.cmd(b"get sa\r\n", b"END\r\n") == b"VALUE sa 0 9\r\nactivated\r\nEND\r\n"
        # a second connection goes to the same inherited socket
        with Conn(act_port) as c2:
            assert c2.cmd(b"version\r\n") == b"VERSION 0.1.0\r\n"
            assert int(c2.stats()["pid"]) == proc.pid
        # with LISTEN_FDS the daemon must not open its own listeners
        assert proc.poll() is None
        assert not pid_listens_on(proc.pid, other_port)
        assert not port_is_listening(other_port), \
            "daemon listened on -p %d despite socket activation" % other_port
        if not default_was_listening:
            assert not port_is_listening(22201), "daemon listened on the default port"
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(15)
        assert rc == 0, "exit code %r\nstderr:\n%s" % (
            rc, (tmp_path / "ssa.stderr").read_text(errors="replace"))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        errf.close()


@pytest.mark.parametrize("watchdog_pid", ["unset", "self"])
def test_sd_notify_ready_watchdog_stopping(mcq_bin, tmp_path, notify_socket, watchdog_pid):
    env = {"NOTIFY_SOCKET": notify_socket.path, "WATCHDOG_USEC": "200000"}
    d = Daemon(mcq_bin, tmp_path / "home", args=["-N"], env=env, logdir=tmp_path)
    if watchdog_pid == "self":
        # like systemd: WATCHDOG_PID is the daemon's own pid (the shell execs into it)
        inner = d.command
        d.command = lambda: ["/bin/sh", "-c", 'WATCHDOG_PID=$$; export WATCHDOG_PID; exec "$@"',
                             "sh"] + inner()
    d.start(wait=False)
    try:
        ready = notify_socket.wait_for("READY", "1", timeout=10)
        assert ready is not None, ("no READY=1 within 10 s; got %r\nstderr:\n%s"
                                   % (notify_socket.messages, d.stderr()))
        # READY=1 means listening: connect at once, no retry
        with Conn(d.port) as c:
            assert c.cmd(b"version\r\n") == b"VERSION 0.1.0\r\n"
        pings = [f for f in notify_socket.collect(1.0) if ("WATCHDOG", "1") in f]
        assert len(pings) >= 3, ("expected WATCHDOG=1 every 100 ms, got %d in 1 s: %r"
                                 % (len(pings), notify_socket.messages))
        statuses = [v for k, v in notify_socket.all_fields() if k == "STATUS"]
        assert statuses and all(s.strip() for s in statuses), notify_socket.messages
        assert not any(k == "STOPPING" for k, v in notify_socket.all_fields())

        d.proc.send_signal(signal.SIGTERM)
        stopping = notify_socket.wait_for("STOPPING", "1", timeout=10)
        assert stopping is not None, "no STOPPING=1 after SIGTERM: %r" % notify_socket.messages
        rc = d.stop()
        assert rc == 0, "exit code %r\nstderr:\n%s" % (rc, d.stderr())
    finally:
        d.kill9()


def test_huge_watchdog_timeout_does_not_ping_storm(mcq_bin, tmp_path, notify_socket):
    """WatchdogSec= of 100 days: half of it in ms does not fit 32 bits, and
    it had wrapped to a ping every millisecond (901 in a second)."""
    env = {"NOTIFY_SOCKET": notify_socket.path, "WATCHDOG_USEC": "8589934592000"}
    d = Daemon(mcq_bin, tmp_path / "home", args=["-N"], env=env, logdir=tmp_path)
    d.start(wait=False)
    try:
        assert notify_socket.wait_for("READY", "1", timeout=10) is not None, d.stderr()
        pings = [f for f in notify_socket.collect(1.0) if ("WATCHDOG", "1") in f]
        assert len(pings) <= 1, "%d WATCHDOG=1 in 1 s" % len(pings)
        assert d.stop() == 0
    finally:
        d.kill9()


def test_no_watchdog_pings_for_other_pid(mcq_bin, tmp_path, notify_socket):
    # WATCHDOG_PID names another process: the watchdog is not meant for this daemon
    env = {"NOTIFY_SOCKET": notify_socket.path, "WATCHDOG_USEC": "200000",
           "WATCHDOG_PID": "1"}
    d = Daemon(mcq_bin, tmp_path / "home", args=["-N"], env=env, logdir=tmp_path)
    d.start(wait=False)
    try:
        assert notify_socket.wait_for("READY", "1", timeout=10) is not None
        notify_socket.collect(0.8)
        assert not any(k == "WATCHDOG" for k, v in notify_socket.all_fields()), \
            notify_socket.messages
        assert d.stop() == 0
    finally:
        d.kill9()


def test_no_notify_socket_is_fine(make_daemon):
    # without NOTIFY_SOCKET the daemon runs normally and stops cleanly
    d = make_daemon(["-N"], env={"WATCHDOG_USEC": "200000"})
    with d.client() as c:
        assert c.cmd(b"version\r\n") == b"VERSION 0.1.0\r\n"
    assert d.stop() == 0
