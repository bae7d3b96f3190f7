"""Translations: memcacheq, memcacheqctl and memcacheq-bench speak
Simplified Chinese under a zh_CN.UTF-8 locale and English under C, while the
memcache protocol replies stay exactly as they are.

The programs find their catalogs in LOCALEDIR, which is compiled in
(<prefix>/share/locale), and gettext has no variable to point elsewhere.  So
this module configures its own build with -Dprefix=<tmp>/prefix, builds the
three programs and the .mo files, and installs the catalogs there (meson
install --tags i18n); the programs run from that build directory.  The
zh_CN.UTF-8 locale is compiled with localedef into a private directory that
LOCPATH names (no root needed; the definition comes from Debian's `locales`
package, which `scripts/deps test` installs).

The catalog itself is checked too: po/zh_CN.po has no untranslated or fuzzy
message, it translates every message the sources mark (a fresh xgettext
run), and po/POTFILES.in lists every file that marks messages.
"""

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import REPO, Daemon, clean_env

PO = REPO / "po"
LOCALE_SOURCE = Path("/usr/share/i18n/locales/zh_CN")

# The translations the tests look for (po/zh_CN.po).
ZH_SUMMARY = "使用 memcache 文本协议的持久化消息队列。"
EN_SUMMARY = "A persistent message queue speaking the memcache text protocol."


def _run(cmd, timeout=120, **kw):
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                          timeout=timeout, **kw)


def _check(cmd, what, **kw):
    p = _run(cmd, **kw)
    assert p.returncode == 0, "%s failed (%s):\n%s\n%s" % (what, p.returncode, p.stdout, p.stderr)
    return p


@pytest.fixture(scope="module")
def tree():
    """A private build with its catalogs installed, and a zh_CN.UTF-8 locale."""
    for tool in ("meson", "localedef", "msgfmt", "xgettext", "msgcmp"):
        assert shutil.which(tool), "%s is missing (scripts/deps test)" % tool
    assert LOCALE_SOURCE.exists(), ("%s is missing: install the locales package "
                                    "(scripts/deps test)" % LOCALE_SOURCE)
    top = Path(tempfile.mkdtemp(prefix="mcq-i18n."))
    try:
        locpath = top / "locale"
        locpath.mkdir()
        _check(["localedef", "-i", "zh_CN", "-f", "UTF-8", locpath / "zh_CN.UTF-8"],
               "localedef")
        build, prefix = top / "build", top / "prefix"
        env = clean_env()
        _check(["meson", "setup", build, REPO, "-Dprefix=%s" % prefix], "meson setup", env=env)
        _check(["meson", "compile", "-C", build, "memcacheq", "memcacheqctl", "memcacheq-bench",
                "memcacheq-gmo"], "meson compile", env=env)
        _check(["meson", "install", "-C", build, "--no-rebuild", "--tags", "i18n"],
               "meson install", env=env)
        mo = prefix / "share" / "locale" / "zh_CN" / "LC_MESSAGES" / "memcacheq.mo"
        assert mo.is_file(), "meson install did not install %s" % mo
        yield {
            "top": top,
            "memcacheq": build / "src" / "memcacheq",
            "memcacheqctl": build / "src" / "memcacheqctl",
            "memcacheq-bench": build / "src" / "bench" / "memcacheq-bench",
            "locpath": locpath,
        }
    finally:
        shutil.rmtree(top, ignore_errors=True)


def _env(tree, lang):
    env = clean_env({"LOCPATH": str(tree["locpath"]), "LC_ALL": lang})
    # LANGUAGE would override the locale's language for messages; LANG and the
    # other LC_* do not matter under LC_ALL.
    env.pop("LANGUAGE", None)
    return env


def zh(tree):
    return _env(tree, "zh_CN.UTF-8")


def c_locale(tree):
    return _env(tree, "C")


def run_tool(tree, tool, args, env, timeout=20):
    return _run([tree[tool]] + list(args), env=env, timeout=timeout)


# --- memcacheq -------------------------------------------------------------------------

def test_daemon_help_in_chinese(tree):
    p = run_tool(tree, "memcacheq", ["--help"], zh(tree))
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert ZH_SUMMARY in out, out
    assert "“set 队列 0 0 长度”追加一条消息，“get 队列”取出最早的一条。" in out
    # option help, argument names, the description
    assert "要监听的 TCP 端口（默认 22201；0：不监听）" in out
    assert "--max-body=字节数" in out and "消息体的最大字节数（默认 1048576）" in out
    assert "--dbus=总线" in out
    assert "只有在消息写入磁盘之后才会回复 STORED" in out
    # the option names themselves are never translated
    for opt in ("--port", "--listen", "--home", "--no-sync", "--max-body", "--dbus"):
        assert opt in out
    assert EN_SUMMARY not in out and "TCP port to listen on" not in out


