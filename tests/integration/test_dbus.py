"""memcacheq on D-Bus: the bus name, the objects and their properties, the
signals and their coalescing, the bus policy, surviving the bus, and memcacheqctl.

Every test starts its own dbus-daemon configured like the system bus (method calls
denied unless a policy allows them) plus data/org.memcacheq.MemcacheQ1.conf, the
policy memcacheq installs; the daemon under test finds it through
DBUS_SYSTEM_BUS_ADDRESS.  Calls go through busctl and memcacheqctl; the
unprivileged caller is `nobody`, through setpriv.

memcacheqctl is taken from $MEMCACHEQCTL_BIN, else next to the memcacheq binary.
"""

import json
import math
import os
import signal
import socket
import re
import select
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from conftest import REPO, binary_path

BUS_NAME = "org.memcacheq.MemcacheQ1"
ROOT_PATH = "/org/memcacheq/MemcacheQ1"
QUEUE_PREFIX = ROOT_PATH + "/queue/"
DAEMON_IFACE = BUS_NAME
QUEUE_IFACE = BUS_NAME + ".Queue"
POLICY = REPO / "data" / "org.memcacheq.MemcacheQ1.conf"
CMD_TIMEOUT = 20.0
NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]

# Exit codes of memcacheqctl (see its --help).
EXIT_FAIL, EXIT_UNREACHABLE, EXIT_NO_QUEUE, EXIT_DENIED, EXIT_MAY_STILL_HAPPEN = 1, 2, 3, 4, 5

# The system bus's default policy (Debian's /usr/share/dbus-1/system.conf, without
# the parts about running as a service), with memcacheq's policy file included.
BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <auth>EXTERNAL</auth>
  <listen>unix:path={socket}</listen>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Properties"/>
  </policy>
  <policy user="root">
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Monitoring"/>
  </policy>
  {extra}
  <include ignore_missing="no">{policy}</include>
</busconfig>
"""


def ctl_binary():
    return Path(os.environ.get("MEMCACHEQCTL_BIN", str(binary_path().parent / "memcacheqctl")))


def escape_element(name):
    """g_dbus_escape_object_path: ASCII letters and digits stay, every other byte
    becomes _xx (lower-case hex)."""
    if isinstance(name, str):
        name = name.encode()
    return "".join(chr(b) if chr(b).isascii() and chr(b).isalnum() else "_%02x" % b
                   for b in name)


def queue_path(name):
    return QUEUE_PREFIX + escape_element(name)


def run(cmd, timeout=CMD_TIMEOUT, **kw):
    return subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=timeout, **kw)


def wait_until(pred, timeout=10.0, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.0fs waiting for %s" % (timeout, what))
        time.sleep(interval)


# --------------------------------------------------------------------------------------
# a private bus
# --------------------------------------------------------------------------------------


def terminate(proc):
    """SIGTERM, then SIGKILL if the process has not gone within 10 s."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)

