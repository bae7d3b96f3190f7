"""Shared helpers for the memcacheq end-to-end tests.

Run with Debian's interpreter:  /usr/bin/python3 -m pytest tests/integration

The daemon binary is taken from $MEMCACHEQ_BIN, else <repo>/build/src/memcacheq.
A missing binary makes every test fail (never skip).
"""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEFAULT_BIN = REPO / "build" / "src" / "memcacheq"

IO_TIMEOUT = 10.0       # every socket operation
START_TIMEOUT = 10.0    # daemon must accept connections within this
STOP_TIMEOUT = 15.0     # daemon must exit after SIGTERM within this
VERSION = "0.1.0"

# Variables a test runner might have inherited that would change the daemon's behaviour.
_SCRUB_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS",
              "LISTEN_PID", "LISTEN_FDNAMES", "STATE_DIRECTORY", "JOURNAL_STREAM",
              "INVOCATION_ID", "MEMCACHED_SERVERS")


def binary_path():
    return Path(os.environ.get("MEMCACHEQ_BIN", str(DEFAULT_BIN)))


def clean_env(extra=None):
    env = {k: v for k, v in os.environ.items() if k not in _SCRUB_ENV and k != "LANGUAGE"}
    # The tests read the daemon's English messages; a translated locale in
    # the caller's environment must not change them (test_i18n sets its own).
    env["LC_ALL"] = "C.UTF-8"
    if extra:
        env.update(extra)
    return env


def free_port():
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def first_reply(family, address):
    """What a `version` request gets back within a second (b"" if nothing): any
    reply line means the daemon's loop runs (one started with --auth-file or
    past -c answers with an error)."""
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(1.0)
            s.connect(address)
            s.sendall(b"version\r\n")
            return s.recv(64)
    except OSError:
        return b""


def port_is_listening(port, host="127.0.0.1"):
    try:
        with socket.create_connection((host, port), timeout=2.0):
            return True
    except ConnectionRefusedError:
        return False
    except OSError:
        return False


