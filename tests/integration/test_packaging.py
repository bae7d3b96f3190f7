"""Packaging: manual pages, one version number, the .deb and the .rpm.

Fast tests (every run): the manual pages in data/ and src/bench/ are clean
for groff -ww and mandoc -T lint, name every option their tool's --help
shows, and are installed by meson; meson.build's version is the one in
debian/changelog, memcacheq.spec, `--version` of every tool and the
`version` reply.

Slow tests (marked `slow`; deselect with -m "not slow"): scripts/package
builds the .deb (dpkg-buildpackage in a scratch copy of the tree, then
lintian: no error, no warning) and the .rpm (rpmbuild --nodeps, then rpmlint:
no error).  The .deb's files, unpacked with dpkg-deb -x, are booted in a
throw-away systemd container (../shared/notes/real-systemd.md, layer 3),
where `systemctl start memcacheq.socket` and a set/get on 127.0.0.1:22201
must work, and memcacheqctl must find the daemon on the system bus (the
package's D-Bus policy) with meson.build's version.  A second container, whose
/usr, /var and /etc are throw-away writable overlays of the host's, runs
dpkg and apt-get on the .deb for real (tests/systemd/package_lifecycle.py):
install, upgrade, remove (queues kept), purge (queues gone).  They need the
packages of `scripts/deps pkg`, and the boots need root; a missing tool is a
failure, not a skip.
"""

import json
import os
import re
import shutil
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from conftest import REPO, VERSION, binary_path, clean_env

DATA = REPO / "data"
PACKAGE = REPO / "scripts" / "package"


def _build_dir():
    # <build>/src/memcacheq
    return binary_path().resolve().parents[1]


def _tool(name):
    """Path of a built tool: memcacheq, memcacheqctl or memcacheq-bench."""
    build = _build_dir()
    path = {"memcacheq": binary_path(),
            "memcacheqctl": build / "src" / "memcacheqctl",
            "memcacheq-bench": build / "src" / "bench" / "memcacheq-bench"}[name]
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail("%s not built: %s" % (name, path))
    return path


def _run(cmd, timeout=60, check=True, **kw):
    p = subprocess.run([str(c) for c in cmd], stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=timeout, **kw)
    if check and p.returncode != 0:
        pytest.fail("%s exited with %d\nstdout:\n%s\nstderr:\n%s"
                    % (" ".join(map(str, cmd)), p.returncode, p.stdout[-4000:], p.stderr[-4000:]))
    return p


def _need(*programs):
    missing = [p for p in programs if shutil.which(p) is None]
    if missing:
        pytest.fail("missing %s: install the packaging tools with `scripts/deps pkg`"
                    % ", ".join(missing))


def meson_version():
    text = (REPO / "meson.build").read_text()
    m = re.search(r"project\(\s*'memcacheq'.*?version:\s*'([^']+)'", text, re.S)
    assert m, "no version in meson.build's project()"
    return m.group(1)


# --------------------------------------------------------------------------------------
# manual pages
# --------------------------------------------------------------------------------------

# page -> the tool whose --help it documents
MAN_PAGES = {
    "memcacheq.8": "memcacheq",
    "memcacheqctl.1": "memcacheqctl",
    "memcacheq-bench.1": "memcacheq-bench",
}


def man_page(name):
    """A page's source: every manual page is kept in data/."""
    if (DATA / name).is_file():
        return DATA / name
    pytest.fail("manual page %s not found in data/" % name)


def man_text(name):
    """The page's source with font changes dropped and the escapes for '-'
    undone (\\fB\\-p\\fR -> -p), for searching."""
    src = man_page(name).read_text()
    src = re.sub(r"\\f(\[[^]]*\]|\(..|.)", "", src)
    return src.replace("\\-", "-").replace("\\(hy", "-").replace("\\&", "")


def help_options(tool):
    """The long and short options that `tool --help` lists."""
    out = _run([_tool(tool), "--help"], env=clean_env({"LC_ALL": "C"})).stdout
    longs, shorts = set(), set()
    for line in out.splitlines():
        m = re.match(r"^\s+(?:-([A-Za-z0-9]),\s+)?--([a-z][a-z0-9-]*)", line)
        if m:
            if m.group(1):
                shorts.add(m.group(1))
            longs.add(m.group(2))
    assert len(longs) >= 4, "could not read the options of %s --help:\n%s" % (tool, out)
    return longs, shorts