class PrivateBus:
    """A dbus-daemon on a unix socket in a fresh directory under /tmp (short paths,
    readable by `nobody`)."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="mcqb", dir="/tmp"))
        os.chmod(self.dir, 0o755)
        self.socket = self.dir / "bus"
        self.address = "unix:path=%s" % self.socket
        extra = ""
        if os.geteuid() != 0:
            # Not root: let this user own the name, as the service user may.
            user = subprocess.run(["id", "-un"], stdout=subprocess.PIPE, text=True).stdout.strip()
            extra = ('<policy user="%s"><allow own="%s"/><allow send_destination="%s"/></policy>'
                     % (user, BUS_NAME, BUS_NAME))
        self.config = self.dir / "bus.conf"
        self.config.write_text(BUS_CONFIG.format(socket=self.socket, policy=POLICY, extra=extra))
        self.proc = None
        self.log_path = self.dir / "bus.log"
        self.start()

    def start(self):
        if self.socket.exists():
            self.socket.unlink()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(["dbus-daemon", "--config-file=%s" % self.config,
                                          "--nofork", "--print-address=1"],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=log)
        ready, _, _ = select.select([self.proc.stdout], [], [], 10.0)
        line = self.proc.stdout.readline().decode() if ready else ""
        if not line.startswith("unix:"):
            self.proc.kill()
            pytest.fail("dbus-daemon did not start: %r\n%s" % (line, self.log()))

    def log(self):
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            terminate(self.proc)
        if self.proc is not None:
            self.proc.stdout.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- calls ----------------------------------------------------------------------
    def busctl(self, *args, as_nobody=False, check=True):
        cmd = (NOBODY if as_nobody else []) + ["busctl", "--address=%s" % self.address] + list(args)
        res = run(cmd)
        if check:
            assert res.returncode == 0, "%s failed (%d): %s" % (cmd, res.returncode, res.stderr.decode())
        return res

    def has_name(self):
        res = self.busctl("call", "org.freedesktop.DBus", "/org/freedesktop/DBus",
                          "org.freedesktop.DBus", "NameHasOwner", "s", BUS_NAME)
        return res.stdout.decode().strip() == "b true"

    def wait_name(self, timeout=10.0):
        wait_until(self.has_name, timeout, what="%s on the bus" % BUS_NAME)

    def get_all(self, path, iface, as_nobody=False):
        """{property: value} of one interface (GetAll)."""
        res = self.busctl("--json=short", "call", BUS_NAME, path, "org.freedesktop.DBus.Properties",
                          "GetAll", "s", iface, as_nobody=as_nobody)
        props = json.loads(res.stdout)["data"][0]
        return {k: v["data"] for k, v in props.items()}

    def managed_objects(self):
        res = self.busctl("--json=short", "call", BUS_NAME, ROOT_PATH,
                          "org.freedesktop.DBus.ObjectManager", "GetManagedObjects")
        return json.loads(res.stdout)["data"][0]

    def queue_paths(self):
        return {p for p, ifaces in self.managed_objects().items() if QUEUE_IFACE in ifaces}

    def wait_queue_object(self, name, timeout=5.0):
        path = queue_path(name)
        wait_until(lambda: path in self.queue_paths(), timeout, what="object %s" % path)
        return path

    def ctl(self, *args, as_nobody=False, bus=None):
        cmd = (NOBODY if as_nobody else []) + [str(ctl_binary()), "--bus=%s" % (bus or self.address)]
        return run(cmd + list(args))


class Monitor:
    """`busctl monitor --json=short` of everything to and from the name, parsed as it
    arrives: a list of (arrival monotonic time, message dict)."""

    def __init__(self, bus):
        self.bus = bus
        self.messages = []
        self.lock = threading.Lock()
        self.proc = subprocess.Popen(["busctl", "--address=%s" % bus.address, "monitor",
                                      "--json=short", BUS_NAME],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        # Ready once it sees a message of ours.
        def pinged():
            bus.busctl("call", BUS_NAME, ROOT_PATH, "org.freedesktop.DBus.Peer", "Ping")
            return any(m.get("member") == "Ping" for m in self.all())
        wait_until(pinged, 10.0, 0.2, "busctl monitor to start")

    def _read(self):
        for line in self.proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            with self.lock:
                self.messages.append(msg)

    def all(self):
        with self.lock:
            return list(self.messages)

    def signals(self, member, path=None):
        return [m for m in self.all()
                if m.get("type") == "signal" and m.get("member") == member
                and (path is None or m.get("path") == path)]

    def wait_signal(self, member, pred=lambda m: True, timeout=10.0):
        return wait_until(lambda: [m for m in self.signals(member) if pred(m)], timeout,
                          what="signal %s" % member)[0]

    def close(self):
        terminate(self.proc)
        self.thread.join(5)
        self.proc.stdout.close()


@pytest.fixture
def bus():
    b = PrivateBus()
    yield b
    b.close()


@pytest.fixture
def bus_daemon(make_daemon, bus):
    """A -N daemon with the default --dbus (system), its system bus being `bus`."""
    d = make_daemon(["-N"], env={"DBUS_SYSTEM_BUS_ADDRESS": bus.address})
    bus.wait_name()
    return d


@pytest.fixture
def monitor(bus, bus_daemon):
    m = Monitor(bus)
    yield m
    m.close()


@pytest.fixture(scope="module")
def ctl_bin():
    path = ctl_binary()
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail("memcacheqctl not found or not executable: %s (build it, or set "
                    "MEMCACHEQCTL_BIN)" % path)
    return path


def fill(conn, queue, count, body=b"m"):
    for i in range(count):
        assert conn.set(queue, body) == b"STORED\r\n"


def stats_line_count(conn):
    return len(conn.queue_counters())


# --------------------------------------------------------------------------------------
# the name, the objects, the properties
# --------------------------------------------------------------------------------------

def test_name_tree_and_introspection(bus, bus_daemon):
    with bus_daemon.client() as c:
        fill(c, "jobs", 2)
        fill(c, "a.b/c-d~x", 1)
    jobs = bus.wait_queue_object("jobs")
    odd = bus.wait_queue_object("a.b/c-d~x")
    assert jobs == QUEUE_PREFIX + "jobs"
    assert odd == QUEUE_PREFIX + "a_2eb_2fc_2dd_7ex"

    tree = bus.busctl("tree", BUS_NAME).stdout.decode()
    for path in (ROOT_PATH, QUEUE_PREFIX.rstrip("/"), jobs, odd):
        assert path in tree, tree

    root = bus.busctl("introspect", BUS_NAME, ROOT_PATH).stdout.decode()
    for needle in ("org.memcacheq.MemcacheQ1 ", "org.freedesktop.DBus.ObjectManager",
                   ".GetManagedObjects", ".InterfacesAdded", ".InterfacesRemoved",
                   ".Checkpoint", ".DeleteQueue", ".Version", ".StartTime",
                   ".CurrentConnections", ".TotalConnections", ".QueueCount", ".Durable",
                   ".StateDirectory"):
        assert needle in root, "%r not in\n%s" % (needle, root)
    q = bus.busctl("introspect", BUS_NAME, jobs).stdout.decode()
    for needle in ("org.memcacheq.MemcacheQ1.Queue", ".Name", ".Enqueued", ".Dequeued",
                   ".Depth", ".Bytes", ".OldestMessageAge"):
        assert needle in q, "%r not in\n%s" % (needle, q)

    # Anyone may look.
    if os.geteuid() == 0:
        tree_nobody = bus.busctl("tree", BUS_NAME, as_nobody=True).stdout.decode()
        assert jobs in tree_nobody


def test_properties_match_stats_queue(bus, bus_daemon):
    n, m = 25, 9
    bodies = [b"x" * (i + 1) for i in range(n)]
    with bus_daemon.client() as c:
        for body in bodies:
            assert c.set("counted", body) == b"STORED\r\n"
        for i in range(m):
            assert c.get("counted") == bodies[i]
        fill(c, "other", 3)
        path = bus.wait_queue_object("counted")
        bus.wait_queue_object("other")

        props = bus.get_all(path, QUEUE_IFACE)
        assert props["Name"] == "counted"
        assert props["Enqueued"] == n
        assert props["Dequeued"] == m
        assert props["Depth"] == n - m
        assert props["Bytes"] == sum(len(b) for b in bodies[m:])
        assert 0 < props["OldestMessageAge"] < 120 * 10**6
        assert c.queue_counters()["counted"] == (n, m)

        # Reads are current, not as of the last (coalesced) signal.
        assert c.get("counted") == bodies[m]
        props = bus.get_all(path, QUEUE_IFACE)
        assert (props["Enqueued"], props["Dequeued"], props["Depth"]) == (n, m + 1, n - m - 1)
        assert c.queue_counters()["counted"] == (n, m + 1)

        # The age grows while nothing happens.
        age1 = bus.get_all(path, QUEUE_IFACE)["OldestMessageAge"]
        time.sleep(0.3)
        age2 = bus.get_all(path, QUEUE_IFACE)["OldestMessageAge"]
        assert age2 >= age1 + 250000

        # An emptied queue: depth 0, no bytes, no age.
        c.drain("other", 10)
        props = bus.get_all(queue_path("other"), QUEUE_IFACE)
        assert (props["Enqueued"], props["Dequeued"], props["Depth"]) == (3, 3, 0)
        assert props["Bytes"] == 0 and props["OldestMessageAge"] == 0

        stats = c.stats()
        daemon = bus.get_all(ROOT_PATH, DAEMON_IFACE)
        assert daemon["Version"] == "0.1.0"
        assert daemon["QueueCount"] == stats_line_count(c) == 2
        assert daemon["CurrentConnections"] == int(stats["curr_connections"])
        assert daemon["TotalConnections"] == int(stats["total_connections"])
        assert daemon["Durable"] is False
        assert daemon["StateDirectory"] == str(bus_daemon.home)
        started = int(stats["time"]) - int(stats["uptime"])
        assert abs(daemon["StartTime"] - started * 10**6) <= 10**6
        assert daemon["StartTime"] % 10**6 == 0

    # Connections are counted as they come and go.
    with bus_daemon.client() as c1, bus_daemon.client() as c2:
        assert c1.cmd(b"version\r\n") and c2.cmd(b"version\r\n")
        assert bus.get_all(ROOT_PATH, DAEMON_IFACE)["CurrentConnections"] == 2


def test_durable_property(make_daemon, bus):
    make_daemon([], env={"DBUS_SYSTEM_BUS_ADDRESS": bus.address})
    bus.wait_name()
    assert bus.get_all(ROOT_PATH, DAEMON_IFACE)["Durable"] is True


def test_binary_queue_name(bus, bus_daemon, ctl_bin):
    """Names are bytes: the object path has them exactly, Name shows them as UTF-8."""
    name = b"bin\xff\xfename"
    with bus_daemon.client() as c:
        assert c.set(name, b"v") == b"STORED\r\n"
        path = bus.wait_queue_object(name)
    assert path == QUEUE_PREFIX + "bin_ff_fename"
    props = bus.get_all(path, QUEUE_IFACE)
    assert props["Name"] == "bin\ufffd\ufffdname"
    assert props["Enqueued"] == 1
    res = run([str(ctl_bin), "--bus=%s" % bus.address, "--json", "stats", name])
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["ObjectPath"] == path
    res = run([str(ctl_bin), "--bus=%s" % bus.address, "list"])
    assert b"bin\\xff\\xfename" in res.stdout


# --------------------------------------------------------------------------------------
# signals
# --------------------------------------------------------------------------------------

def test_interfaces_added_and_removed(bus, bus_daemon, monitor):
    path = queue_path("fresh.q")
    with bus_daemon.client() as c:
        assert c.set("fresh.q", b"hello") == b"STORED\r\n"
        added = monitor.wait_signal("InterfacesAdded", lambda m: m["payload"]["data"][0] == path)
        assert added["path"] == ROOT_PATH
        ifaces = added["payload"]["data"][1]
        assert ifaces[QUEUE_IFACE]["Name"]["data"] == "fresh.q"
        assert ifaces[QUEUE_IFACE]["Enqueued"]["data"] == 1

        assert c.cmd(b"delete fresh.q\r\n") == b"DELETED\r\n"
        removed = monitor.wait_signal("InterfacesRemoved",
                                      lambda m: m["payload"]["data"][0] == path)
        assert removed["path"] == ROOT_PATH
        assert QUEUE_IFACE in removed["payload"]["data"][1]
    assert path not in bus.busctl("tree", BUS_NAME).stdout.decode()
    assert len(monitor.signals("InterfacesAdded")) == 1


def test_properties_changed_is_coalesced(bus, bus_daemon, monitor):
    """10,000 sets spread over ~2.5 s: at most one PropertiesChanged per object per
    second, and the last figures announced are the final ones."""
    total, chunks = 10000, 20
    per_chunk = total // chunks
    path = queue_path("burst")
    line = b"set burst 0 0 4\r\npay!\r\n"
    with bus_daemon.client() as c:
        t0 = time.monotonic()
        for _ in range(chunks):
            c.send(line * per_chunk)
            for _ in range(per_chunk):
                assert c.read_line() == b"STORED\r\n"
            time.sleep(0.125)
        duration = time.monotonic() - t0
        assert c.queue_counters()["burst"] == (total, 0)
    time.sleep(2.5)     # the last flush is at most 1 s after the last change

    changed = monitor.signals("PropertiesChanged", path)
    assert len(changed) >= 1, "no PropertiesChanged for %s" % path
    window = duration + 2.5
    assert len(changed) <= math.ceil(window) + 1, \
        "%d PropertiesChanged in %.1f s" % (len(changed), window)
    for sigs in (changed, monitor.signals("PropertiesChanged", ROOT_PATH)):
        times = [m["timestamp-realtime"] for m in sigs]
        gaps = [(b - a) / 1e6 for a, b in zip(times, times[1:])]
        # (1 s apart when sent; allow for delivery jitter on a loaded machine)
        assert all(g >= 0.6 for g in gaps), "signals closer than a second: %s" % gaps

    # The last announcement carries the final count.
    announced = []
    for m in monitor.all():
        if m.get("member") == "InterfacesAdded" and m["payload"]["data"][0] == path:
            announced.append(m["payload"]["data"][1][QUEUE_IFACE]["Enqueued"]["data"])
        elif m.get("member") == "PropertiesChanged" and m.get("path") == path:
            props = m["payload"]["data"][1]
            if "Enqueued" in props:
                announced.append(props["Enqueued"]["data"])
    assert announced and announced[-1] == total, announced
    assert announced == sorted(announced)
    # OldestMessageAge changes all the time and is documented as not signalled.
    for m in changed:
        assert "OldestMessageAge" not in m["payload"]["data"][1]


# --------------------------------------------------------------------------------------
# policy, methods
# --------------------------------------------------------------------------------------

def test_policy_refuses_unprivileged_callers(bus, bus_daemon, ctl_bin):
    if os.geteuid() != 0:
        pytest.skip("needs root to run a caller as nobody")
    with bus_daemon.client() as c:
        fill(c, "guarded", 2)
        path = bus.wait_queue_object("guarded")

        # Reading is for everyone.
        assert bus.get_all(path, QUEUE_IFACE, as_nobody=True)["Enqueued"] == 2
        assert bus.get_all(ROOT_PATH, DAEMON_IFACE, as_nobody=True)["QueueCount"] == 1
        res = bus.ctl("list", as_nobody=True)
        assert res.returncode == 0 and b"guarded" in res.stdout, res.stderr

        # Changing is for root.
        for args in (["DeleteQueue", "s", "guarded"], ["Checkpoint"]):
            res = bus.busctl("call", BUS_NAME, ROOT_PATH, DAEMON_IFACE, *args,
                             as_nobody=True, check=False)
            assert res.returncode != 0
            assert b"Access denied" in res.stderr or b"AccessDenied" in res.stderr, res.stderr
        res = bus.busctl("set-property", BUS_NAME, path, QUEUE_IFACE, "Depth", "t", "0",
                         as_nobody=True, check=False)
        assert res.returncode != 0
        res = bus.ctl("delete", "guarded", as_nobody=True)
        assert res.returncode == EXIT_DENIED, (res.returncode, res.stderr)
        assert b"permission denied" in res.stderr
        res = bus.ctl("checkpoint", as_nobody=True)
        assert res.returncode == EXIT_DENIED, (res.returncode, res.stderr)
        assert c.queue_counters()["guarded"] == (2, 0)

        res = bus.busctl("call", BUS_NAME, ROOT_PATH, DAEMON_IFACE, "DeleteQueue", "s", "guarded")
        assert res.returncode == 0
        assert "guarded" not in c.queue_counters()
        # The reply comes after the object is gone.
        assert path not in bus.queue_paths()
        res = bus.busctl("call", BUS_NAME, ROOT_PATH, DAEMON_IFACE, "DeleteQueue", "s", "guarded",
                         check=False)
        assert res.returncode != 0 and b"No such queue" in res.stderr, res.stderr
        res = bus.busctl("call", BUS_NAME, ROOT_PATH, DAEMON_IFACE, "Checkpoint")
        assert res.returncode == 0


def test_only_allowed_users_may_own_the_name(bus):
    """Someone else cannot take the name (and so cannot impersonate memcacheq)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run a process as nobody")
    res = run(NOBODY + ["busctl", "--address=%s" % bus.address, "call", "org.freedesktop.DBus",
                        "/org/freedesktop/DBus", "org.freedesktop.DBus", "RequestName", "su",
                        BUS_NAME, "4"])
    assert res.returncode != 0 and b"Access denied" in res.stderr, res.stderr


