"""Signals other than SIGTERM and SIGINT: SIGUSR1 shuts the daemon down cleanly, as
in memcached; SIGUSR2, SIGALRM, SIGHUP and SIGPIPE are ignored and the daemon
keeps serving."""

import os
import signal
import time

import pytest


def test_sigusr1_shuts_down_cleanly(make_daemon, notify_socket):
    d = make_daemon(["-N"], env={"NOTIFY_SOCKET": notify_socket.path})
    assert notify_socket.wait_for("READY", "1") is not None
    with d.client() as c:
        assert c.set("usr1", b"kept") == b"STORED\r\n"
        os.kill(d.pid, signal.SIGUSR1)
        # the drain closes the connection cleanly once the client has its replies
        assert c.read_to_close(deadline=15) == b""
    rc = d.stop()
    err = d.stderr()
    assert rc == 0, "exit %r after SIGUSR1\n%s" % (rc, err)
    assert notify_socket.wait_for("STOPPING", "1", timeout=5) is not None, notify_socket.messages
    assert "SIGUSR1 received, shutting down" in err, err
    assert "stopped cleanly" in err, err
    d.start()
    with d.client() as c:
        assert c.get("usr1") == b"kept"


@pytest.mark.parametrize("sig", [signal.SIGUSR2, signal.SIGALRM, signal.SIGHUP, signal.SIGPIPE],
                         ids=lambda s: s.name)
def test_meaningless_signal_is_ignored(daemon, sig):
    with daemon.client() as c:
        assert c.set("ign", b"one") == b"STORED\r\n"
        for _ in range(3):
            os.kill(daemon.pid, sig)
            time.sleep(0.05)
        time.sleep(0.2)
        assert daemon.running(), "%s ended the daemon (exit %r)\n%s" % (
            sig.name, daemon.proc.poll(), daemon.stderr())
        # the same connection still works, and nothing was lost
        assert c.set("ign", b"two") == b"STORED\r\n"
        assert c.get("ign") == b"one"
        assert c.get("ign") == b"two"
    rc = daemon.stop()
    assert rc == 0, daemon.stderr()
    assert "stopped cleanly" in daemon.stderr()