@pytest.mark.parametrize("page", sorted(MAN_PAGES))
def test_man_page_groff_clean(page):
    _need("groff")
    p = _run(["groff", "-ww", "-z", "-man", man_page(page)], env=clean_env({"LC_ALL": "C"}),
             check=False)
    assert p.returncode == 0 and p.stderr == "", "groff -ww:\n" + p.stderr


@pytest.mark.parametrize("page", sorted(MAN_PAGES))
def test_man_page_mandoc_clean(page):
    _need("mandoc")
    p = _run(["mandoc", "-T", "lint", man_page(page)], env=clean_env({"LC_ALL": "C"}),
             check=False)
    assert p.returncode == 0 and (p.stdout + p.stderr) == "", "mandoc -T lint:\n" + p.stdout + p.stderr


@pytest.mark.parametrize("page", sorted(MAN_PAGES))
def test_man_page_lists_every_option(page):
    longs, shorts = help_options(MAN_PAGES[page])
    text = man_text(page)
    missing = sorted("--" + o for o in longs if not re.search(r"--%s\b" % re.escape(o), text))
    missing += sorted("-" + o for o in shorts if not re.search(r"(?<![-\w])-%s\b" % o, text))
    assert not missing, "%s does not document %s" % (page, ", ".join(missing))


def test_memcacheq_page_has_the_sections_users_look_for():
    text = man_text("memcacheq.8")
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "PROTOCOL", "DURABILITY",
                    "FILES", "ENVIRONMENT", "SIGNALS", '"EXIT STATUS"', '"SEE ALSO"'):
        assert re.search(r"^\.SH %s$" % re.escape(section), text, re.M), section
    for word in ("set", "get", "gets", "delete", "stats", "stats queue", "stats reset",
                 "version", "verbosity", "quit", "db_checkpoint", "db_archive",
                 "STORED", "END", "DELETED", "NOT_FOUND", "RESET", "ERROR",
                 "CLIENT_ERROR bad command line format", "CLIENT_ERROR bad data chunk",
                 "SERVER_ERROR object too large for cache", "CLIENT_ERROR line too long",
                 "memcacheq.lock", "queues.db", "messages.db", "purge.db", "log.*",
                 "STATE_DIRECTORY", "XDG_STATE_HOME", "NOTIFY_SOCKET", "LISTEN_FDS",
                 "WATCHDOG_USEC", "DBUS_SYSTEM_BUS_ADDRESS", "SIGTERM", "SIGINT", "SIGHUP",
                 "memcacheq.socket", "memcacheq.service"):
        assert word in text, "memcacheq.8 does not mention %r" % word


def test_man_pages_installed_by_meson():
    build = _build_dir()
    installed = json.loads(_run(["meson", "introspect", "--installed", build]).stdout).values()
    names = {Path(p).name for p in installed}
    for page in MAN_PAGES:
        assert page in names, "meson does not install %s (installs %s)" % (page, sorted(names))
    sections = {Path(p).name: Path(p).parent.name for p in installed}
    assert sections["memcacheq.8"] == "man8" and sections["memcacheqctl.1"] == "man1"


# --------------------------------------------------------------------------------------
# one version number
# --------------------------------------------------------------------------------------

def test_changelog_and_spec_carry_meson_version():
    v = meson_version()
    first = (REPO / "debian" / "changelog").read_text().splitlines()[0]
    m = re.match(r"^memcacheq \(([^)]+)\) \S+; urgency=\S+$", first)
    assert m, "debian/changelog's first line: %r" % first
    # 3.0 (native): the Debian version is the upstream version, no revision
    assert m.group(1) == v, "debian/changelog has %s, meson.build %s" % (m.group(1), v)
    assert (REPO / "debian" / "source" / "format").read_text().strip() == "3.0 (native)"
    spec = (REPO / "memcacheq.spec").read_text()
    sv = re.search(r"^Version:\s*(\S+)\s*$", spec, re.M)
    assert sv and sv.group(1) == v, "memcacheq.spec has Version %s, meson.build %s" % (
        sv and sv.group(1), v)
    top = re.search(r"^%changelog\n\*.* - (\S+)-\d+\s*$", spec, re.M)
    assert top and top.group(1) == v, "memcacheq.spec's last %%changelog entry is not %s" % v