# --------------------------------------------------------------------------------------
# the bus is optional
# --------------------------------------------------------------------------------------

def dbus_lines(daemon):
    return [l for l in daemon.stderr().splitlines() if "D-Bus" in l]


def test_daemon_survives_the_bus(bus, bus_daemon):
    with bus_daemon.client() as c:
        fill(c, "kept", 3)
        bus.wait_queue_object("kept")
        bus.kill()
        # Serving goes on, on the open connection and on new ones.
        assert c.get("kept") == b"m"
        fill(c, "kept", 2)
        with bus_daemon.client() as c2:
            assert c2.get("kept") == b"m"
            assert c2.queue_counters()["kept"] == (5, 2)
        wait_until(lambda: any("lost the connection" in l for l in dbus_lines(bus_daemon)),
                   5.0, what="the warning about the lost bus")
        assert bus_daemon.running()
        warnings = [l for l in dbus_lines(bus_daemon) if "warning" in l]
        assert len(warnings) == 1, warnings

        # The bus comes back: so does the name, with current figures.
        bus.start()
        bus.wait_name(20.0)
        path = bus.wait_queue_object("kept")
        props = bus.get_all(path, QUEUE_IFACE)
        assert (props["Enqueued"], props["Dequeued"]) == (5, 2)
        assert c.set("kept", b"again") == b"STORED\r\n"
    assert bus_daemon.stop() == 0


