"""memcacheq's units under a real systemd 252, booted in a throw-away container.

A build configured with -Dprefix=/usr is staged with `meson install --destdir`.
tests/systemd/run-in-container then boots the host's systemd with
systemd-nspawn, with the staged tree laid over /usr. The scenario
(tests/systemd/scenario.py) runs as a oneshot unit inside the container and
writes what it saw to a bind-mounted directory, and the tests here judge it.
The container is booted once per session; each test checks one part of the
results.

Needs root and systemd-nspawn (package systemd-container, installed by
`scripts/deps test`). It skips only when one of them is missing; CI has both.

The staging build directory is $MCQ_STAGE_BUILD, else <repo>/build-stage. It
is configured on first use and recompiled on every run.
"""

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import REPO

RUNNER = REPO / "tests" / "systemd" / "run-in-container"
NSPAWN = shutil.which("systemd-nspawn")
BOOT_TIMEOUT = 180          # run-in-container's own bound on systemd-nspawn
RESTARTS = 5

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="booting systemd in a container needs root"),
    pytest.mark.skipif(NSPAWN is None,
                       reason="systemd-nspawn not installed (package systemd-container; "
                              "`scripts/deps test` installs it)"),
]


def _run(cmd, timeout, **kw):
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       timeout=timeout, **kw)
    if p.returncode != 0:
        pytest.fail("%s failed (%d)\nstdout:\n%s\nstderr:\n%s"
                    % (" ".join(map(str, cmd)), p.returncode, p.stdout[-3000:], p.stderr[-3000:]))
    return p


def _stage(tmp):
    """meson install --destdir of a -Dprefix=/usr build; returns the stage dir."""
    build = Path(os.environ.get("MCQ_STAGE_BUILD", str(REPO / "build-stage")))
    if not (build / "meson-private" / "coredata.dat").exists():
        _run(["meson", "setup", "--prefix=/usr", str(build), str(REPO)], 300)
    else:
        opts = json.loads(_run(["meson", "introspect", "--buildoptions", str(build)], 60).stdout)
        prefix = [o["value"] for o in opts if o["name"] == "prefix"][0]
        if prefix != "/usr":
            _run(["meson", "configure", "-Dprefix=/usr", str(build)], 60)
    _run(["meson", "compile", "-C", str(build)], 600)
    stage = tmp / "stage"
    _run(["meson", "install", "-C", str(build), "--no-rebuild", "--quiet",
          "--destdir", str(stage)], 300)
    return stage


@pytest.fixture(scope="session")
def boot(tmp_path_factory):
    """Boots the container once; returns (results, journal entries, info)."""
    tmp = tmp_path_factory.mktemp("real-systemd")
    stage = _stage(tmp)
    out = tmp / "out"
    out.mkdir()
    env = dict(os.environ, MCQ_NSPAWN_TIMEOUT=str(BOOT_TIMEOUT), MCQ_RESTARTS=str(RESTARTS))
    t = time.monotonic()
    try:
        p = subprocess.run([str(RUNNER), str(stage), str(out)], stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=BOOT_TIMEOUT + 60, env=env)
    except subprocess.TimeoutExpired as e:
        pytest.fail("run-in-container did not finish in %d s; output:\n%s"
                    % (BOOT_TIMEOUT + 60, e.stdout))
    wall = time.monotonic() - t
    log = (out / "scenario.log").read_text() if (out / "scenario.log").exists() else ""
    info = {"wall_seconds": wall, "rc": p.returncode, "stdout": p.stdout, "stderr": p.stderr,
            "scenario_log": log, "out": out}
    print("\nreal-systemd: container boot + scenario took %.1f s (results in %s)" % (wall, out))
    if p.returncode != 0 or not (out / "results.json").exists():
        pytest.fail("run-in-container exited with %d, results: %s\nstderr:\n%s\nscenario log:\n%s"
                    % (p.returncode, (out / "results.json").exists(), p.stderr[-4000:], log[-6000:]))
    results = json.loads((out / "results.json").read_text())
    journal = json.loads((out / "journal.json").read_text()) if (out / "journal.json").exists() else []
    return results, journal, info


