#!/usr/bin/python3
"""The memcacheq scenario run inside a booted systemd (see run-in-container).

Drives the installed units with systemctl, talks to the daemon through the
sockets of memcacheq.socket, and writes what it observed to OUT/results.json
(plus OUT/journal.json and OUT/scenario.log).  It asserts nothing itself: the
host-side test (tests/integration/test_real_systemd.py) judges the results, so
a failed step still leaves the other steps' results to look at.  Results are
rewritten after every step, so a scenario that dies half-way says how far it got.

Only the Python standard library is used: the container has the host's /usr.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback

OUT = sys.argv[1] if len(sys.argv) > 1 else "/out"
SVC = "memcacheq.service"
SOCK = "memcacheq.socket"
UNIX_PATH = "/run/memcacheq/memcacheq.sock"
ADDRS = [
    ("inet", socket.AF_INET, ("127.0.0.1", 22201)),
    ("inet6", socket.AF_INET6, ("::1", 22201)),
    ("unix", socket.AF_UNIX, UNIX_PATH),
]
IO_TIMEOUT = 10.0
RESTARTS = int(os.environ.get("MCQ_RESTARTS", "5"))

results = {"steps": {}, "errors": []}
T0 = time.monotonic()
logf = open(os.path.join(OUT, "scenario.log"), "w", buffering=1)


def log(msg):
    line = "[%7.3f] %s" % (time.monotonic() - T0, msg)
    logf.write(line + "\n")
    print("scenario: " + line, flush=True)


def save():
    tmp = os.path.join(OUT, "results.json.tmp")
    with open(tmp, "w") as f:
        json.dump(results, f, indent=2, sort_keys=True)
    os.replace(tmp, os.path.join(OUT, "results.json"))


def run(*cmd, check=False, timeout=60):
    p = subprocess.run(list(cmd), stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=timeout)
    log("$ %s -> %d %s%s" % (" ".join(cmd), p.returncode, p.stdout.strip()[:300],
                             (" [stderr: %s]" % p.stderr.strip()[:300]) if p.stderr.strip() else ""))
    if check and p.returncode != 0:
        raise RuntimeError("%s failed with %d: %s" % (" ".join(cmd), p.returncode, p.stderr))
    return p


def show(unit, *props):
    p = run("systemctl", "show", unit, "--property=" + ",".join(props))
    out = {}
    for line in p.stdout.splitlines():
        k, _, v = line.partition("=")
        out[k] = out[k] + "\n" + v if k in out else v   # Listen= comes once per socket
    return out


def is_active(unit):
    return run("systemctl", "is-active", unit).stdout.strip()


def main_pid():
    return int(show(SVC, "MainPID")["MainPID"] or 0)


def wait_for(pred, timeout, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    return pred()


# ---------------------------------------------------------------------------
# a minimal memcache text protocol client
# ---------------------------------------------------------------------------

class Client:
    def __init__(self, addr=ADDRS[0], timeout=IO_TIMEOUT):
        _, family, sa = addr
        self.s = socket.socket(family, socket.SOCK_STREAM)
        self.s.settimeout(timeout)
        try:
            self.s.connect(sa)
        except OSError:
            self.s.close()
            raise
        self.buf = b""

    def close(self):
        self.s.close()

    def _fill(self):
        d = self.s.recv(65536)
        if not d:
            raise EOFError("connection closed by the server")
        self.buf += d

    def line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def exact(self, n):
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def set(self, key, body):
        self.s.sendall(b"set %s 0 0 %d\r\n%s\r\n" % (key.encode(), len(body), body))
        return self.line()

    def get(self, key):
        """The body of the oldest message of `key`, or None if it is empty."""
        self.s.sendall(b"get %s\r\n" % key.encode())
        line = self.line()
        if line == b"END":
            return None
        parts = line.split(b" ")
        if parts[0] != b"VALUE" or len(parts) != 4:
            raise ValueError("unexpected reply %r" % line)
        body = self.exact(int(parts[3]) + 2)[:-2]
        end = self.line()
        if end != b"END":
            raise ValueError("expected END, got %r" % end)
        return body

    def cmd(self, data):
        self.s.sendall(data)
        return self.line()

    def stats(self):
        self.s.sendall(b"stats\r\n")
        out = {}
        while True:
            line = self.line().decode()
            if line == "END":
                return out
            _, k, v = line.split(" ", 2)
            out[k] = v

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def drain(key, addr=ADDRS[0]):
    out = []
    with Client(addr) as c:
        while True:
            b = c.get(key)
            if b is None:
                return out
            out.append(b.decode())


# ---------------------------------------------------------------------------
# steps
# ---------------------------------------------------------------------------

def step_units():
    """Where the units come from, and the socket before anyone connects."""
    r = {}
    for u in (SOCK, SVC):
        r[u] = show(u, "LoadState", "FragmentPath", "DropInPaths", "UnitFileState")
    r["systemd_version"] = run("systemctl", "--version").stdout.splitlines()[0]
    # Options through the environment file: -v adds info-level lines.
    os.makedirs("/etc/default", exist_ok=True)
    with open("/etc/default/memcacheq", "w") as f:
        f.write('# written by the scenario\nMEMCACHEQ_OPTS="-v"\n')
    run("systemctl", "start", SOCK, check=True)
    r["socket_active"] = is_active(SOCK)
    r["socket_listen"] = show(SOCK, "Listen")["Listen"]
    st = os.stat(UNIX_PATH)
    r["unix_socket_mode"] = "%o" % (st.st_mode & 0o7777)
    r["unix_dir_mode"] = "%o" % (os.stat(os.path.dirname(UNIX_PATH)).st_mode & 0o7777)
    time.sleep(0.5)
    r["service_before_connect"] = is_active(SVC)
    r["service_pid_before_connect"] = main_pid()
    return r


def step_activation():
    """The first connection starts the service; set/get on every socket."""
    r = {"roundtrips": {}}
    t = time.monotonic()
    with Client(ADDRS[0]) as c:
        r["first_set"] = c.set("act", b"first").decode()
        r["first_set_seconds"] = round(time.monotonic() - t, 3)
        r["first_get"] = (c.get("act") or b"").decode()
        r["stats_pid"] = int(c.stats()["pid"])
    r["service_after_connect"] = is_active(SVC)
    r["main_pid"] = main_pid()
    for name, family, sa in ADDRS:
        body = ("via-" + name).encode()
        try:
            with Client((name, family, sa)) as c:
                st = c.set("act-" + name, body).decode()
                got = (c.get("act-" + name) or b"").decode()
            r["roundtrips"][name] = {"set": st, "get": got}
        except (OSError, EOFError, ValueError) as e:
            r["roundtrips"][name] = {"error": repr(e)}
    pid = r["main_pid"]
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(("Uid:", "CapEff:", "CapBnd:", "NoNewPrivs:", "Seccomp:")):
                    k, v = line.split(":", 1)
                    r["proc_" + k] = v.split()[0] if k == "Uid" else v.strip()
        with open("/proc/%d/environ" % pid, "rb") as f:
            env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
        for k in (b"LISTEN_FDS", b"LISTEN_FDNAMES", b"STATE_DIRECTORY", b"WATCHDOG_USEC",
                  b"MEMCACHEQ_OPTS", b"NOTIFY_SOCKET"):
            r["env_" + k.decode()] = env.get(k, b"").decode() or None
        r["cmdline"] = open("/proc/%d/cmdline" % pid, "rb").read().split(b"\0")[:-1]
        r["cmdline"] = [a.decode() for a in r["cmdline"]]
        # Scheduling policy of each thread (field 41 of stat: 0 normal, 3 batch).
        r["thread_policies"] = {}
        for tid in os.listdir("/proc/%d/task" % pid):
            stat = open("/proc/%d/task/%s/stat" % (pid, tid)).read()
            fields = stat[stat.rindex(")") + 2:].split()
            comm = stat[stat.index("(") + 1:stat.rindex(")")]
            r["thread_policies"][comm] = int(fields[38])
    except OSError as e:
        r["proc_error"] = repr(e)
    r["user"] = run("getent", "passwd", "memcacheq").stdout.strip()
    # The daemon publishes itself on the system bus (in the background, so wait).
    r["bus_names"] = wait_for(lambda: [l.split()[:2] for l in run(
        "busctl", "--system", "list", "--no-pager", "--no-legend").stdout.splitlines()
        if l.startswith("org.memcacheq.")], 5, 0.2)
    r["bus_introspect_rc"] = run("busctl", "--system", "introspect", "--no-pager",
                                 "org.memcacheq.MemcacheQ1", "/org/memcacheq/MemcacheQ1").returncode
    r["state_dir"] = sorted(os.listdir("/var/lib/memcacheq")) if os.path.isdir("/var/lib/memcacheq") else None
    r["state_dir_is_link"] = os.path.islink("/var/lib/memcacheq")
    return r


class Loop(threading.Thread):
    """Keeps connecting and doing set/get until stopped: every request on a
    fresh connection (rotating over the three sockets), alternating a set of a
    new message and a get of the oldest one.  Counts every failure:
      connect_errors  connect() failed (refused, timeout...)
      unanswered      connected and sent the request, but the server closed the
                      connection before sending any byte of the reply
      cut             the reply started but the connection broke in the middle
      bad_replies     a complete reply that is not the expected one"""

    def __init__(self):
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.acked = []          # ids whose set got STORED
        self.unacked = []        # ids whose set got no reply
        self.got = []            # ids returned by get
        self.connect_errors = []
        self.unanswered = []
        self.cut = []
        self.bad_replies = []
        self.iterations = 0
        self.slowest = 0.0

    def one(self, i, addr, op):
        mid = "m%06d" % i
        try:
            c = Client(addr, timeout=IO_TIMEOUT)
        except OSError as e:
            self.connect_errors.append("%s %s %s: %r" % (mid, addr[0], op, e))
            time.sleep(0.01)
            return
        t = time.monotonic()
        try:
            if op == "set":
                reply = c.set("rq", mid.encode())
                if reply == b"STORED":
                    self.acked.append(mid)
                else:
                    self.bad_replies.append("%s set: %r" % (mid, reply))
            else:
                body = c.get("rq")
                if body is not None:
                    self.got.append(body.decode())
        except (OSError, EOFError, ValueError) as e:
            if op == "set":
                self.unacked.append(mid)
            what = "%s %s %s: %r" % (mid, addr[0], op, e)
            if isinstance(e, ValueError):
                self.bad_replies.append(what)
            elif c.buf:
                self.cut.append(what)
            else:
                self.unanswered.append(what)
        finally:
            c.close()
        self.slowest = max(self.slowest, time.monotonic() - t)

    def run(self):
        i = 0
        while not self.stop.is_set():
            i += 1
            self.one(i, ADDRS[i % len(ADDRS)], "set" if i % 2 else "get")
            self.iterations = i


def step_restarts():
    r = {"restarts": []}
    loop = Loop()
    loop.start()
    time.sleep(1.0)
    for n in range(RESTARTS):
        before = main_pid()
        ops_before = len(loop.acked)
        t = time.monotonic()
        p = run("systemctl", "restart", SVC)
        took = time.monotonic() - t
        after = main_pid()
        time.sleep(0.8)
        r["restarts"].append({"rc": p.returncode, "seconds": round(took, 3),
                              "pid_before": before, "pid_after": after,
                              "acked_so_far": ops_before})
    time.sleep(0.5)
    loop.stop.set()
    loop.join(30)
    r["loop_alive_after_join"] = loop.is_alive()
    remaining = drain("rq")
    acked, got = set(loop.acked), loop.got + remaining
    got_set = set(got)
    r.update({
        "iterations": loop.iterations,
        "acked": len(acked),
        "retrieved_in_loop": len(loop.got),
        "retrieved_after": len(remaining),
        "connect_errors": len(loop.connect_errors),
        "unanswered": len(loop.unanswered),
        "cut": len(loop.cut),
        "bad_replies": len(loop.bad_replies),
        "connection_errors": len(loop.connect_errors) + len(loop.unanswered) + len(loop.cut),
        "lost": len(acked - got_set),
        "lost_ids": sorted(acked - got_set)[:20],
        "duplicates": len(got) - len(got_set),
        "stored_unacked": len(got_set - acked),
        "order_ok": got == sorted(got),
        "error_samples": (loop.connect_errors + loop.unanswered + loop.cut + loop.bad_replies)[:20],
        "slowest_request_seconds": round(loop.slowest, 3),
        "n_restarts_property": show(SVC, "NRestarts")["NRestarts"],
        "service_active": is_active(SVC),
    })
    return r


def step_watchdog():
    r = {}
    os.makedirs("/run/systemd/system/memcacheq.service.d", exist_ok=True)
    with open("/run/systemd/system/memcacheq.service.d/50-test-watchdog.conf", "w") as f:
        f.write("[Service]\nWatchdogSec=2s\n")
    run("systemctl", "daemon-reload", check=True)
    run("systemctl", "restart", SVC, check=True)
    r["watchdog_usec"] = show(SVC, "WatchdogUSec")["WatchdogUSec"]
    acked = []
    for i in range(50):
        with Client(ADDRS[i % 3]) as c:
            if c.set("wq", b"w%03d" % i) == b"STORED":
                acked.append("w%03d" % i)
    r["acked"] = len(acked)
    pid = main_pid()
    n0 = int(show(SVC, "NRestarts")["NRestarts"])
    # A daemon that pings keeps running past several watchdog periods.
    time.sleep(5)
    r["pid_unchanged_while_healthy"] = main_pid() == pid
    r["nrestarts_while_healthy"] = int(show(SVC, "NRestarts")["NRestarts"]) - n0
    t = time.monotonic()
    os.kill(pid, signal.SIGSTOP)
    log("SIGSTOP %d" % pid)
    new = wait_for(lambda: (main_pid() not in (0, pid) and is_active(SVC) == "active"), 20, 0.1)
    r["restarted"] = bool(new)
    r["restart_seconds"] = round(time.monotonic() - t, 3)
    r["old_pid"], r["new_pid"] = pid, main_pid()
    r["nrestarts_after"] = int(show(SVC, "NRestarts")["NRestarts"]) - n0
    r["old_pid_gone"] = not os.path.exists("/proc/%d" % pid)
    j = run("journalctl", "-b", "-u", SVC, "--no-pager", "-o", "cat").stdout
    r["journal_watchdog_lines"] = [l for l in j.splitlines()
                                   if "atchdog" in l and ("timeout" in l or "SIGABRT" in l
                                                          or "ABRT" in l)][:5]
    got = drain("wq")
    r["retrieved"] = len(got)
    r["lost"] = len(set(acked) - set(got))
    r["in_order"] = got == acked
    os.unlink("/run/systemd/system/memcacheq.service.d/50-test-watchdog.conf")
    run("systemctl", "daemon-reload", check=True)
    return r


def step_socket_restart():
    """`systemctl restart memcacheq.socket` while the service runs restarts
    both; afterwards the socket still listens when the service stops, and
    stopping the socket removes the unix socket file."""
    r = {}
    run("systemctl", "start", SOCK, check=True)
    with Client(ADDRS[0]) as c:
        r["acked"] = sum(c.set("srq", b"s%d" % i) == b"STORED" for i in range(3))
    pid = main_pid()
    r["service_before"] = is_active(SVC)
    p = run("systemctl", "restart", SOCK)
    r["restart_rc"], r["restart_stderr"] = p.returncode, p.stderr.strip()
    r["socket_after_restart"] = is_active(SOCK)
    # systemctl waits for the socket's job; the service's start follows it
    r["service_after_restart"] = wait_for(lambda: is_active(SVC) == "active" and "active", 10) \
        or is_active(SVC)
    r["pid_before"], r["pid_after"] = pid, main_pid()
    got = []
    try:
        with Client(ADDRS[2]) as c:
            got.append((c.get("srq") or b"").decode())
    except (OSError, EOFError, ValueError) as e:
        r["get_after_restart_error"] = repr(e)
    run("systemctl", "stop", SVC)
    r["socket_after_service_stop"] = is_active(SOCK)
    r["service_after_service_stop"] = is_active(SVC)
    try:
        got += drain("srq", ADDRS[1])
    except (OSError, EOFError, ValueError) as e:
        r["drain_error"] = repr(e)
    r["got"] = got
    r["service_reactivated"] = is_active(SVC)
    r["unix_socket_while_listening"] = os.path.exists(UNIX_PATH)
    run("systemctl", "stop", SOCK)
    r["socket_after_socket_stop"] = is_active(SOCK)
    r["service_after_socket_stop"] = is_active(SVC)
    r["unix_socket_after_socket_stop"] = os.path.exists(UNIX_PATH)
    return r


def journal_json(*args):
    """The entries `journalctl ARGS -o json` prints, as dicts (other lines skipped)."""
    entries = []
    for line in run("journalctl", *args, "-o", "json", "--no-pager").stdout.splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue
    return entries


def step_debug_log():
    """At -vv, in the unit's sandbox: what the daemon logs while it starts,
    serves and joins the bus (message and CODE_FILE of each entry)."""
    r = {}
    with open("/etc/default/memcacheq", "w") as f:
        f.write('MEMCACHEQ_OPTS="-vv"\n')
    cursor = run("journalctl", "-n", "0", "--show-cursor", "--no-pager").stdout.strip().split("cursor: ")[-1]
    run("systemctl", "start", SOCK, check=True)
    with Client(ADDRS[0]) as c:
        r["set"] = c.set("dbg", b"x").decode()
        r["get"] = (c.get("dbg") or b"").decode()
    r["cmdline"] = [a.decode() for a in
                    open("/proc/%d/cmdline" % main_pid(), "rb").read().split(b"\0")[:-1]]
    r["bus_names"] = wait_for(lambda: [l.split()[0] for l in run(
        "busctl", "--system", "list", "--no-pager", "--no-legend").stdout.splitlines()
        if l.startswith("org.memcacheq.")], 5, 0.2)
    run("systemctl", "stop", SVC, check=True)
    with open("/etc/default/memcacheq", "w") as f:
        f.write('MEMCACHEQ_OPTS="-v"\n')
    keep = ("MESSAGE", "PRIORITY", "CODE_FILE", "GLIB_DOMAIN", "_TRANSPORT")
    r["entries"] = [{k: e.get(k) for k in keep}
                    for e in journal_json("--after-cursor=" + cursor, "-u", SVC)
                    if e.get("_PID") != "1"]
    return r


def step_standalone():
    """With the socket unit masked the service still starts and listens on the
    daemon's own default, 127.0.0.1:22201 (and nothing else)."""
    r = {}
    run("systemctl", "stop", SVC, SOCK, check=True)
    run("systemctl", "mask", "--runtime", SOCK, check=True)
    run("systemctl", "daemon-reload", check=True)
    p = run("systemctl", "start", SVC)
    r["start_rc"] = p.returncode
    r["service"] = is_active(SVC)
    r["socket"] = is_active(SOCK)
    pid = main_pid()
    try:
        with open("/proc/%d/environ" % pid, "rb") as f:
            r["listen_fds_env"] = b"LISTEN_FDS=" in f.read()
    except OSError as e:
        r["listen_fds_env"] = repr(e)

    def try_rt(addr):
        try:
            with Client(addr, timeout=5) as c:
                st = c.set("solo", b"standalone").decode()
                got = (c.get("solo") or b"").decode()
                return {"set": st, "get": got}
        except (OSError, EOFError, ValueError) as e:
            return {"error": type(e).__name__}

    r["inet"] = try_rt(ADDRS[0])
    r["inet6"] = try_rt(ADDRS[1])
    r["unix"] = try_rt(ADDRS[2])
    run("systemctl", "stop", SVC, check=True)
    r["stop_result"] = show(SVC, "Result", "ExecMainStatus")
    run("systemctl", "unmask", "--runtime", SOCK, check=True)
    run("systemctl", "daemon-reload", check=True)
    return r