def test_no_bus_means_one_warning(make_daemon, tmp_path):
    missing = "unix:path=%s" % (tmp_path / "no-such-bus")
    d = make_daemon(["-N"], env={"DBUS_SYSTEM_BUS_ADDRESS": missing})
    with d.client() as c:
        fill(c, "q", 2)
        assert c.get("q") == b"m"
    time.sleep(3.5)     # two retries happen meanwhile, silently
    warnings = [l for l in dbus_lines(d) if "warning" in l]
    assert len(warnings) == 1, d.stderr()
    assert "cannot connect to the system bus" in warnings[0]
    assert d.running()
    assert d.stop() == 0


def test_second_daemon_finds_the_name_taken(make_daemon, bus, bus_daemon):
    """A second memcacheq on the same bus says so once and serves all the same; the
    name stays with the first."""
    owner = bus.busctl("call", "org.freedesktop.DBus", "/org/freedesktop/DBus",
                       "org.freedesktop.DBus", "GetConnectionUnixProcessID", "s",
                       BUS_NAME).stdout.decode().split()
    assert owner == ["u", str(bus_daemon.pid)]
    second = make_daemon(["-N"], env={"DBUS_SYSTEM_BUS_ADDRESS": bus.address})
    wait_until(lambda: any("already taken" in l for l in dbus_lines(second)), 10.0,
               what="the warning of the second daemon")
    with second.client() as c:
        fill(c, "q2", 1)
        assert c.get("q2") == b"m"
    assert [l for l in dbus_lines(second) if "warning" in l] == \
        [l for l in dbus_lines(second) if "already taken" in l]
    owner = bus.busctl("call", "org.freedesktop.DBus", "/org/freedesktop/DBus",
                       "org.freedesktop.DBus", "GetConnectionUnixProcessID", "s",
                       BUS_NAME).stdout.decode().split()
    assert owner == ["u", str(bus_daemon.pid)]