def step(boot, name):
    results, _, info = boot
    errs = [e for e in results.get("errors", []) if e["step"] == name]
    assert not errs, "scenario step %r raised:\n%s\nscenario log:\n%s" % (
        name, errs[0]["traceback"], info["scenario_log"][-4000:])
    assert name in results["steps"], "scenario did not reach step %r" % name
    return results["steps"][name]


def test_scenario_completed_quickly(boot):
    results, _, info = boot
    assert results.get("done"), "scenario did not finish:\n" + info["scenario_log"][-4000:]
    assert not results["errors"], json.dumps(results["errors"], indent=1)
    # a boot takes about a second; the scenario is mostly the restart and watchdog waits
    assert info["wall_seconds"] < 60, "boot + scenario took %.1f s" % info["wall_seconds"]


def test_installed_units_are_used(boot):
    r = step(boot, "units")
    assert r["systemd_version"].startswith("systemd ")
    for unit in ("memcacheq.socket", "memcacheq.service"):
        assert r[unit]["LoadState"] == "loaded", r[unit]
        # the staged `meson install`, seen through the /usr overlay
        assert r[unit]["FragmentPath"] in ("/lib/systemd/system/" + unit,
                                           "/usr/lib/systemd/system/" + unit), r[unit]


def test_socket_listens_and_service_waits(boot):
    r = step(boot, "units")
    assert r["socket_active"] == "active"
    assert r["socket_listen"].splitlines() == [
        "127.0.0.1:22201 (Stream)", "[::1]:22201 (Stream)", "/run/memcacheq/memcacheq.sock (Stream)"]
    assert r["unix_socket_mode"] == "660"
    assert r["service_before_connect"] == "inactive"
    assert r["service_pid_before_connect"] == 0


def test_first_connection_starts_service(boot):
    r = step(boot, "activation")
    assert r["first_set"] == "STORED" and r["first_get"] == "first"
    assert r["service_after_connect"] == "active"
    assert r["stats_pid"] == r["main_pid"] > 0
    for name in ("inet", "inet6", "unix"):
        assert r["roundtrips"][name] == {"set": "STORED", "get": "via-" + name}, r["roundtrips"]
    # systemd's sockets, with their names; options from /etc/default/memcacheq
    assert r["env_LISTEN_FDS"] == "3"
    assert r["env_LISTEN_FDNAMES"] == "memcacheq:memcacheq:memcacheq"
    assert r["env_MEMCACHEQ_OPTS"] == "-v" and r["cmdline"] == ["/usr/bin/memcacheq", "-v"]
    assert r["env_STATE_DIRECTORY"] == "/var/lib/memcacheq"
    assert int(r["env_WATCHDOG_USEC"]) > 0


def test_sandbox(boot):
    r = step(boot, "activation")
    # the static system user from sysusers.d/memcacheq.conf, which DynamicUser= picks up
    user = r["user"].split(":")
    assert user[0] == "memcacheq" and int(user[2]) == int(r["proc_Uid"]) != 0, r["user"]
    assert int(r["proc_CapEff"], 16) == 0 and int(r["proc_CapBnd"], 16) == 0
    assert r["proc_NoNewPrivs"] == "1"
    assert r["proc_Seccomp"] == "2", "no seccomp filter"
    # The seccomp filter lets the sync thread take SCHED_BATCH (3), and
    # nothing else changes policy.
    assert r["thread_policies"]["mcq-sync"] == 3, r["thread_policies"]
    assert r["thread_policies"]["memcacheq"] == 0, r["thread_policies"]
    assert r["state_dir_is_link"], "/var/lib/memcacheq is not DynamicUser='s link to private/"
    assert "memcacheq.lock" in r["state_dir"] and any(f.startswith("log.") for f in r["state_dir"])