def step_stop():
    """A clean stop: STOPPING=1 reaches systemd, exit status 0, Result=success."""
    r = {}
    run("systemctl", "start", SOCK, check=True)
    with Client(ADDRS[2]) as c:
        r["set"] = c.set("final", b"kept").decode()
    r["service_before_stop"] = is_active(SVC)
    # PID 1 logs every notification it gets at debug level.
    run("systemd-analyze", "log-level", "debug")
    cursor = run("journalctl", "-n", "0", "--show-cursor", "--no-pager").stdout.strip().split("cursor: ")[-1]
    t = time.monotonic()
    p = run("systemctl", "stop", SVC)
    r["stop_rc"] = p.returncode
    r["stop_seconds"] = round(time.monotonic() - t, 3)
    run("systemd-analyze", "log-level", "info")
    r["show"] = show(SVC, "Result", "ExecMainStatus", "ExecMainCode", "ActiveState", "NRestarts")
    j = run("journalctl", "--after-cursor=" + cursor, "--no-pager", "-o", "cat").stdout
    r["notify_lines"] = [l for l in j.splitlines() if "notification message" in l and "memcacheq" in l][:10]
    r["stopping_notified"] = any("STOPPING=1" in l for l in r["notify_lines"])
    # The message survived; the next connection starts the service again.
    r["socket_after_stop"] = is_active(SOCK)
    with Client(ADDRS[0]) as c:
        r["after_restart_get"] = (c.get("final") or b"").decode()
    run("systemctl", "stop", SVC, SOCK)
    r["final_show"] = show(SVC, "Result", "ExecMainStatus", "ActiveState")
    return r