def test_dbus_none(make_daemon, bus, ctl_bin):
    d = make_daemon(["-N", "--dbus=none"], env={"DBUS_SYSTEM_BUS_ADDRESS": bus.address})
    with d.client() as c:
        fill(c, "q", 1)
    time.sleep(1.0)
    assert not bus.has_name()
    assert dbus_lines(d) == []
    res = bus.ctl("status")
    assert res.returncode == EXIT_UNREACHABLE
    assert b"not running" in res.stderr


def test_dbus_option_values(mcq_bin, tmp_path):
    res = run([str(mcq_bin), "--dbus=bogus", "-p", "0", "-s", str(tmp_path / "s"),
               "-H", str(tmp_path / "h")])
    assert res.returncode == 1
    assert b"--dbus" in res.stderr
    assert b"--dbus=BUS" in run([str(mcq_bin), "--help"]).stdout


def test_session_bus(make_daemon, bus):
    make_daemon(["-N", "--dbus=session"],
                env={"DBUS_SESSION_BUS_ADDRESS": bus.address,
                     "DBUS_SYSTEM_BUS_ADDRESS": "unix:path=/nonexistent"})
    bus.wait_name()
    assert bus.get_all(ROOT_PATH, DAEMON_IFACE)["Version"] == "0.1.0"