def test_on_the_system_bus(boot):
    """The hardened service can use the system bus: it owns its name."""
    r = step(boot, "activation")
    assert r["bus_names"] == [["org.memcacheq.MemcacheQ1", str(r["main_pid"])]], r["bus_names"]
    assert r["bus_introspect_rc"] == 0


def test_restarts_under_load(boot):
    r = step(boot, "restarts")
    print("\nrestart test: %d restarts, %d requests, %d acknowledged sets; "
          "connect errors %d, unanswered %d, cut %d, lost %d"
          % (len(r["restarts"]), r["iterations"], r["acked"], r["connect_errors"],
             r["unanswered"], r["cut"], r["lost"]))
    assert len(r["restarts"]) == RESTARTS
    pids = [x["pid_before"] for x in r["restarts"]] + [r["restarts"][-1]["pid_after"]]
    assert all(x["rc"] == 0 for x in r["restarts"]), r["restarts"]
    assert len(set(pids)) == RESTARTS + 1 and 0 not in pids, "not restarted each time: %r" % pids
    assert not r["loop_alive_after_join"]
    assert r["acked"] > 100 * RESTARTS, "the client loop hardly ran: %d sets" % r["acked"]
    # the kernel queued every connection made while the service restarted
    assert r["connect_errors"] == 0, r["error_samples"]
    assert r["lost"] == 0, "acknowledged messages lost: %r" % r["lost_ids"]
    assert r["duplicates"] == 0 and r["bad_replies"] == 0, r["error_samples"]
    assert r["stored_unacked"] == 0, "a set without a reply was stored"
    assert r["order_ok"], "messages came back out of order"
    assert r["cut"] == 0, r["error_samples"]
    assert r["n_restarts_property"] == "0", "the service failed during the restarts"


def test_restarts_answer_every_request(boot):
    """Every request sent on a connection the daemon accepted gets its reply,
    even when the daemon is told to stop right after accepting it."""
    r = step(boot, "restarts")
    assert r["unanswered"] == 0, (
        "%d request(s) got no reply: the stopping daemon closed a connection it had "
        "accepted without reading the request already sent on it: %r"
        % (r["unanswered"], r["error_samples"]))


def test_watchdog_restarts_stopped_daemon(boot):
    r = step(boot, "watchdog")
    assert r["watchdog_usec"] == "2s"
    assert r["acked"] == 50
    # a healthy daemon pings: no restart in 5 s with a 2 s watchdog
    assert r["pid_unchanged_while_healthy"] and r["nrestarts_while_healthy"] == 0
    assert r["restarted"], "not restarted %.1f s after SIGSTOP" % r["restart_seconds"]
    assert r["old_pid_gone"] and r["new_pid"] not in (0, r["old_pid"])
    assert r["nrestarts_after"] == 1
    assert 1.0 <= r["restart_seconds"] <= 10, r["restart_seconds"]
    assert any("Watchdog timeout" in l for l in r["journal_watchdog_lines"]), r
    assert r["lost"] == 0 and r["retrieved"] == 50 and r["in_order"]


def test_runs_without_socket_unit(boot):
    r = step(boot, "standalone")
    assert r["start_rc"] == 0 and r["service"] == "active" and r["socket"] == "inactive"
    assert r["listen_fds_env"] is False
    assert r["inet"] == {"set": "STORED", "get": "standalone"}
    # the daemon's own default is 127.0.0.1:22201 only
    assert "error" in r["inet6"] and "error" in r["unix"]
    assert r["stop_result"] == {"Result": "success", "ExecMainStatus": "0"}


