"""The shipped systemd units (systemd/), checked without a running systemd:
`systemd-analyze verify`, the `systemd-analyze security` exposure score, the
socket unit's addresses against the README, and that `meson install` puts both
units into systemd's unit directory.  The units running under a real systemd
are tested by test_real_systemd.py."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import REPO, binary_path

UNITS = REPO / "systemd"
SOCKET = UNITS / "memcacheq.socket"
SERVICE = UNITS / "memcacheq.service"
MAX_EXPOSURE = 1.2          # no more exposed than Debian's redis-server.service (1.2)
ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"

LISTEN = ["127.0.0.1:22201", "[::1]:22201", "/run/memcacheq/memcacheq.sock"]


def parse_unit(path):
    """{section: [(key, value), ...]} keeping repeated keys in order."""
    sections = {}
    current = None
    for raw in Path(path).read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, "%s: setting outside a section: %r" % (path, raw)
        key, sep, value = line.partition("=")
        assert sep, "%s: not a key=value line: %r" % (path, raw)
        current.append((key.strip(), value.strip()))
    return sections


def values(sections, section, key):
    return [v for k, v in sections.get(section, []) if k == key]


def one(sections, section, key):
    vals = values(sections, section, key)
    assert len(vals) == 1, "[%s] %s= set %d times: %r" % (section, key, len(vals), vals)
    return vals[0]


def analyze(*args, timeout=60):
    return subprocess.run([ANALYZE, *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


@pytest.fixture
def units_with_built_binary(tmp_path, mcq_bin):
    """Copies of both units whose ExecStart= names the binary of this build, so
    that verify also checks that the command exists and is executable."""
    d = tmp_path / "units"
    d.mkdir()
    shutil.copy(SOCKET, d / SOCKET.name)
    text = SERVICE.read_text()
    new = text.replace("ExecStart=/usr/bin/memcacheq ", "ExecStart=%s " % mcq_bin)
    assert new != text, "ExecStart=/usr/bin/memcacheq ... not found in %s" % SERVICE
    (d / SERVICE.name).write_text(new)
    return d


def test_units_verify(units_with_built_binary, tmp_path, monkeypatch):
    d = units_with_built_binary
    # verify runs `man` on Documentation=: point it at the page in data/,
    # so the check proves the documented page exists without installing it.
    man8 = tmp_path / "man" / "man8"
    man8.mkdir(parents=True)
    shutil.copy(REPO / "data" / "memcacheq.8", man8 / "memcacheq.8")
    monkeypatch.setenv("MANPATH", str(tmp_path / "man"))
    p = analyze("verify", str(d / "memcacheq.socket"), str(d / "memcacheq.service"))
    out = p.stdout + p.stderr
    assert p.returncode == 0, "systemd-analyze verify failed (%d):\n%s" % (p.returncode, out)
    # verify also loads the host's units; anything it says about ours is a defect.
    ours = [line for line in out.splitlines() if "memcacheq" in line]
    assert not ours, "systemd-analyze verify complains about the units:\n" + "\n".join(ours)


def test_verify_catches_a_broken_unit(units_with_built_binary):
    """The verify check above can fail: a typo in a setting is reported."""
    d = units_with_built_binary
    svc = d / "memcacheq.service"
    svc.write_text(svc.read_text().replace("Type=notify", "Type=notifyy"))
    p = analyze("verify", str(d / "memcacheq.service"))
    out = p.stdout + p.stderr
    assert "memcacheq.service" in out and "notifyy" in out, out


def exposure(unit_path):
    p = analyze("security", "--offline=true", "--no-pager", str(unit_path))
    out = p.stdout + p.stderr
    m = re.search(r"Overall exposure level for %s: (\d+(?:\.\d+)?)" % re.escape(unit_path.name), out)
    assert m, "no exposure level in the output of systemd-analyze security:\n" + out
    return float(m.group(1)), out


def test_security_score():
    score, out = exposure(SERVICE)
    assert score <= MAX_EXPOSURE, ("exposure %.1f > %.1f; what is left:\n%s"
                                   % (score, MAX_EXPOSURE,
                                      "\n".join(l for l in out.splitlines() if l.startswith("✗"))))


def test_security_score_in_readme():
    """README states the score the unit actually gets."""
    score, _ = exposure(SERVICE)
    readme = (REPO / "README.md").read_text()
    assert "systemd-analyze security" in readme
    assert re.search(r"\b%.1f\b" % score, readme), \
        "README does not state the measured exposure %.1f" % score


def test_socket_unit_listens_as_documented():
    s = parse_unit(SOCKET)
    assert values(s, "Socket", "ListenStream") == LISTEN
    assert not values(s, "Socket", "ListenDatagram"), "memcacheq serves stream sockets only"
    assert one(s, "Socket", "BindIPv6Only") == "ipv6-only"
    assert one(s, "Socket", "FileDescriptorName") == "memcacheq"
    assert int(one(s, "Socket", "SocketMode"), 8) & 0o007 == 0, "unix socket open to everyone"
    assert int(one(s, "Socket", "Backlog")) >= 128
    assert one(s, "Install", "WantedBy") == "sockets.target"
    # The README's "Running under systemd" section names the same addresses
    # and shows how to replace them.
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Running under systemd", 1)
    assert len(section) == 2, "README has no 'Running under systemd' section"
    text = section[1].split("\n## ", 1)[0]
    for addr in LISTEN:
        assert addr in text, "README's systemd section does not mention %s" % addr
    assert "ListenStream=\n" in text, "README does not show resetting ListenStream="
    assert "systemctl edit memcacheq.socket" in text


def test_service_unit_settings():
    s = parse_unit(SERVICE)
    svc = dict(s["Service"])   # last value wins, as in systemd, for single-valued keys
    assert svc["Type"] == "notify"
    assert svc["NotifyAccess"] == "main"
    assert svc["ExecStart"] == "/usr/bin/memcacheq $MEMCACHEQ_OPTS"
    assert svc["EnvironmentFile"] == "-/etc/default/memcacheq"
    assert svc["StateDirectory"] == "memcacheq"
    assert svc["DynamicUser"] == "yes"
    # a static user of that name (sysusers.d) is used when present: needed for the system bus
    assert svc["User"] == "memcacheq"
    sysusers = [l.split() for l in (UNITS / "memcacheq.sysusers").read_text().splitlines()
                if l.strip() and not l.startswith("#")]
    assert [l[:3] for l in sysusers] == [["u", "memcacheq", "-"]], sysusers
    assert svc["Restart"] == "on-failure"
    assert svc["WatchdogSec"] and svc["TimeoutStopSec"]
    assert svc["CapabilityBoundingSet"] == ""
    assert svc["RestrictAddressFamilies"].split() == ["AF_UNIX", "AF_INET", "AF_INET6"]
    assert "PrivateNetwork" not in svc, "the daemon must be able to listen when not socket-activated"
    assert values(s, "Unit", "Wants") == ["memcacheq.socket"]
    assert values(s, "Install", "Also") == ["memcacheq.socket"]


def _meson_build_dir():
    """The build directory of the binary under test, if it is a meson one."""
    d = binary_path().parent.parent
    return d if (d / "meson-info").is_dir() else None


def test_meson_installs_units():
    build = _meson_build_dir()
    if build is None:
        pytest.fail("cannot find the meson build directory of %s" % binary_path())
    p = subprocess.run(["meson", "introspect", "--installed", str(build)], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    installed = json.loads(p.stdout)
    opts = subprocess.run(["meson", "introspect", "--buildoptions", str(build)],
                          capture_output=True, text=True, timeout=60)
    prefix = [o["value"] for o in json.loads(opts.stdout) if o["name"] == "prefix"][0]
    unitdir = subprocess.run(["pkg-config", "--define-variable=prefix=" + prefix,
                              "--variable=systemdsystemunitdir", "systemd"],
                             capture_output=True, text=True, timeout=30).stdout.strip()
    assert unitdir, "pkg-config does not know systemd's unit directory"
    sysusersdir = subprocess.run(["pkg-config", "--define-variable=prefix=" + prefix,
                                  "--variable=sysusersdir", "systemd"],
                                 capture_output=True, text=True, timeout=30).stdout.strip()
    targets = {}
    for src, dst in installed.items():
        targets.setdefault(Path(dst).name, []).append((Path(src).name, str(Path(dst).parent)))
    for name in ("memcacheq.socket", "memcacheq.service"):
        assert name in targets, "meson install does not install %s: %r" % (name, installed)
        assert [d for _, d in targets[name]] == [unitdir], (name, targets[name], unitdir)
    assert ("memcacheq.sysusers", sysusersdir) in targets.get("memcacheq.conf", []), targets