def step_journal():
    keep = ("MESSAGE", "PRIORITY", "_PID", "_TRANSPORT", "SYSLOG_IDENTIFIER", "GLIB_DOMAIN",
            "_SYSTEMD_UNIT", "CODE_FILE", "CODE_FUNC")
    entries = [{k: e.get(k) for k in keep if k in e} for e in journal_json("-b", "-u", SVC)]
    with open(os.path.join(OUT, "journal.json"), "w") as f:
        json.dump(entries, f, indent=1)
    daemon = [e for e in entries if e.get("_TRANSPORT") in ("journal", "stdout")
              and e.get("SYSLOG_IDENTIFIER") != "systemd"]
    return {"entries": len(entries), "daemon_entries": len(daemon)}


STEPS = [("units", step_units), ("activation", step_activation),
         ("restarts", step_restarts), ("watchdog", step_watchdog),
         ("socket_restart", step_socket_restart), ("debug_log", step_debug_log),
         ("standalone", step_standalone), ("stop", step_stop), ("journal", step_journal)]


def main():
    results["started"] = time.time()
    for name, fn in STEPS:
        log("=== step %s" % name)
        t = time.monotonic()
        try:
            results["steps"][name] = fn()
        except Exception:
            tb = traceback.format_exc()
            log(tb)
            results["errors"].append({"step": name, "traceback": tb})
        results.setdefault("step_seconds", {})[name] = round(time.monotonic() - t, 3)
        save()
    results["done"] = True
    results["seconds"] = round(time.monotonic() - T0, 3)
    save()
    log("done in %.1f s" % results["seconds"])


if __name__ == "__main__":
    main()