def test_clean_stop(boot):
    r = step(boot, "stop")
    assert r["set"] == "STORED" and r["service_before_stop"] == "active"
    assert r["stop_rc"] == 0
    assert r["show"]["Result"] == "success", r["show"]
    assert r["show"]["ExecMainCode"] == "1" and r["show"]["ExecMainStatus"] == "0", r["show"]
    assert r["show"]["ActiveState"] == "inactive"
    assert r["stopping_notified"], "systemd got no STOPPING=1: %r" % r["notify_lines"]
    assert r["socket_after_stop"] == "active"
    assert r["after_restart_get"] == "kept"
    assert r["final_show"] == {"Result": "success", "ExecMainStatus": "0", "ActiveState": "inactive"}


def test_journal_has_daemon_lines_with_priorities(boot):
    step(boot, "journal")
    _, journal, _ = boot
    daemon = [e for e in journal if e.get("_PID") != "1"]
    assert daemon, "no entries from the daemon in journalctl -u memcacheq"

    def find(text, priority):
        hits = [e for e in daemon if text in (e.get("MESSAGE") or "")]
        assert hits, "no daemon journal line with %r" % text
        assert all(e.get("PRIORITY") == priority for e in hits), (text, hits[:3])
        return hits

    ready = find("ready on 127.0.0.1:22201", "5")
    assert any("(memcacheq)" in e["MESSAGE"] for e in ready), "activated sockets not named"
    find("shutting down", "5")
    stopped = find("stopped cleanly", "5")
    # -v from /etc/default/memcacheq: info lines are there, at info priority
    find("watchdog enabled", "6")
    # structured records straight to journald, not lines scraped from stderr
    assert all(e.get("_TRANSPORT") == "journal" for e in ready + stopped)
    assert all(e.get("_SYSTEMD_UNIT") == "memcacheq.service" for e in daemon)
    assert {"CODE_FILE", "CODE_FUNC"} <= set(ready[0])


def test_socket_restart_while_service_runs(boot):
    """Restarting the socket unit restarts the running service with it and
    keeps the queues; the socket then outlives a stop of the service."""
    r = step(boot, "socket_restart")
    assert r["acked"] == 3 and r["service_before"] == "active"
    assert r["restart_rc"] == 0, r["restart_stderr"]
    assert r["socket_after_restart"] == "active", r
    assert r["service_after_restart"] == "active", r
    assert r["pid_after"] not in (0, r["pid_before"]), r
    assert r["socket_after_service_stop"] == "active", r
    assert r["service_after_service_stop"] == "inactive", r
    # the next connection started the service again; no message lost
    assert r["got"] == ["s0", "s1", "s2"], r
    assert r["service_reactivated"] == "active", r


def test_socket_stop_removes_unix_socket(boot):
    r = step(boot, "socket_restart")
    assert r["unix_socket_while_listening"], r
    assert r["socket_after_socket_stop"] == "inactive", r
    assert r["service_after_socket_stop"] == "inactive", r
    assert not r["unix_socket_after_socket_stop"], "/run/memcacheq/memcacheq.sock outlived the stop"


def test_debug_log_in_sandbox(boot):
    """At -vv under the unit's sandbox nothing is refused to the daemon's
    threads, and CODE_FILE names the daemon's sources from the project root."""
    r = step(boot, "debug_log")
    assert r["cmdline"] == ["/usr/bin/memcacheq", "-vv"], r["cmdline"]
    assert r["set"] == "STORED" and r["get"] == "x"
    assert r["bus_names"] == ["org.memcacheq.MemcacheQ1"], r["bus_names"]
    entries = r["entries"]
    debug = [e for e in entries if e.get("PRIORITY") == "7"]
    assert debug, "no debug entries at -vv: %r" % entries[:5]
    refused = [e["MESSAGE"] for e in entries
               if "scheduler" in (e.get("MESSAGE") or "") or "not permitted" in (e.get("MESSAGE") or "")]
    assert not refused, refused
    ours = [e for e in entries if e.get("GLIB_DOMAIN") == "memcacheq"]
    assert ours, entries[:5]
    files = sorted({e.get("CODE_FILE") for e in ours})
    assert all(f and f.startswith("src/") and f.endswith(".c") for f in files), files