def test_tools_print_meson_version():
    v = meson_version()
    assert VERSION == v, "tests/integration/conftest.py VERSION %s != meson.build %s" % (VERSION, v)
    for tool in MAN_PAGES.values():
        out = _run([_tool(tool), "--version"], env=clean_env()).stdout
        assert out == "%s %s\n" % (tool, v), "%s --version printed %r" % (tool, out)
    config_h = (_build_dir() / "config.h").read_text()
    assert '#define MCQ_VERSION "%s"' % v in config_h


def test_version_reply_is_meson_version(make_daemon):
    d = make_daemon(["-N"])
    with d.client() as c:
        assert c.cmd(b"version\r\n") == ("VERSION %s\r\n" % meson_version()).encode()
        assert c.stats()["version"] == meson_version()


def test_no_version_literal_in_sources():
    """The version comes from config.h (MCQ_VERSION) everywhere in the code."""
    v = meson_version()
    hits = [str(p.relative_to(REPO)) for p in (REPO / "src").rglob("*")
            if p.suffix in (".c", ".h") and v in p.read_text(errors="replace")]
    assert not hits, "version %s written out in %s: use MCQ_VERSION" % (v, hits)


# --------------------------------------------------------------------------------------
# the packages (slow)
# --------------------------------------------------------------------------------------

def _build_package(kind, out, report_name, pattern):
    """scripts/package KIND into out: (the one package file, seconds, lint report).
    Fails with the script's and the linter's output when the build fails."""
    t = time.monotonic()
    p = _run([PACKAGE, kind, out], timeout=900, check=False)
    took = time.monotonic() - t
    print("\npackaging: .%s built and linted in %.1f s" % (kind, took))
    report = (out / report_name).read_text() if (out / report_name).exists() else ""
    if p.returncode != 0:
        pytest.fail("scripts/package %s failed (%d)\n%s\n%s" % (kind, p.returncode,
                                                                p.stderr[-4000:], report[-4000:]))
    found = sorted(out.glob(pattern % meson_version()))
    assert len(found) == 1, sorted(x.name for x in out.iterdir())
    return found[0], took, report


@pytest.fixture(scope="module")
def deb(tmp_path_factory):
    """scripts/package deb: (output dir, .deb path, seconds, lintian report)."""
    _need("dpkg-buildpackage", "dh", "lintian", "fakeroot", "git")
    out = tmp_path_factory.mktemp("deb")
    path, took, report = _build_package("deb", out, "lintian.txt", "memcacheq_%s_*.deb")
    return out, path, took, report


@pytest.mark.slow
def test_deb_lintian_clean(deb):
    _, _, _, report = deb
    tags = [line for line in report.splitlines() if re.match(r"^[EW]: ", line)]
    assert not tags, "lintian:\n" + "\n".join(tags)


@pytest.mark.slow
def test_deb_contents(deb):
    _, path, _, _ = deb
    files = _run(["dpkg-deb", "-c", path]).stdout
    names = {line.split()[-1].lstrip(".") for line in files.splitlines()}
    for f in ("/usr/bin/memcacheq", "/usr/bin/memcacheqctl", "/usr/bin/memcacheq-bench",
              "/lib/systemd/system/memcacheq.socket", "/lib/systemd/system/memcacheq.service",
              "/usr/share/dbus-1/system.d/org.memcacheq.MemcacheQ1.conf",
              "/usr/share/man/man8/memcacheq.8.gz", "/usr/share/man/man1/memcacheqctl.1.gz",
              "/usr/share/man/man1/memcacheq-bench.1.gz", "/usr/share/doc/memcacheq/copyright"):
        assert f in names, "%s not in the .deb:\n%s" % (f, files)
    control = _run(["dpkg-deb", "-f", path]).stdout
    assert re.search(r"^Version: %s$" % re.escape(meson_version()), control, re.M), control
    # no conffile (nothing under /etc)
    info = _run(["dpkg-deb", "-I", path]).stdout
    assert "conffiles" not in info, info
    assert not any(n.startswith("/etc/") for n in names)


