"""A short crash audit (tests/crash/audit): kill -9 under load, restart, account
for every message.  The full 50-cycle run is documented in tests/crash/audit
and run by hand; here 5 cycles keep the suite fast."""

import re
import subprocess
import sys
from pathlib import Path


AUDIT = Path(__file__).resolve().parents[1] / "crash" / "audit"


def run_audit(mcq_bin, *args):
    proc = subprocess.run([sys.executable, str(AUDIT), "--bin", str(mcq_bin), "--quiet",
                           "--seconds-per-cycle", "0.4"] + list(args),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=240)
    out, err = proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
    lines = out.strip().splitlines()
    summary = lines[-1] if lines else ""
    return proc.returncode, summary, out + err


def field(summary, name):
    m = re.search(r"\b%s=(\d+)" % name, summary)
    assert m, "no %s= in %r" % (name, summary)
    return int(m.group(1))


def test_durable_kill9_loses_nothing(mcq_bin):
    rc, summary, text = run_audit(mcq_bin, "--cycles", "5")
    assert rc == 0, text
    assert field(summary, "cycles") == 5
    assert field(summary, "lost") == 0, text
    assert field(summary, "acknowledged") > 1000, "too little load to mean anything: " + summary
    assert summary.endswith("-> OK"), text


def test_nosync_kill9_keeps_what_it_keeps_intact(mcq_bin):
    """-N may lose the newest acknowledged messages, but what comes back must be
    byte-identical and in order."""
    rc, summary, text = run_audit(mcq_bin, "--cycles", "5", "--no-sync")
    assert rc == 0, text
    assert "mode=no-sync" in summary
    assert field(summary, "order-violations") == 0, text