# --------------------------------------------------------------------------------------
# memcacheqctl
# --------------------------------------------------------------------------------------

def test_ctl_status(bus, bus_daemon, ctl_bin):
    with bus_daemon.client() as c:
        fill(c, "one", 1)
        fill(c, "two", 2)
        bus.wait_queue_object("two")
        res = bus.ctl("status")
        assert res.returncode == 0, res.stderr
        out = res.stdout.decode()
        assert re.search(r"^Version:\s+0\.1\.0$", out, re.M), out
        assert re.search(r"^Queues:\s+2$", out, re.M), out
        assert re.search(r"^Connections:\s+1 open, \d+ since start$", out, re.M), out
        assert re.search(r"^Durable:\s+no", out, re.M), out
        assert re.search(r"^State directory:\s+%s$" % re.escape(str(bus_daemon.home)), out, re.M)
        assert re.search(r"^Started:\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\d .*\(up ", out, re.M), out
        # The values line up.
        cols = {line.index(line.split(":", 1)[1].strip()) for line in out.splitlines()}
        assert len(cols) == 1, out

        res = bus.ctl("--json", "status")
        assert res.returncode == 0
        st = json.loads(res.stdout)
        assert st == {**bus.get_all(ROOT_PATH, DAEMON_IFACE), "StartTime": st["StartTime"]}
        assert st["QueueCount"] == 2 and st["Durable"] is False