@pytest.mark.slow
def test_deb_enables_the_socket_not_the_service(deb, tmp_path):
    _, path, _, _ = deb
    _run(["dpkg-deb", "-e", path, tmp_path / "ctl"])
    postinst = (tmp_path / "ctl" / "postinst").read_text()
    # debhelper's snippets, one per "Automatically added" block: the one that
    # enables on first installation must name the socket and only it.
    blocks = postinst.split("# End automatically added section")
    enabling = [b for b in blocks if "was-enabled defaults to true" in b]
    assert len(enabling) == 1, postinst
    assert "enable 'memcacheq.socket'" in enabling[0]
    assert "memcacheq.service" not in enabling[0]
    assert "deb-systemd-invoke start 'memcacheq.socket'" in postinst
    assert not re.search(r"invoke (start|restart|\$_dh_action) [^\n]*memcacheq\.service", postinst)
    # after an upgrade the service restarts only if it runs; removal stops it
    assert "deb-systemd-invoke try-restart 'memcacheq.service'" in postinst
    prerm = (tmp_path / "ctl" / "prerm").read_text()
    # the socket first: while it listens, a connection would start the service again
    assert prerm.index("stop 'memcacheq.socket'") < prerm.index("stop memcacheq.service"), prerm
    # No user made by hand: the service's user (DynamicUser=, or the static
    # one of its sysusers.d file) is systemd's business.
    for script in ("preinst", "postinst", "prerm", "postrm"):
        f = tmp_path / "ctl" / script
        if f.exists():
            assert "adduser" not in f.read_text() and "useradd" not in f.read_text()
    files = _run(["dpkg-deb", "-c", path]).stdout
    if "/usr/lib/sysusers.d/memcacheq.conf" in files:
        assert "systemd-sysusers ${DPKG_ROOT:+--root=\"$DPKG_ROOT\"} memcacheq.conf" in postinst
        assert postinst.index("systemd-sysusers") < postinst.index("start 'memcacheq.socket'")


def test_deb_preinst_user_is_the_sysusers_one():
    """debian/memcacheq.preinst creates the user from a copy of the
    sysusers.d entry (the file itself is not unpacked yet): the two agree."""
    preinst = (REPO / "debian" / "memcacheq.preinst").read_text()
    m = re.search(r"--replace=/usr/lib/sysusers\.d/memcacheq\.conf - <<'SYSUSERS'\n(.*?)\nSYSUSERS\n",
                  preinst, re.S)
    assert m, preinst
    entries = [l for l in (REPO / "systemd" / "memcacheq.sysusers").read_text().splitlines()
               if l.strip() and not l.startswith("#")]
    assert m.group(1).splitlines() == entries


# The check that runs as a oneshot unit inside the container: only the
# Python standard library (the container has the host's /usr).
BOOT_CHECK = textwrap.dedent(r'''
    import json, os, socket, subprocess, sys, time
    out = {}
    def run(*cmd):
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        return {"rc": p.returncode, "out": p.stdout.strip(), "err": p.stderr.strip()}
    def talk(data, end):
        with socket.create_connection(("127.0.0.1", 22201), timeout=10) as s:
            s.sendall(data)
            buf = b""
            while not buf.endswith(end):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
            return buf.decode(errors="replace")
    try:
        out["service_before"] = run("systemctl", "is-active", "memcacheq.service")["out"]
        out["start_socket"] = run("systemctl", "start", "memcacheq.socket")
        out["socket_active"] = run("systemctl", "is-active", "memcacheq.socket")["out"]
        out["fragment"] = run("systemctl", "show", "-P", "FragmentPath", "memcacheq.socket")["out"]
        out["set"] = talk(b"set pkgq 7 0 5\r\nhello\r\n", b"\r\n")
        out["get"] = talk(b"get pkgq\r\n", b"END\r\n")
        out["version"] = talk(b"version\r\n", b"\r\n")
        out["service_after"] = run("systemctl", "is-active", "memcacheq.service")["out"]
        # the daemon joins the system bus in the background after it is ready
        for _ in range(50):
            out["ctl_status"] = run("memcacheqctl", "status")
            if out["ctl_status"]["rc"] != 2:
                break
            time.sleep(0.2)
        out["man_page"] = os.path.exists("/usr/share/man/man8/memcacheq.8.gz")
        out["user"] = run("getent", "passwd", "memcacheq")
    except Exception as e:
        out["error"] = repr(e)
    out["journal"] = run("journalctl", "-b", "--no-pager", "-o", "cat", "-u",
                         "memcacheq.service", "-u", "memcacheq.socket")["out"][-4000:]
    with open(sys.argv[1] + "/boot.json", "w") as f:
        json.dump(out, f, indent=1)
''')


