#!/usr/bin/python3
"""The .deb's life cycle, run inside a booted systemd whose /usr, /var and
/etc are writable overlays of the host's (see test_packaging.py), so dpkg and
apt-get really run the maintainer scripts:

  install -> store messages -> install again (upgrade) -> remove
  -> install (queues served again) -> purge -> install (queues gone).

Writes what it saw to OUT/lifecycle.json (and a transcript to
OUT/lifecycle.log); the host-side test judges it.  Standard library only.

  package_lifecycle.py DEB OUT
"""

import json
import os
import socket
import subprocess
import sys
import time
import traceback

DEB, OUT = sys.argv[1], sys.argv[2]
STATE = "/var/lib/memcacheq"
PRIVATE = "/var/lib/private/memcacheq"
RUNDIR = "/run/memcacheq"
results = {"errors": []}
logf = open(os.path.join(OUT, "lifecycle.log"), "w", buffering=1)


def run(*cmd):
    p = subprocess.run(list(cmd), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       timeout=120)
    logf.write("# %s  (exit %d)\n%s%s" % (" ".join(cmd), p.returncode, p.stdout, p.stderr))
    return {"rc": p.returncode, "out": p.stdout, "err": p.stderr}


def talk(data, end):
    """One request on a fresh connection to 127.0.0.1:22201; the reply text."""
    with socket.create_connection(("127.0.0.1", 22201), timeout=10) as s:
        s.sendall(data)
        buf = b""
        while not buf.endswith(end):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    logf.write("> %r\n< %r\n" % (data, buf))
    return buf.decode(errors="replace")


def paths():
    return {"private": os.path.isdir(PRIVATE), "link": os.path.lexists(STATE),
            "rundir": os.path.lexists(RUNDIR),
            "unix_socket": os.path.lexists(RUNDIR + "/memcacheq.sock")}


def units():
    return {u: run("systemctl", "is-active", u)["out"].strip()
            for u in ("memcacheq.socket", "memcacheq.service")}


def install(name):
    r = {"dpkg": run("dpkg", "-i", DEB)["rc"]}
    r["units"] = units()
    r["status"] = run("dpkg-query", "-W", "-f", "${Status}", "memcacheq")["out"]
    results[name] = r
    return r


def main():
    # The host may forbid service starts in maintainer scripts; the container
    # is a system of its own.  man-db's trigger only costs time here.
    for f in ("/usr/sbin/policy-rc.d", "/var/lib/man-db/auto-update"):
        if os.path.lexists(f):
            os.unlink(f)
    results["user_before"] = run("getent", "passwd", "memcacheq")["rc"]
    cursor = run("journalctl", "-n", "0", "--show-cursor", "--no-pager")["out"].split("cursor: ")[-1].strip()

    install("first_install")
    results["journal_first_install"] = [
        l for l in run("journalctl", "--after-cursor=" + cursor, "--no-pager", "-o",
                       "short")["out"].splitlines()
        if "dbus-daemon" in l]
    results["user_after"] = run("getent", "passwd", "memcacheq")["out"].strip()
    results["stored"] = [talk(b"set keep 0 0 2\r\nm%d\r\n" % i, b"\r\n") for i in range(3)]
    results["paths_running"] = paths()
    # the same version again: the upgrade path of preinst and postinst
    install("upgrade")
    results["upgrade"]["stats_queue"] = talk(b"stats queue\r\n", b"END\r\n")

    results["remove"] = {"apt": run("apt-get", "remove", "-y", "memcacheq")["rc"],
                         "units": units(), "paths": paths(),
                         "status": run("dpkg-query", "-W", "-f", "${Status}", "memcacheq")["out"]}
    install("reinstall_after_remove")
    results["reinstall_after_remove"]["get"] = talk(b"get keep\r\n", b"END\r\n")

    results["purge"] = {"apt": run("apt-get", "purge", "-y", "memcacheq")["rc"],
                        "units": units(), "paths": paths(),
                        "status": run("dpkg-query", "-W", "-f", "${Status}", "memcacheq")["rc"]}
    install("reinstall_after_purge")
    r = results["reinstall_after_purge"]
    r["get"] = talk(b"get keep\r\n", b"END\r\n")
    r["stats_queue"] = talk(b"stats queue\r\n", b"END\r\n")
    r["set"] = talk(b"set fresh 0 0 3\r\nnew\r\n", b"\r\n")
    r["get_fresh"] = talk(b"get fresh\r\n", b"END\r\n")


if __name__ == "__main__":
    t = time.monotonic()
    try:
        main()
    except Exception:
        results["errors"].append(traceback.format_exc())
    results["seconds"] = round(time.monotonic() - t, 3)
    with open(os.path.join(OUT, "lifecycle.json"), "w") as f:
        json.dump(results, f, indent=1)