def test_ctl_list_and_stats(bus, bus_daemon, ctl_bin):
    with bus_daemon.client() as c:
        fill(c, "alpha", 12, b"abcd")
        for _ in range(5):
            assert c.get("alpha") == b"abcd"
        fill(c, "a-much-longer-queue-name", 1)
        fill(c, "zed", 3)
        c.drain("zed", 3)
        bus.wait_queue_object("zed")
        counters = c.queue_counters()

    res = bus.ctl("list")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.decode().splitlines()
    assert lines[0].split() == ["QUEUE", "ENQUEUED", "DEQUEUED", "DEPTH", "BYTES", "OLDEST"]
    rows = [l.split() for l in lines[1:]]
    assert [r[0] for r in rows] == sorted(counters)          # sorted like stats queue
    table = {r[0]: r for r in rows}
    assert table["alpha"][1:5] == ["12", "5", "7", "28"]
    assert table["zed"][1:6] == ["3", "3", "0", "0", "-"]
    for name, (enq, deq) in counters.items():
        assert (int(table[name][1]), int(table[name][2])) == (enq, deq)
    # Numbers are right-aligned under their headers.
    header = lines[0]
    for line in lines[1:]:
        for col in ("ENQUEUED", "DEQUEUED", "DEPTH", "BYTES"):
            end = header.index(col) + len(col)
            assert line[end - 1] != " " and (end == len(line) or line[end] == " "), (col, line)

    res = bus.ctl("--json", "list")
    assert res.returncode == 0
    listed = json.loads(res.stdout)
    assert [q["Name"] for q in listed] == sorted(counters)
    for q in listed:
        assert (q["Enqueued"], q["Dequeued"]) == counters[q["Name"]]
        assert q["Depth"] == q["Enqueued"] - q["Dequeued"]
        assert q["ObjectPath"] == queue_path(q["Name"])

    res = bus.ctl("stats", "alpha")
    assert res.returncode == 0, res.stderr
    out = res.stdout.decode()
    for key, value in (("Queue", "alpha"), ("Enqueued", "12"), ("Dequeued", "5"),
                       ("Depth", "7"), ("Bytes", "28"), ("Object path", QUEUE_PREFIX + "alpha")):
        assert re.search(r"^%s:\s+%s$" % (key, re.escape(value)), out, re.M), out
    assert re.search(r"^Oldest message age:\s+\d", out, re.M), out

    res = bus.ctl("--json", "stats", "alpha")
    st = json.loads(res.stdout)
    assert (st["Name"], st["Enqueued"], st["Dequeued"], st["Depth"], st["Bytes"]) == \
        ("alpha", 12, 5, 7, 28)
    assert st["OldestMessageAge"] > 0

    res = bus.ctl("stats", "nosuch")
    assert res.returncode == EXIT_NO_QUEUE, res.stderr
    assert b"no such queue: nosuch" in res.stderr


def test_ctl_list_empty(bus, bus_daemon, ctl_bin):
    res = bus.ctl("list")
    assert res.returncode == 0 and res.stdout == b"no queues\n"
    assert json.loads(bus.ctl("--json", "list").stdout) == []


def test_ctl_delete_and_checkpoint(bus, bus_daemon, ctl_bin):
    with bus_daemon.client() as c:
        fill(c, "doomed", 4)
        fill(c, "kept", 1)
        path = bus.wait_queue_object("doomed")

        res = bus.ctl("delete", "doomed")
        assert res.returncode == 0, res.stderr
        assert res.stdout == b"deleted queue doomed\n"
        assert "doomed" not in c.queue_counters()
        assert path not in bus.queue_paths()

        res = bus.ctl("delete", "doomed")
        assert res.returncode == EXIT_NO_QUEUE
        assert b"no such queue: doomed" in res.stderr

        res = bus.ctl("delete", "bad name")
        assert res.returncode == EXIT_FAIL
        assert b"valid queue name" in res.stderr

        fill(c, "doomed", 1)
        res = bus.ctl("--json", "delete", "doomed")
        assert res.returncode == 0
        assert json.loads(res.stdout) == {"Name": "doomed", "Deleted": True}

        res = bus.ctl("checkpoint")
        assert res.returncode == 0 and res.stdout == b"checkpoint done\n", res.stderr
        res = bus.ctl("--json", "checkpoint")
        assert json.loads(res.stdout) == {"Checkpoint": True}
        assert c.queue_counters() == {"kept": (1, 0)}


def test_ctl_watch(bus, bus_daemon, ctl_bin):
    with bus_daemon.client() as c:
        fill(c, "idle", 1)
        fill(c, "busy", 1)
        bus.wait_queue_object("busy")
    stop = threading.Event()

    def produce():
        with bus_daemon.client() as p:
            while not stop.is_set():
                assert p.set("busy", b"tick") == b"STORED\r\n"
                time.sleep(0.01)

    t = threading.Thread(target=produce)
    t.start()
    try:
        res = bus.ctl("watch", "--count", "2")
        res_json = bus.ctl("--json", "watch", "--count=2")
    finally:
        stop.set()
        t.join(10)
    assert res.returncode == 0, res.stderr
    out = res.stdout.decode()
    headers = [l for l in out.splitlines() if l.split() == ["QUEUE", "DEPTH", "ENQ/S", "DEQ/S"]]
    assert len(headers) == 2, out
    rows = [l.split() for l in out.splitlines() if l.startswith(("busy ", "idle "))]
    assert len(rows) == 4, out
    assert any(float(r[2]) > 0 for r in rows if r[0] == "busy"), out
    assert all(float(r[2]) == 0 and float(r[3]) == 0 for r in rows if r[0] == "idle"), out

    assert res_json.returncode == 0, res_json.stderr
    samples = [json.loads(l) for l in res_json.stdout.decode().splitlines()]
    assert len(samples) == 2
    for s in samples:
        assert 0.5 < s["Interval"] < 3.0
        names = [q["Name"] for q in s["Queues"]]
        assert names == ["busy", "idle"]
        busy = s["Queues"][0]
        assert busy["EnqueueRate"] > 0 and busy["DequeueRate"] == 0
        assert busy["Depth"] >= 1