@pytest.fixture(scope="module")
def booted_deb(deb, tmp_path_factory):
    """Unpacks the .deb and boots it in a container; returns what the check saw."""
    if os.geteuid() != 0:
        pytest.skip("booting systemd in a container needs root")
    _need("systemd-nspawn", "dpkg-deb")
    _, path, _, _ = deb
    tmp = tmp_path_factory.mktemp("deb-boot")
    stage, units, out, check = tmp / "stage", tmp / "units", tmp / "out", tmp / "check"
    for d in (units / "multi-user.target.wants", out, check):
        d.mkdir(parents=True)
    _run(["dpkg-deb", "-x", path, stage])
    # The package puts its units in /lib/systemd/system, as Debian 12's
    # systemd.pc says.  On a merged-/usr system (this host, and the container
    # built from its /usr) /lib is a link to usr/lib, so that is where dpkg's
    # files land: fold the staged /lib into the staged /usr/lib the same way.
    if (stage / "lib").is_dir():
        assert os.path.realpath("/lib") == "/usr/lib", "this recipe needs a merged-/usr host"
        _run(["cp", "-a", "%s/lib/." % stage, "%s/usr/lib/" % stage])
        shutil.rmtree(stage / "lib")
    assert (stage / "usr/lib/systemd/system/memcacheq.socket").is_file()
    (check / "check.py").write_text(BOOT_CHECK)
    (units / "mcq-pkg-check.service").write_text(textwrap.dedent("""\
        [Unit]
        Description=memcacheq package check
        After=multi-user.target
        SuccessAction=poweroff-force
        FailureAction=poweroff-force

        [Service]
        Type=oneshot
        ExecStart=/usr/bin/python3 /check/check.py /out
        TimeoutStartSec=90
        StandardOutput=journal+console
        StandardError=journal+console
        """))
    (units / "multi-user.target.wants" / "mcq-pkg-check.service").symlink_to(
        "../mcq-pkg-check.service")
    t = time.monotonic()
    p = _run(["timeout", "--kill-after=10", "150", "systemd-nspawn", "-D", "/", "--volatile=yes",
              "--register=no", "--keep-unit", "-M", "mcqpkg-%d" % os.getpid(),
              "--private-network", "--overlay-ro=/usr:%s/usr:/usr" % stage,
              "--bind-ro=%s:/etc/systemd/system" % units, "--bind-ro=%s:/check" % check,
              "--bind=%s:/out" % out, "--boot", "--console=pipe", "-q"],
             timeout=200, check=False)
    took = time.monotonic() - t
    print("\npackaging: container boot with the .deb's files took %.1f s" % took)
    if not (out / "boot.json").exists():
        pytest.fail("the check did not run in the container (nspawn exit %d)\n%s\n%s"
                    % (p.returncode, p.stdout[-4000:], p.stderr[-4000:]))
    return json.loads((out / "boot.json").read_text())


@pytest.mark.slow
def test_deb_boots_and_serves(booted_deb):
    r = booted_deb
    assert "error" not in r, json.dumps(r, indent=1)
    assert r["fragment"] in ("/lib/systemd/system/memcacheq.socket",
                             "/usr/lib/systemd/system/memcacheq.socket"), r["fragment"]
    assert r["service_before"] == "inactive", r
    assert r["start_socket"]["rc"] == 0, r
    assert r["socket_active"] == "active", r
    assert r["set"] == "STORED\r\n", r
    assert r["get"] == "VALUE pkgq 7 5\r\nhello\r\nEND\r\n", r
    assert r["version"] == "VERSION %s\r\n" % meson_version(), r
    assert r["service_after"] == "active", r
    assert r["man_page"], r
    # the package's D-Bus policy lets the service on the system bus
    assert r["ctl_status"]["rc"] == 0, r["ctl_status"]
    assert re.search(r"^Version: +%s$" % re.escape(meson_version()), r["ctl_status"]["out"],
                     re.M), r["ctl_status"]