def test_daemon_help_in_english_under_c(tree):
    p = run_tool(tree, "memcacheq", ["--help"], c_locale(tree))
    assert p.returncode == 0, p.stderr
    assert EN_SUMMARY in p.stdout
    assert "TCP port to listen on (default 22201; 0: none)" in p.stdout
    assert "--max-body=BYTES" in p.stdout
    assert not re.search(r"[\u4e00-\u9fff]", p.stdout), p.stdout


def test_daemon_bad_option_in_chinese(tree):
    p = run_tool(tree, "memcacheq", ["-B", "abc"], zh(tree))
    assert p.returncode == 1
    assert p.stdout == ""
    err = p.stderr.strip()
    assert err == "memcacheq: -B/--max-body: 无效的值“abc”：应为 1 到 1073741824 之间的整数", err
    # a check after parsing, and an error of GLib's own option parser
    p = run_tool(tree, "memcacheq", ["--dbus=bogus"], zh(tree))
    assert p.returncode == 1
    assert "--dbus: 无效的值“bogus”：应为 system、session 或 none" in p.stderr, p.stderr
    p = run_tool(tree, "memcacheq", ["-A", "1000"], zh(tree))
    assert p.returncode == 1
    assert "-A/--page-size: 1000 不是 2 的幂" in p.stderr, p.stderr


def test_daemon_bad_option_in_english_under_c(tree):
    # GLib prints in the locale's charset: under C (ASCII) the quotes become "?"
    p = run_tool(tree, "memcacheq", ["-B", "abc"], c_locale(tree))
    assert p.returncode == 1
    assert re.fullmatch(r"memcacheq: -B/--max-body: invalid value \?abc\?: expected a "
                        r"whole number from 1 to 1073741824", p.stderr.strip()), p.stderr
    p = run_tool(tree, "memcacheq", ["-B", "abc"], _env(tree, "C.UTF-8"))
    assert p.returncode == 1
    assert p.stderr.strip() == ("memcacheq: -B/--max-body: invalid value “abc”: expected a "
                                "whole number from 1 to 1073741824"), p.stderr


def test_daemon_startup_error_in_chinese(tree):
    not_a_dir = tree["top"] / "plain-file"
    not_a_dir.write_text("x")
    p = run_tool(tree, "memcacheq", ["-p", "0", "-s", tree["top"] / "s.sock", "-H", not_a_dir,
                                     "--dbus=none"], zh(tree))
    assert p.returncode == 1
    # the reason after the colon is the C library's (strerror), translated or not
    assert p.stderr.startswith("memcacheq: 无法创建主目录 %s: " % not_a_dir), p.stderr
    assert p.stderr.count("\n") == 1, p.stderr


def test_daemon_logs_in_chinese_protocol_unchanged(tree, tmp_path):
    d = Daemon(tree["memcacheq"], tmp_path / "home", args=["-t", "3", "--dbus=none"],
               env=zh(tree), logdir=tmp_path)
    d.start()
    try:
        with d.client() as c:
            # the replies are protocol: the same bytes in every locale
            assert c.cmd(b"set q 0 0 2\r\nhi\r\n") == b"STORED\r\n"
            assert c.cmd(b"bogus\r\n") == b"ERROR\r\n"
            reply = c.cmd(b"set q 0 0 x\r\n")
            assert reply.startswith(b"CLIENT_ERROR ") and reply.isascii(), reply
        with d.client() as c:
            assert c.get(b"q") == b"hi"
            assert c.cmd(b"version\r\n") == b"VERSION 0.1.0\r\n"
        rc = d.stop()
        assert rc == 0, d.stderr()
    finally:
        d.kill9()
    log = d.stderr()
    assert ("memcacheq: 警告：-t/--threads 被忽略：由一个线程服务所有连接并执行所有事务；"
            "另有两个辅助线程负责同步日志和检查点") in log, log
    assert "memcacheq: memcacheq 0.1.0 已就绪，监听 127.0.0.1:%d；" % d.port in log, log
    assert "memcacheq: 已正常停止" in log, log


# --- memcacheqctl and memcacheq-bench ---------------------------------------------------

def test_ctl_in_chinese(tree):
    p = run_tool(tree, "memcacheqctl", ["--help"], zh(tree))
    assert p.returncode == 0, p.stderr
    assert "memcacheqctl [选项…] 命令 [队列]" in p.stdout, p.stdout
    assert "通过 D-Bus（org.memcacheq.MemcacheQ1）查看和管理正在运行的 memcacheq。" in p.stdout
    assert "  stats 队列      单个队列的各项数据" in p.stdout
    assert "--json" in p.stdout and "输出 JSON 而不是表格" in p.stdout
    assert "  3  没有此队列" in p.stdout
    p = run_tool(tree, "memcacheqctl", ["frobnicate"], zh(tree))
    assert p.returncode == 1
    assert p.stderr.strip() == "memcacheqctl: 未知命令“frobnicate”（参见 --help）", p.stderr
    p = run_tool(tree, "memcacheqctl", ["--bus=nowhere", "status"], zh(tree))
    assert p.returncode == 1
    assert "--bus: 无效的值“nowhere”" in p.stderr, p.stderr