def test_ctl_unreachable(bus, ctl_bin, tmp_path):
    # No bus at all.
    res = bus.ctl("status", bus="unix:path=%s" % (tmp_path / "nothing"))
    assert res.returncode == EXIT_UNREACHABLE
    assert b"cannot connect" in res.stderr
    # The system bus, through DBUS_SYSTEM_BUS_ADDRESS.
    res = run([str(ctl_bin), "list"],
              env={**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": "unix:path=%s" % (tmp_path / "x")})
    assert res.returncode == EXIT_UNREACHABLE
    # A bus without memcacheq on it.
    for cmd in (["status"], ["list"], ["stats", "q"], ["delete", "q"], ["checkpoint"],
                ["watch", "--count=1"]):
        res = bus.ctl(*cmd)
        assert res.returncode == EXIT_UNREACHABLE, (cmd, res.returncode, res.stderr)
        assert b"memcacheq is not running on the" in res.stderr


def test_ctl_gives_up_on_a_bus_that_never_answers(ctl_bin, tmp_path):
    """A bus socket that accepts and then says nothing (a stopped
    dbus-daemon): memcacheqctl hung forever; it must exit 2 after its 10 s."""
    path = str(tmp_path / "silent.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(4)
    try:
        t0 = time.monotonic()
        res = run([str(ctl_bin), "--bus=unix:path=%s" % path, "status"], timeout=30)
        assert res.returncode == EXIT_UNREACHABLE, res
        assert b"does not answer" in res.stderr, res.stderr
        assert time.monotonic() - t0 < 20
    finally:
        server.close()


def test_ctl_unanswered_delete_says_it_may_still_happen(bus, bus_daemon, ctl_bin):
    """A stopped daemon cannot answer within memcacheqctl's 10 s, but the bus
    has the request and the daemon carries it out once it runs again: the
    operator must not be told the delete failed.  The checkpoint runs
    alongside, so that both actions share the wait."""
    with bus_daemon.client() as c:
        fill(c, "frozen", 3)
    bus.wait_queue_object("frozen")
    base = [str(ctl_bin), "--bus=%s" % bus.address]
    os.kill(bus_daemon.pid, signal.SIGSTOP)
    try:
        procs = [subprocess.Popen(base + args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE)
                 for args in (["delete", "frozen"], ["checkpoint"])]
        outs = [p.communicate(timeout=CMD_TIMEOUT) for p in procs]
    finally:
        os.kill(bus_daemon.pid, signal.SIGCONT)
    (_, delete_err), (_, checkpoint_err) = outs
    assert procs[0].returncode == EXIT_MAY_STILL_HAPPEN, (procs[0].returncode, delete_err)
    assert b"did not answer" in delete_err, delete_err
    assert b"the delete was sent: the queue frozen may still be deleted" in delete_err, delete_err
    hint = b"memcacheqctl --bus=%s stats frozen" % bus.address.encode()
    assert hint in delete_err, delete_err
    assert procs[1].returncode == EXIT_MAY_STILL_HAPPEN, (procs[1].returncode, checkpoint_err)
    assert b"the checkpoint may still run" in checkpoint_err, checkpoint_err

    # As announced, the delete happens once the daemon runs again, and the
    # suggested command tells.
    with bus_daemon.client() as c:
        wait_until(lambda: "frozen" not in c.queue_counters(), 10.0, what="the delete")
    res = bus.ctl("stats", "frozen")
    assert res.returncode == EXIT_NO_QUEUE, res


def test_ctl_system_bus_from_environment(bus, bus_daemon, ctl_bin):
    res = run([str(ctl_bin), "status"], env={**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": bus.address})
    assert res.returncode == 0, res.stderr


def test_ctl_usage(ctl_bin):
    res = run([str(ctl_bin), "--help"])
    assert res.returncode == 0
    out = res.stdout.decode()
    for word in ("status", "list", "stats QUEUE", "delete QUEUE", "checkpoint", "watch",
                 "--json", "--bus", "--count", "Exit status", "no such queue", "not reachable",
                 "may still be carried out"):
        assert word in out, word
    for args, needle in ((["frobnicate"], b"unknown command"), ([], b"no command"),
                         (["stats"], b"one queue name"), (["list", "extra"], b"no arguments"),
                         (["--bus=nonsense", "list"], b"--bus"),
                         (["--json=no", "list"], b"--json takes no value")):
        res = run([str(ctl_bin)] + args)
        assert res.returncode == EXIT_FAIL, (args, res.returncode)
        assert needle in res.stderr, (args, res.stderr)