@pytest.fixture(scope="module")
def rpm(tmp_path_factory):
    """scripts/package rpm: (output dir, .rpm path, rpmlint report)."""
    _need("rpmbuild", "rpmlint", "rpmsign", "gpg", "git")
    out = tmp_path_factory.mktemp("rpm")
    path, _, report = _build_package("rpm", out, "rpmlint.txt", "memcacheq-%s-*.rpm")
    return out, path, report


@pytest.mark.slow
def test_rpm_rpmlint_no_errors(rpm):
    _, _, report = rpm
    errors = [line for line in report.splitlines() if re.search(r": E: ", line)]
    assert not errors, "rpmlint:\n" + report
    assert re.search(r"\b0 errors\b", report), report


@pytest.mark.slow
def test_rpm_contents_and_scriptlets(rpm):
    _, path, _ = rpm
    files = set(_run(["rpm", "-qlp", path]).stdout.split())
    for f in ("/usr/bin/memcacheq", "/usr/bin/memcacheqctl", "/usr/bin/memcacheq-bench",
              "/usr/share/dbus-1/system.d/org.memcacheq.MemcacheQ1.conf"):
        assert f in files, f
    assert any(f.endswith("/systemd/system/memcacheq.socket") for f in files), files
    for page in ("man8/memcacheq.8", "man1/memcacheqctl.1", "man1/memcacheq-bench.1"):
        assert any("/usr/share/man/" + page in f for f in files), page
    assert _run(["rpm", "-qp", "--qf", "%{VERSION}", path]).stdout == meson_version()
    scripts = _run(["rpm", "-qp", "--scripts", path]).stdout
    assert "memcacheq.socket" in scripts and "try-restart" in scripts, scripts
    # erasing keeps the queues, as Fedora packages keep their /var/lib data
    assert not re.search(r"^\s*rm\s", scripts, re.M), scripts


LIFECYCLE = REPO / "tests" / "systemd" / "package_lifecycle.py"


@pytest.fixture(scope="module")
def deb_lifecycle(deb, tmp_path_factory):
    """Installs, removes, purges and reinstalls the .deb with dpkg and apt-get
    in a booted container (tests/systemd/package_lifecycle.py); returns what
    it saw.  The container's /usr, /var and /etc are writable overlays of the
    host's (the writes land in throw-away upper directories), and
    /etc/systemd/system starts empty, so no host service boots with it."""
    if os.geteuid() != 0:
        pytest.skip("booting systemd in a container needs root")
    _need("systemd-nspawn")
    _, path, _, _ = deb
    tmp = tmp_path_factory.mktemp("deb-lifecycle")
    upper, out, check = tmp / "upper", tmp / "out", tmp / "check"
    for d in (upper / "usr", upper / "var", upper / "etc", out, check):
        d.mkdir(parents=True)
    shutil.copy(path, check / "memcacheq.deb")
    shutil.copy(LIFECYCLE, check / "lifecycle.py")
    (check / "mcq-lifecycle.service").write_text(textwrap.dedent("""\
        [Unit]
        Description=memcacheq package life cycle
        After=multi-user.target
        SuccessAction=poweroff-force
        FailureAction=poweroff-force

        [Service]
        Type=oneshot
        ExecStart=/usr/bin/python3 /check/lifecycle.py /check/memcacheq.deb /out
        TimeoutStartSec=150
        """))
    t = time.monotonic()
    p = _run(["timeout", "--kill-after=10", "200", "systemd-nspawn", "-D", "/", "--volatile=yes",
              "--register=no", "--keep-unit", "-M", "mcqlife-%d" % os.getpid(),
              "--private-network",
              "--overlay=/usr:%s:/usr" % (upper / "usr"),
              "--overlay=/var:%s:/var" % (upper / "var"),
              "--overlay=/etc:%s:/etc" % (upper / "etc"),
              "--tmpfs=/etc/systemd/system",
              "--bind-ro=%s:/etc/systemd/system/mcq-lifecycle.service"
              % (check / "mcq-lifecycle.service"),
              "--bind-ro=%s:/check" % check, "--bind=%s:/out" % out,
              "--boot", "--console=pipe", "-q", "systemd.wants=mcq-lifecycle.service"],
             timeout=240, check=False)
    took = time.monotonic() - t
    print("\npackaging: install/remove/purge in a container took %.1f s" % took)
    shutil.rmtree(upper, ignore_errors=True)
    if not (out / "lifecycle.json").exists():
        pytest.fail("the life cycle did not run in the container (nspawn exit %d)\n%s\n%s"
                    % (p.returncode, p.stdout[-4000:], p.stderr[-4000:]))
    r = json.loads((out / "lifecycle.json").read_text())
    r["transcript"] = (out / "lifecycle.log").read_text()
    r["wall_seconds"] = took
    return r