def test_ctl_in_english_under_c(tree):
    p = run_tool(tree, "memcacheqctl", ["--help"], c_locale(tree))
    assert p.returncode == 0, p.stderr
    assert "Looks at and manages a running memcacheq through D-Bus" in p.stdout
    assert re.search(r"memcacheqctl \[OPTION.\] COMMAND \[QUEUE\]", p.stdout), p.stdout
    p = run_tool(tree, "memcacheqctl", ["frobnicate"], c_locale(tree))
    assert p.returncode == 1
    assert re.fullmatch(r"memcacheqctl: unknown command .frobnicate. \(see --help\)",
                        p.stderr.strip()), p.stderr


def test_bench_in_chinese(tree):
    p = run_tool(tree, "memcacheq-bench", ["--help"], zh(tree))
    assert p.returncode == 0, p.stderr
    assert "测量消息队列服务器：每秒操作数、延迟百分位数、错误数以及服务器每次" in p.stdout
    assert "--connections=N" in p.stdout and "连接数（默认 50）" in p.stdout
    assert "memcacheq-bench 是一个闭环负载生成器" in p.stdout
    p = run_tool(tree, "memcacheq-bench", ["--mix=bogus"], zh(tree))
    assert p.returncode == 2
    assert p.stderr.strip() == 'memcacheq-bench: --mix: "bogus"：应为 set、get 或 setget', p.stderr
    p = run_tool(tree, "memcacheq-bench", ["--mix=bogus"], c_locale(tree))
    assert p.returncode == 2
    assert p.stderr.strip() == 'memcacheq-bench: --mix: "bogus": expected set, get or setget'


# --- the catalog ------------------------------------------------------------------------

def test_zh_cn_catalog_complete():
    p = _run(["msgfmt", "--statistics", "-c", "-o", os.devnull, PO / "zh_CN.po"],
             env=clean_env({"LC_ALL": "C"}))
    assert p.returncode == 0, p.stderr
    stats = p.stderr.strip()
    assert re.fullmatch(r"\d+ translated messages\.", stats), stats
    header = (PO / "zh_CN.po").read_text(encoding="utf-8")
    for field in ('"Language: zh_CN\\n"', '"Content-Type: text/plain; charset=UTF-8\\n"',
                  '"Plural-Forms: nplurals=1; plural=0;\\n"'):
        assert field in header, field
    assert "zh_CN" in (PO / "LINGUAS").read_text().split()


def _potfiles():
    return [line.strip() for line in (PO / "POTFILES.in").read_text().splitlines()
            if line.strip() and not line.startswith("#")]


def test_potfiles_lists_every_file_with_marked_strings():
    marked = set()
    for path in (REPO / "src").rglob("*.c"):
        if re.search(r'\b(?:N?_|ngettext)\s*\(\s*"', path.read_text(errors="replace")):
            marked.add(str(path.relative_to(REPO)))
    listed = set(_potfiles())
    assert marked <= listed, "not in po/POTFILES.in: %s" % sorted(marked - listed)
    assert not listed - marked, "listed but marks nothing: %s" % sorted(listed - marked)
    # the wire-protocol texts stay English: never marked, never listed
    assert "src/store.c" not in listed and "src/protocol.c" not in listed


def test_zh_cn_translates_every_marked_message(tmp_path):
    # What `meson compile memcacheq-pot` extracts (the glib preset's keywords),
    # into a scratch .pot, so the sources and po/zh_CN.po cannot drift apart.
    pot = tmp_path / "fresh.pot"
    _check(["xgettext", "--from-code=UTF-8", "--language=C", "-k_", "-kN_", "-D", REPO,
            "-o", pot] + _potfiles(), "xgettext", env=clean_env({"LC_ALL": "C"}))
    p = _run(["msgcmp", PO / "zh_CN.po", pot], env=clean_env({"LC_ALL": "C"}))
    assert p.returncode == 0, "po/zh_CN.po lacks messages of the sources:\n" + p.stderr
    p = _run(["msgcmp", "--use-untranslated", PO / "memcacheq.pot", pot],
             env=clean_env({"LC_ALL": "C"}))
    assert p.returncode == 0, ("po/memcacheq.pot is stale: `meson compile -C build "
                               "memcacheq-pot`\n" + p.stderr)