def pid_listens_on(pid, port):
    """True if process `pid` owns a TCP socket listening on `port` (Linux /proc)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(fields[9])
        except OSError:
            pass
    if not inodes:
        return False
    try:
        fds = os.listdir("/proc/%d/fd" % pid)
    except OSError:
        return False
    for fd in fds:
        try:
            link = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue
        if link.startswith("socket:[") and link[8:-1] in inodes:
            return True
    return False


# --------------------------------------------------------------------------------------
# raw socket client
# --------------------------------------------------------------------------------------

class Conn:
    """A raw memcache-text-protocol connection with strict, bounded reads."""

    def __init__(self, port, host="127.0.0.1", timeout=IO_TIMEOUT, rcvbuf=None):
        self.timeout = timeout
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.settimeout(timeout)
        s.connect((host, port))
        self.sock = s
        self.buf = bytearray()

    # -- plumbing -----------------------------------------------------------------
    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self, size=262144):
        data = self.sock.recv(size)
        if not data:
            raise EOFError("connection closed by server; unread buffer=%r"
                           % bytes(self.buf[:200]))
        self.buf += data

    def _take(self, n):
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    # -- reads --------------------------------------------------------------------
    def read_until(self, term=b"END\r\n", deadline=60.0):
        """Read through the first occurrence of `term` (inclusive)."""
        end = time.monotonic() + deadline
        start = 0
        while True:
            i = self.buf.find(term, start)
            if i >= 0:
                return self._take(i + len(term))
            start = max(0, len(self.buf) - len(term) + 1)
            if time.monotonic() > end:
                raise TimeoutError("no %r within %.0fs; got %r"
                                   % (term, deadline, bytes(self.buf[:300])))
            self._fill()

    def read_exact(self, n, deadline=60.0):
        end = time.monotonic() + deadline
        while len(self.buf) < n:
            if time.monotonic() > end:
                raise TimeoutError("wanted %d bytes, have %d" % (n, len(self.buf)))
            self._fill()
        return self._take(n)

    def read_line(self):
        return self.read_until(b"\r\n")

    def cmd(self, data, term=b"\r\n"):
        self.send(data)
        return self.read_until(term)

    def expect_silence(self, wait=0.3):
        """Assert the server sends nothing more for `wait` seconds."""
        assert not self.buf, "unexpected buffered bytes %r" % bytes(self.buf)
        self.sock.settimeout(wait)
        try:
            data = self.sock.recv(4096)
        except socket.timeout:
            data = None
        finally:
            self.sock.settimeout(self.timeout)
        assert data is None, "server sent unexpected bytes %r" % data

    def read_to_close(self, deadline=IO_TIMEOUT):
        """Read everything until the server closes; returns the bytes read.
        A reset after the data counts as closed."""
        end = time.monotonic() + deadline
        while True:
            if time.monotonic() > end:
                raise TimeoutError("server did not close; got %r" % bytes(self.buf[:300]))
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            self.buf += data
        return self._take(len(self.buf))

    # -- protocol helpers -----------------------------------------------------------
    def read_values(self, with_cas=False):
        """Parse VALUE blocks through END. Returns a list of tuples
        (key, flags, body) or (key, flags, body, cas)."""
        out = []
        for _ in range(100000):
            line = self.read_line()
            if line == b"END\r\n":
                return out
            parts = line[:-2].split(b" ")
            assert parts[0] == b"VALUE", "expected VALUE or END, got %r" % line
            assert len(parts) == (5 if with_cas else 4), "bad VALUE line %r" % line
            key, flags, nbytes = parts[1], int(parts[2]), int(parts[3])
            data = self.read_exact(nbytes + 2)
            assert data[-2:] == b"\r\n", "data block not terminated by CRLF: %r" % data[-10:]
            if with_cas:
                out.append((key.decode(), flags, data[:-2], int(parts[4])))
            else:
                out.append((key.decode(), flags, data[:-2]))
        raise AssertionError("too many VALUE blocks")

    def set(self, key, body, flags=0):
        if isinstance(key, str):
            key = key.encode()
        return self.cmd(b"set %s %d 0 %d\r\n%s\r\n" % (key, flags, len(body), body))

    def get(self, *keys):
        """Returns the body of the single VALUE (or None) for a one-key get;
        a list of (key, flags, body) for several keys."""
        bkeys = [k.encode() if isinstance(k, str) else k for k in keys]
        self.send(b"get " + b" ".join(bkeys) + b"\r\n")
        vals = self.read_values()
        if len(keys) == 1:
            assert len(vals) <= 1
            return vals[0][2] if vals else None
        return vals

    def stats(self, arg=None):
        self.send(b"stats\r\n" if arg is None else b"stats " + arg.encode() + b"\r\n")
        raw = self.read_until(b"END\r\n")
        out = {}
        for line in raw.split(b"\r\n")[:-2]:
            parts = line.decode().split(" ", 2)
            assert parts[0] == "STAT" and len(parts) == 3, "bad stats line %r" % line
            out[parts[1]] = parts[2]
        return out

    def stats_queue_raw(self):
        return self.cmd(b"stats queue\r\n", b"END\r\n")

    def queue_counters(self):
        """{queue: (enqueued, dequeued)} from `stats queue`."""
        st = self.stats("queue")
        res = {}
        for k, v in st.items():
            enq, deq = v.split("/")
            res[k] = (int(enq), int(deq))
        return res

    def drain(self, key, limit):
        """get until END; returns the list of bodies (bounded by `limit`+1 gets)."""
        out = []
        for _ in range(limit + 1):
            body = self.get(key)
            if body is None:
                return out
            out.append(body)
        raise AssertionError("queue %r has more than %d messages" % (key, limit))


# --------------------------------------------------------------------------------------
# daemon process
# --------------------------------------------------------------------------------------

class Daemon:
    """One memcacheq process on 127.0.0.1:<free port> with its home in `home`."""

    def __init__(self, binary, home, args=(), env=None, logdir=None, port=None):
        self.binary = str(binary)
        self.home = Path(home)
        self.args = list(args)
        self.extra_env = dict(env or {})
        self.logdir = Path(logdir) if logdir else self.home.parent
        self.port = port
        self.proc = None
        self.starts = 0
        self._stderr_path = None

    # -- lifecycle -----------------------------------------------------------------
    def command(self):
        return [self.binary, "-p", str(self.port), "-l", "127.0.0.1",
                "-H", str(self.home)] + self.args

    def start(self, wait=True):
        assert self.proc is None or self.proc.poll() is not None, "already running"
        auto_port = self.port is None
        for attempt in range(3):
            if auto_port:
                self.port = free_port()
            self.starts += 1
            self._stderr_path = self.logdir / ("daemon-%d-%d.stderr" % (self.port, self.starts))
            self._stderr = open(self._stderr_path, "wb")
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                         stdout=self._stderr, stderr=self._stderr,
                                         env=clean_env(self.extra_env))
            if not wait:
                return self
            # a freshly picked port can be taken by someone else before the daemon binds
            # it: then try another port (only when the port was ours to choose)
            if self.wait_listening(retry_on_port_race=auto_port and attempt < 2):
                return self
            self._stderr.close()
        raise AssertionError("unreachable")

    def wait_listening(self, timeout=START_TIMEOUT, retry_on_port_race=False):
        deadline = time.monotonic() + timeout
        while True:
            rc = self.proc.poll()
            if rc is not None:
                if retry_on_port_race and "already in use" in self.stderr().lower() \
                        and str(self.port) in self.stderr():
                    return False
                pytest.fail("memcacheq exited with %s before listening; cmd=%s\nstderr:\n%s"
                            % (rc, self.command(), self.stderr()))
            # the listener must be this process's (not someone else's on a reused port),
            # and its loop must run: the socket is bound before the store opens, so a
            # connection alone is accepted by the kernel while the daemon still starts
            if pid_listens_on(self.proc.pid, self.port) and self._answers():
                return True
            if time.monotonic() > deadline:
                self.kill9()
                pytest.fail("memcacheq did not accept on port %d within %.0fs\nstderr:\n%s"
                            % (self.port, timeout, self.stderr()))
            time.sleep(0.05)

    def _answers(self):
        return first_reply(socket.AF_INET, ("127.0.0.1", self.port)).endswith(b"\r\n")

    def stderr(self):
        if self._stderr_path is None:
            return ""
        try:
            return self._stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    @property
    def pid(self):
        return self.proc.pid

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout=STOP_TIMEOUT):
        """Send `sig`, wait for exit and return the exit code (negative: killed by signal)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill9()
            pytest.fail("memcacheq did not exit within %.0fs after %s\nstderr:\n%s"
                        % (timeout, sig, self.stderr()))
        self._stderr.close()
        return rc

    def kill9(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        if self.proc is not None:
            self._stderr.close()

    def restart(self, args=None, sig=signal.SIGTERM):
        """Stop (if still running; the exit code must be 0) and start again on the same
        home and port."""
        if self.running():
            rc = self.stop(sig)
            assert rc == 0, "exit code %r after %s\nstderr:\n%s" % (rc, sig, self.stderr())
        if args is not None:
            self.args = list(args)
        return self.start()

    def client(self, **kw):
        return Conn(self.port, **kw)


@pytest.fixture(scope="session")
def mcq_bin():
    path = binary_path()
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail("memcacheq binary not found or not executable: %s "
                    "(build it with `meson setup build && meson compile -C build`, "
                    "or set MEMCACHEQ_BIN)" % path)
    return path


@pytest.fixture
def make_daemon(mcq_bin, tmp_path):
    """Factory: make_daemon(args=[...], home=None, env=None, start=True) -> Daemon.
    Every daemon is killed at teardown."""
    made = []
    counter = [0]

    def factory(args=(), home=None, env=None, start=True, wait=True):
        counter[0] += 1
        if home is None:
            home = tmp_path / ("home%d" % counter[0])
        d = Daemon(mcq_bin, home, args=args, env=env, logdir=tmp_path)
        made.append(d)
        if start:
            d.start(wait=wait)
        return d

    yield factory
    for d in made:
        d.kill9()


@pytest.fixture
def daemon(make_daemon):
    """A running no-sync (-N) daemon for tests that are not about durability."""
    return make_daemon(["-N"])


@pytest.fixture
def conn(daemon):
    c = daemon.client()
    yield c
    c.close()


# --------------------------------------------------------------------------------------
# sd_notify receiver
# --------------------------------------------------------------------------------------

class NotifySocket:
    """An AF_UNIX datagram socket to pass as NOTIFY_SOCKET; collects the datagrams."""

    def __init__(self):
        # sun_path is limited to 108 bytes: keep it short, outside pytest's deep tmp dirs.
        self.dir = tempfile.mkdtemp(prefix="mcqn", dir="/tmp")
        self.path = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(IO_TIMEOUT)
        self.messages = []   # list of (monotonic time, {field: value} list)

    def _recv(self, timeout):
        self.sock.settimeout(max(0.001, timeout))
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return None
        fields = []
        for line in data.decode(errors="replace").split("\n"):
            if line:
                k, _, v = line.partition("=")
                fields.append((k, v))
        self.messages.append((time.monotonic(), fields))
        return fields

    def wait_for(self, key, value=None, timeout=IO_TIMEOUT):
        """Receive until a datagram has field `key` (with `value` if given).
        Returns that datagram's fields, or None on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            fields = self._recv(left)
            if fields is None:
                return None
            for k, v in fields:
                if k == key and (value is None or v == value):
                    return fields

    def collect(self, duration):
        """Receive everything arriving in the next `duration` seconds."""
        deadline = time.monotonic() + duration
        got = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return got
            fields = self._recv(left)
            if fields is not None:
                got.append(fields)

    def all_fields(self):
        return [f for _, fields in self.messages for f in fields]

    def close(self):
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def notify_socket():
    ns = NotifySocket()
    yield ns
    ns.close()


# --------------------------------------------------------------------------------------
# sanitizer reports (scripts/test runs the suite against an ASan+UBSan daemon in CI)
# --------------------------------------------------------------------------------------

SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "runtime error:", "LeakSanitizer")


def sanitizer_reports(directory):
    """{file name: first report lines} for every daemon stderr log under `directory`
    (Daemon writes them there as *.stderr) that holds a sanitizer report."""
    found = {}
    for path in sorted(Path(directory).rglob("*.stderr")):
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        for marker in SANITIZER_MARKERS:
            i = text.find(marker)
            if i >= 0:
                start = text.rfind("\n", 0, max(0, i - 200)) + 1
                found[path.name] = text[start:start + 6000]
                break
    return found


@pytest.fixture(autouse=True)
def _no_sanitizer_reports(tmp_path):
    """Fails the test (as a teardown error) if a daemon it ran reported an
    AddressSanitizer, UndefinedBehaviorSanitizer or LeakSanitizer finding.
    Autouse fixtures are set up first and torn down last, so this runs after
    make_daemon has stopped every daemon."""
    yield
    found = sanitizer_reports(tmp_path)
    if found:
        pytest.fail("sanitizer report(s) in the daemon's stderr:\n"
                    + "\n".join("--- %s ---\n%s" % kv for kv in found.items()),
                    pytrace=False)


# --------------------------------------------------------------------------------------
# small filesystems (disk-full and read-only tests)
# --------------------------------------------------------------------------------------

@contextlib.contextmanager
def mounted_tmpfs(mnt, size, why):
    """Mounts a tmpfs of `size` on the (new) directory `mnt` for the duration
    of the block; skips with `why` when not root, since only root can mount."""
    if os.geteuid() != 0:
        pytest.skip(why)
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s,mode=0700" % size,
                          "tmpfs", str(mnt)], capture_output=True, text=True)
    assert res.returncode == 0, "mount tmpfs failed: %s" % res.stderr
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