def _lifecycle_ok(r):
    assert not r["errors"], r["errors"][0] + r["transcript"][-4000:]
    assert r["first_install"]["dpkg"] == 0, r["transcript"][-4000:]
    assert r["wall_seconds"] < 120, r["wall_seconds"]


@pytest.mark.slow
def test_deb_first_install_is_clean(deb_lifecycle):
    """The user exists before dbus-daemon reads the package's bus policy."""
    r = deb_lifecycle
    _lifecycle_ok(r)
    assert r["user_before"] == 2, "the container already had a memcacheq user"
    assert r["user_after"].startswith("memcacheq:"), r["user_after"]
    assert r["first_install"]["units"] == {"memcacheq.socket": "active",
                                           "memcacheq.service": "inactive"}, r["first_install"]
    unknown = [l for l in r["journal_first_install"] if 'Unknown username "memcacheq"' in l]
    assert not unknown, unknown


@pytest.mark.slow
def test_deb_remove_keeps_queues(deb_lifecycle):
    r = deb_lifecycle
    _lifecycle_ok(r)
    assert r["stored"] == ["STORED\r\n"] * 3, r["stored"]
    assert r["paths_running"] == {"private": True, "link": True, "rundir": True,
                                  "unix_socket": True}, r["paths_running"]
    up = r["upgrade"]
    assert up["dpkg"] == 0 and up["units"]["memcacheq.socket"] == "active", up
    assert up["stats_queue"] == "STAT keep 3/0\r\nEND\r\n", up
    rm = r["remove"]
    assert rm["apt"] == 0 and rm["status"] == "deinstall ok config-files", rm
    assert rm["units"] == {"memcacheq.socket": "inactive", "memcacheq.service": "inactive"}, rm
    # the data stays; the socket file goes with the socket unit
    assert rm["paths"]["private"] and rm["paths"]["link"], rm["paths"]
    assert not rm["paths"]["unix_socket"], rm["paths"]
    again = r["reinstall_after_remove"]
    assert again["dpkg"] == 0 and again["units"]["memcacheq.socket"] == "active", again
    assert again["get"] == "VALUE keep 0 2\r\nm0\r\nEND\r\n", again


@pytest.mark.slow
def test_deb_purge_deletes_queues(deb_lifecycle):
    r = deb_lifecycle
    _lifecycle_ok(r)
    pg = r["purge"]
    assert pg["apt"] == 0 and pg["status"] != 0, pg      # dpkg-query: no longer known
    assert pg["paths"] == {"private": False, "link": False, "rundir": False,
                           "unix_socket": False}, pg["paths"]
    again = r["reinstall_after_purge"]
    assert again["dpkg"] == 0 and again["units"]["memcacheq.socket"] == "active", again
    # a new, empty environment: the old queue and its counters are gone
    assert again["get"] == "END\r\n", again
    assert "keep" not in again["stats_queue"], again["stats_queue"]
    assert again["set"] == "STORED\r\n" and again["get_fresh"] == "VALUE fresh 0 3\r\nnew\r\nEND\r\n"
