"""guard-run: option parsing (pure), then every option and exit code with real processes,
real flag files and real flocks, with and without guardd running."""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from guardd.cli.run import USAGE, flag_reason, parse_args, scope_flags
from guardd.cli.runcache import decode_entry
from guardd.cli.trace import JOURNAL_SOCKET_ENV, SYSLOG_SOCKET_ENV
from guardd.core.paths import RunView
from guardd.core.runlock import ensure_run_locks
from guardd.errors import UsageError
from tests.helpers import Guardd, wait_until
from tests.run_helpers import (
    GUARD_RUN,
    NOBODY,
    SITE_VARIANTS,
    Site,
    as_nobody,
    exclusive_now,
    kill_session,
    open_to_nobody,
    site_variant,
)

# --------------------------------------------------------------------------- parsing


def test_parse_defaults() -> None:
    """Without options: scope default, skip, no timeout, skip code from config, no -v."""
    options = parse_args(["--", "backup", "--full"], {})
    assert options.command == ["backup", "--full"]
    assert (options.scope, options.when_on, options.wait_timeout) == ("default", "skip", None)
    assert (options.skip_code, options.interrupt, options.grace) == (None, False, 30.0)
    assert (options.check, options.verbose, options.config_path) == (False, False, None)


def test_parse_every_option_in_both_spellings() -> None:
    """Each option is read as ``--opt value`` and ``--opt=value``; durations are parsed."""
    options = parse_args(
        [
            "--scope=shop",
            "--when-on",
            "wait",
            "--wait-timeout=1m30s",
            "--skip-code",
            "3",
            "--interrupt",
            "--grace=5s",
            "--config",
            "/etc/x.yaml",
            "-v",
            "--",
            "worker",
        ],
        {},
    )
    assert options.scope == "shop" and options.when_on == "wait"
    assert options.wait_timeout == 90.0 and options.skip_code == 3
    assert options.interrupt and options.grace == 5.0
    assert options.config_path == "/etc/x.yaml" and options.verbose
    assert options.command == ["worker"]


def test_parse_command_starts_at_first_non_option() -> None:
    """Options end at the command: its own options are passed to it untouched."""
    options = parse_args(["-v", "backup", "--scope", "x", "--"], {})
    assert options.verbose and options.scope == "default"
    assert options.command == ["backup", "--scope", "x", "--"]


def test_parse_scope_from_environment() -> None:
    """GUARD_SCOPE is the default scope; --scope wins over it; empty means unset."""
    assert parse_args(["true"], {"GUARD_SCOPE": "shop"}).scope == "shop"
    assert parse_args(["--scope", "blog", "true"], {"GUARD_SCOPE": "shop"}).scope == "blog"
    assert parse_args(["true"], {"GUARD_SCOPE": ""}).scope == "default"


def test_parse_check() -> None:
    """--check takes --scope, --config and -v, and no command."""
    options = parse_args(["--check", "--scope", "shop", "-v"], {})
    assert options.check and options.scope == "shop" and options.command == []


def test_parse_help() -> None:
    """-h and --help among the options ask for the usage text; after ``--`` they are
    the command's."""
    assert parse_args(["-h"], {}).show_help
    assert parse_args(["--scope", "shop", "--help"], {}).show_help
    assert not parse_args(["--", "true", "--help"], {}).show_help


@pytest.mark.parametrize(
    ("argv", "env", "needle"),
    [
        ([], {}, "no command given"),
        (["--"], {}, "no command given"),
        (["--scope", "Shop", "true"], {}, "'Shop' is not a scope name"),
        (["true"], {"GUARD_SCOPE": "bad scope"}, "GUARD_SCOPE"),
        (["--bogus", "true"], {}, "unknown option '--bogus'"),
        (["--scope"], {}, "--scope needs a value"),
        (["--scope", "a", "--scope", "b", "true"], {}, "--scope given twice"),
        (["--when-on", "later", "true"], {}, "expected one of skip, wait, fail"),
        (["--skip-code", "256", "true"], {}, "from 0 to 255"),
        (["--skip-code", "-1", "true"], {}, "from 0 to 255"),
        (["--skip-code", "\u00b2", "true"], {}, "from 0 to 255"),
        (["--wait-timeout", "5", "true"], {}, "only applies to --when-on wait"),
        (["--when-on", "wait", "--wait-timeout", "soon", "true"], {}, "--wait-timeout:"),
        (["--grace", "5", "true"], {}, "only applies to --interrupt"),
        (["--interrupt", "--grace", "-1", "true"], {}, "--grace:"),
        (["--interrupt=yes", "true"], {}, "unknown option '--interrupt=yes'"),
        (["--config=", "true"], {}, "--config needs a path"),
        (["--check", "true"], {}, "remove the command"),
        (["--check", "--interrupt"], {}, "--interrupt does not apply"),
        (["--check", "--when-on", "fail"], {}, "--when-on does not apply"),
    ],
)
def test_parse_usage_errors(argv: list[str], env: dict[str, str], needle: str) -> None:
    """Every malformed command line is one UsageError (exit 2) saying what is wrong."""
    with pytest.raises(UsageError) as caught:
        parse_args(argv, env)
    assert needle in caught.value.message
    assert caught.value.exit_code == 2
    assert "\n" not in caught.value.message


# --------------------------------------------------------------------------- flags (pure)


def _view(**scope_flags: str) -> RunView:
    return RunView(
        lock_dir="/l",
        runtime_dir="/r",
        scope_flags={"default": "/l/default.lock", **scope_flags},
        skip_code=0,
    )


def test_scope_flags_own_then_default_and_fleet_mirrors() -> None:
    """A named scope is on by its own flag or default's; in fleet mode by either mirror too."""
    view = _view(shop="/srv/shop/down")
    assert scope_flags(view, "shop") == ("/srv/shop/down", "/l/default.lock")
    view.fleet_mirrors = True
    assert scope_flags(view, "shop") == (
        "/srv/shop/down",
        "/l/shop.fleet.lock",
        "/l/default.lock",
        "/l/default.fleet.lock",
    )
    assert scope_flags(view, "default") == ("/l/default.lock", "/l/default.fleet.lock")


def test_scope_flags_unknown_scope_names_known_ones() -> None:
    """A scope that is not configured is a usage error listing the configured ones."""
    with pytest.raises(
        UsageError, match=r"unknown scope 'blog' \(configured scopes: default, shop\)"
    ):
        scope_flags(_view(shop="/l/shop.lock"), "blog")


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b'{"reason": "db upgrade", "until": "2030-01-01T00:00:00Z"}', "db upgrade"),
        (b"kernel update\nsecond line", "kernel update"),
        (b"", None),
        (b'{"until": "x"}', None),
        (b"{not json", "{not json"),
        (b"\x00\x01\x02binary", None),
        (b"tab\there\x1b[31m", "tab here [31m"),
        (b"x" * 300, "x" * 200),
    ],
)
def test_flag_reason(tmp_path: Path, content: bytes, reason: str | None) -> None:
    """The skip log's reason: JSON ``reason`` or the first text line, cleaned, never a crash."""
    flag = tmp_path / "f.lock"
    flag.write_bytes(content)
    assert flag_reason(str(flag)) == reason


# --------------------------------------------------------------------------- CLI


@pytest.fixture(params=SITE_VARIANTS)
def site(
    request: pytest.FixtureRequest, tmp_short: Path, make_guardd: Callable[..., Guardd]
) -> Site:
    """Scopes default and shop; the second variant has guardd running on the config."""
    return site_variant(request.param, tmp_short, make_guardd)


@pytest.fixture
def plain_site(tmp_short: Path) -> Site:
    """A config with scopes default and shop, no daemon."""
    return Site(tmp_short)


def test_in_service_runs_command_with_its_io_and_status(site: Site) -> None:
    """In service the command runs with guard-run's stdin/stdout/stderr and exit status."""
    result = site.run(
        "--scope", "shop", "--", "sh", "-c", "cat; echo err >&2; exit 7", input="from stdin\n"
    )
    assert (result.returncode, result.stdout, result.stderr) == (7, "from stdin\n", "err\n")


def test_command_is_a_child_holding_both_run_locks(site: Site) -> None:
    """Without --interrupt and outside a terminal's foreground, the command runs as
    guard-run's child, leading a process group of its own; guard-run and the command
    both hold both run locks, and guard-run is the job's listed process."""
    proc = site.popen("--scope", "shop", "--", "sleep", "30")
    try:
        wait_until(lambda: site.holders("shop") == {proc.pid}, what="shop lock held")
        assert site.holders("default") == {proc.pid}
        children = wait_until(
            lambda: Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split(),
            what="the command",
        )
        child = int(children[0])
        wait_until(
            lambda: Path(f"/proc/{child}/cmdline").read_bytes() == b"sleep\x0030\x00",
            what="the exec",
        )
        assert os.getpgid(child) == child != os.getpgid(proc.pid) == proc.pid
        targets = {os.readlink(f"/proc/{child}/fd/{fd}") for fd in os.listdir(f"/proc/{child}/fd")}
        assert {str(site.run_lock("shop")), str(site.run_lock("default"))} <= targets
        assert not exclusive_now(site.run_lock("shop"))
    finally:
        kill_session(proc)
    assert exclusive_now(site.run_lock("shop")) and exclusive_now(site.run_lock("default"))


def test_lock_descriptors_survive_the_jobs_own_low_fds(plain_site: Site) -> None:
    """A job that reuses fds 3-9 (``exec 3>file``) does not drop its run lock."""
    proc = plain_site.popen(
        "--",
        "sh",
        "-c",
        "exec 3>/dev/null 4>/dev/null 5>/dev/null 6>/dev/null 7>/dev/null; echo ok; sleep 30",
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ok\n"
        assert not exclusive_now(plain_site.run_lock("default"))
    finally:
        kill_session(proc)


def test_signal_death_of_the_command_is_128_plus_n(plain_site: Site) -> None:
    """A command killed by signal N is guard-run's exit 128+N (SPEC), as a shell sees it
    and as the caller's wait status."""
    result = subprocess.run(
        ["sh", "-c", f'"{GUARD_RUN}" -- sh -c "kill -KILL \\$\\$"; echo "status=$?"'],
        env=plain_site.env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.stdout == "status=137\n"
    direct = plain_site.run("--", "sh", "-c", "kill -TERM $$")
    assert direct.returncode == 143


def test_sigpipe_and_sigxfsz_are_default_for_the_command(plain_site: Site) -> None:
    """The command starts with the signal dispositions it would have had without guard-run."""
    baseline = subprocess.run(
        ["grep", "^SigIgn", "/proc/self/status"], capture_output=True, text=True, check=True
    ).stdout
    for extra in ([], ["--interrupt"]):
        result = plain_site.run(*extra, "--", "grep", "^SigIgn", "/proc/self/status")
        assert result.stdout == baseline, extra


def test_skip_is_silent_exit_0_and_command_not_run(site: Site) -> None:
    """Scope in maintenance (default --when-on skip): exit 0, nothing on stdout or stderr."""
    site.turn_on("shop", '{"reason": "migration"}')
    marker = site.root / "ran"
    result = site.run("--scope", "shop", "--", "touch", str(marker))
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert not marker.exists()


def test_skip_code_option_and_config(tmp_short: Path) -> None:
    """--skip-code sets the skip status; run.skip_code is the default; the option wins."""
    site = Site(tmp_short, settings={"run": {"skip_code": 4}})
    site.turn_on()
    assert site.run("--", "true").returncode == 4
    assert site.run("--skip-code", "3", "--", "true").returncode == 3
    assert site.run("--skip-code", "0", "--", "true").returncode == 0


def test_skip_verbose_says_why_on_stderr(plain_site: Site) -> None:
    """With -v a skip is one stderr line naming the scope, reason, flag and command."""
    plain_site.turn_on("shop", '{"reason": "db upgrade"}')
    result = plain_site.run("-v", "--scope", "shop", "--", "backup", "--full")
    assert result.returncode == 0 and result.stdout == ""
    assert result.stderr == (
        f"guard-run: scope shop is in maintenance (db upgrade; flag {plain_site.flag('shop')}):"
        " skipped backup --full\n"
    )


@pytest.fixture
def dev_log(tmp_short: Path) -> Iterator[tuple[Path, socket.socket]]:
    """A private /dev holding our own /dev/log socket, for a mount namespace."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare to give guard-run a private /dev/log")
    dev = tmp_short / "dev"
    dev.mkdir()
    (dev / "null").touch()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(dev / "log"))
    sock.settimeout(10)
    yield dev, sock
    sock.close()


def test_skip_logs_one_line_to_syslog(
    plain_site: Site, dev_log: tuple[Path, socket.socket]
) -> None:
    """A skip sends exactly one LOG_INFO line (ident guard-run) with command, scope, reason."""
    dev, sock = dev_log
    plain_site.turn_on("shop", "kernel update\n")
    script = f'mount --bind /dev/null {dev}/null && mount --bind {dev} /dev && exec "$@"'
    result = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
            GUARD_RUN,
            "--scope",
            "shop",
            "--",
            "backup",
            "--full",
        ],
        env={k: v for k, v in plain_site.env().items() if k != SYSLOG_SOCKET_ENV},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    line = sock.recv(4096).decode()
    assert line.startswith("<14>")  # facility user (1) * 8 + LOG_INFO (6)
    assert "guard-run[" in line
    assert line.endswith(
        f"scope shop is in maintenance (kernel update; flag {plain_site.flag('shop')}):"
        " skipped backup --full"
    )
    sock.settimeout(0.2)
    with pytest.raises(TimeoutError):
        sock.recv(4096)


@pytest.fixture
def log_socket(tmp_short: Path) -> Iterator[tuple[str, socket.socket]]:
    """A datagram socket standing in for journald or syslogd (none runs here)."""
    path = str(tmp_short / "journal.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    yield path, sock
    sock.close()


def _journal_fields(datagram: bytes) -> dict[str, str]:
    fields = {}
    for line in datagram.decode().splitlines():
        key, _, value = line.partition("=")
        fields[key] = value
    return fields


def test_skip_under_systemd_goes_to_the_journal_with_fields(
    plain_site: Site, log_socket: tuple[str, socket.socket]
) -> None:
    """Started by systemd (INVOCATION_ID), a skip is one native journal entry with
    MESSAGE, PRIORITY, SYSLOG_IDENTIFIER and the GUARD_* fields; nothing on stderr."""
    path, sock = log_socket
    plain_site.turn_on("shop", '{"reason": "db upgrade"}')
    env = plain_site.env(INVOCATION_ID="0123456789abcdef", **{JOURNAL_SOCKET_ENV: path})
    result = plain_site.run("--scope", "shop", "--", "backup", "--full", env=env)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    fields = _journal_fields(sock.recv(65536))
    flag = str(plain_site.flag("shop"))
    assert fields["MESSAGE"] == (
        f"scope shop is in maintenance (db upgrade; flag {flag}): skipped backup --full"
    )
    assert fields["PRIORITY"] == "6" and fields["SYSLOG_IDENTIFIER"] == "guard-run"
    assert fields["GUARD_SCOPE"] == "shop" and fields["GUARD_FLAG"] == flag
    assert fields["GUARD_REASON"] == "db upgrade"
    assert fields["GUARD_COMMAND"] == "backup --full"
    assert int(fields["SYSLOG_PID"]) > 0


def test_skip_outside_systemd_goes_to_syslog(
    plain_site: Site, log_socket: tuple[str, socket.socket]
) -> None:
    """Without JOURNAL_STREAM/INVOCATION_ID a skip is one syslog line (not the journal)."""
    path, sock = log_socket
    plain_site.turn_on("shop")
    env = plain_site.env(**{SYSLOG_SOCKET_ENV: path, JOURNAL_SOCKET_ENV: path + ".none"})
    result = plain_site.run("--scope", "shop", "--", "true", env=env)
    assert (result.returncode, result.stderr) == (0, "")
    line = sock.recv(65536).decode()
    assert line.startswith("<14>") and " guard-run[" in line
    assert line.endswith(f"flag {plain_site.flag('shop')}): skipped true")


def test_skip_with_no_log_socket_says_so_on_stderr(plain_site: Site, tmp_short: Path) -> None:
    """Under systemd with no journal socket and no syslog socket, the skip still leaves
    a trace: one line on stderr (which systemd or cron keep)."""
    plain_site.turn_on("shop")
    env = plain_site.env(
        JOURNAL_STREAM="8:1234",
        **{
            JOURNAL_SOCKET_ENV: str(tmp_short / "no-journal"),
            SYSLOG_SOCKET_ENV: str(tmp_short / "no-log"),
        },
    )
    result = plain_site.run("--scope", "shop", "--", "true", env=env)
    assert result.returncode == 0
    assert result.stderr == (
        f"guard-run: scope shop is in maintenance (flag {plain_site.flag('shop')}): skipped true\n"
    )


def test_verbose_names_the_flags_and_run_locks_checked(plain_site: Site) -> None:
    """-v in service names every flag looked at and the run locks held (and --check too)."""
    result = plain_site.run("-v", "--scope", "shop", "--", "true")
    assert result.returncode == 0
    for path in (plain_site.flag("default"), plain_site.flag("shop")):
        assert str(path) in result.stderr
    for path in (plain_site.run_lock("default"), plain_site.run_lock("shop")):
        assert str(path) in result.stderr
    check = plain_site.run("-v", "--check", "--scope", "shop")
    assert check.returncode == 0
    assert str(plain_site.flag("shop")) in check.stderr and "in service" in check.stderr


def test_default_flag_puts_every_scope_on_but_not_the_reverse(site: Site) -> None:
    """default's flag skips jobs of every scope; a named scope's flag leaves default alone."""
    site.turn_on("default")
    assert site.run("--scope", "shop", "--when-on", "fail", "--", "true").returncode == 75
    site.turn_off("default")
    site.turn_on("shop")
    assert site.run("--when-on", "fail", "--", "true").returncode == 0
    assert site.run("--scope", "shop", "--when-on", "fail", "--", "true").returncode == 75


def test_scope_with_own_lock_file(tmp_short: Path) -> None:
    """A scope's own lock_file (an app's ``down`` file) drives it, even a dangling symlink."""
    down = tmp_short / "app" / "storage" / "down"
    site = Site(tmp_short, settings={"scopes": {"shop": {"lock_file": str(down)}}})
    assert site.run("--scope", "shop", "--when-on", "fail", "--", "true").returncode == 0
    down.parent.mkdir(parents=True)
    down.symlink_to(tmp_short / "nowhere")
    assert site.run("--scope", "shop", "--when-on", "fail", "--", "true").returncode == 75
    site.turn_on("shop")  # <lock_dir>/shop.lock is not this scope's flag
    down.unlink()
    assert site.run("--scope", "shop", "--when-on", "fail", "--", "true").returncode == 0


def test_fleet_flag_mirror_counts_only_in_fleet_mode(tmp_short: Path) -> None:
    """guardd's mirror of a fleet flag (<scope>.fleet.lock) puts the scope on in fleet mode,
    and a leftover mirror is ignored once fleet mode is off."""
    fleet = {"fleet": {"endpoints": ["http://127.0.0.1:1"]}}
    site = Site(tmp_short, settings=fleet)
    site.lock_dir.mkdir()
    (site.lock_dir / "shop.fleet.lock").write_text("{}")
    assert site.run("--scope", "shop", "--when-on", "fail", "--", "true").returncode == 75
    assert site.run("--when-on", "fail", "--", "true").returncode == 0
    plain = Site(tmp_short)  # same directories, fleet mode off
    assert plain.run("--scope", "shop", "--when-on", "fail", "--", "true").returncode == 0


def test_fail_mode_exit_75_one_line(site: Site) -> None:
    """--when-on fail in maintenance: exit 75 and one line on stderr; command not run."""
    site.turn_on("default", "planned work")
    marker = site.root / "ran"
    result = site.run("--when-on", "fail", "--scope", "shop", "--", "touch", str(marker))
    assert result.returncode == 75 and result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("guard-run: scope shop is in maintenance (planned work; flag ")
    assert result.stderr.endswith(f": not running touch {marker}\n")
    assert not marker.exists()


def test_check(site: Site) -> None:
    """--check: 0 in service, 1 in maintenance (own or default flag), silent, runs nothing."""
    assert site.run("--check", "--scope", "shop").returncode == 0
    site.turn_on("shop")
    result = site.run("--check", "--scope", "shop")
    assert (result.returncode, result.stdout, result.stderr) == (1, "", "")
    assert site.run("--check").returncode == 0
    site.turn_on("default")
    assert site.run("--check").returncode == 1
    verbose = site.run("--check", "-v")
    assert verbose.returncode == 1 and "scope default is in maintenance" in verbose.stderr


@pytest.fixture
def drain_holding(plain_site: Site) -> Iterator[Path]:
    """default.run held exclusively for the whole test (a drain that never lets go)."""
    plain_site.runtime_dir.mkdir()
    path = plain_site.run_lock("default")
    fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    yield path
    os.close(fd)


def test_skip_and_fail_need_no_run_lock(plain_site: Site, drain_holding: Path) -> None:
    """In maintenance guard-run decides without the run locks: a lock held exclusively
    does not delay a skip or a fail (a skip never shows up as a job)."""
    plain_site.turn_on()
    assert plain_site.run("--", "true", timeout=5).returncode == 0
    assert plain_site.run("--when-on", "fail", "--", "true", timeout=5).returncode == 75


def test_run_lock_held_exclusively_without_flag_is_75(
    plain_site: Site, drain_holding: Path
) -> None:
    """A run lock that stays exclusively locked while no flag exists is not a drain:
    the command is not run, exit 75 with one line naming the lock."""
    marker = plain_site.root / "ran"
    result = plain_site.run(
        "--when-on", "wait", "--wait-timeout", "1", "--", "touch", str(marker), timeout=20
    )
    assert result.returncode == 75
    assert result.stderr.startswith(f"guard-run: run lock {drain_holding} stayed exclusively")
    assert result.stderr.count("\n") == 1
    assert not marker.exists()


def test_check_needs_no_run_lock(tmp_short: Path) -> None:
    """--check answers even where the run locks cannot be created (it takes none)."""
    (tmp_short / "file").touch()
    site = Site(tmp_short, settings={"runtime_dir": str(tmp_short / "file" / "run")})
    assert site.run("--check").returncode == 0
    assert site.run("--", "true").returncode == 2


def test_guard_scope_environment(plain_site: Site) -> None:
    """GUARD_SCOPE picks the scope when --scope is not given."""
    plain_site.turn_on("shop")
    env = plain_site.env(GUARD_SCOPE="shop")
    assert plain_site.run("--when-on", "fail", "--", "true", env=env).returncode == 75
    assert plain_site.run("--scope", "default", "--", "true", env=env).returncode == 0


@pytest.mark.parametrize("mode", [[], ["--interrupt"]])
def test_command_not_found_127_not_executable_126(plain_site: Site, mode: list[str]) -> None:
    """Not found: 127, not executable: 126, each with one clear stderr line."""
    missing = plain_site.run(*mode, "--", "no-such-command-xyz")
    assert missing.returncode == 127
    assert missing.stderr == "guard-run: no-such-command-xyz: command not found\n"
    script = plain_site.root / "script.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o644)
    denied = plain_site.run(*mode, "--", str(script))
    assert denied.returncode == 126
    assert denied.stderr == f"guard-run: {script}: cannot execute: Permission denied\n"
    assert plain_site.run(*mode, "--", str(plain_site.root)).returncode == 126


def test_usage_error_exit_2_one_line_command_not_run(plain_site: Site) -> None:
    """A usage error: exit 2, one line on stderr, the command is not run."""
    marker = plain_site.root / "ran"
    result = plain_site.run("--when-on", "sometimes", "--", "touch", str(marker))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == (
        "guard-run: --when-on: expected one of skip, wait, fail, got 'sometimes'\n"
    )
    assert not marker.exists()


def test_help_exits_0(plain_site: Site) -> None:
    """--help prints the usage on stdout and exits 0."""
    result = plain_site.run("--help")
    assert result.returncode == 0 and result.stdout.startswith("usage: guard-run")


def test_unknown_scope_exit_2_naming_known_scopes(site: Site) -> None:
    """A scope that is not configured: exit 2 naming the configured scopes."""
    result = site.run("--scope", "blog", "--", "true")
    assert result.returncode == 2
    assert result.stderr == "guard-run: unknown scope 'blog' (configured scopes: default, shop)\n"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("lock_dir: [unclosed\n", "invalid YAML"),
        ("scopes: {shop: {}}\nrun: {skip_cod: 1}\n", "run.skip_cod: unknown key"),
        ("run: {skip_code: 300}\n", "run.skip_code: expected a whole number"),
    ],
)
def test_config_error_exit_2_command_not_run(tmp_short: Path, text: str, needle: str) -> None:
    """An invalid config: exit 2, one line naming the problem; the command is not run."""
    site = Site(tmp_short)
    site.config_path.write_text(text)
    marker = tmp_short / "ran"
    result = site.run("--", "touch", str(marker))
    assert result.returncode == 2 and needle in result.stderr
    assert result.stderr.count("\n") == 1
    assert not marker.exists()


def test_missing_config_file_exit_2(plain_site: Site) -> None:
    """--config or GUARDD_CONFIG naming a missing file is exit 2, not the built-ins."""
    missing = str(plain_site.root / "nope.yaml")
    result = plain_site.run("--config", missing, "--", "true")
    assert (result.returncode, result.stderr) == (2, f"guard-run: {missing}: no such file\n")
    env = plain_site.env(GUARDD_CONFIG=missing)
    assert plain_site.run("--", "true", env=env).returncode == 2


def test_config_option_beats_environment(plain_site: Site, tmp_short: Path) -> None:
    """--config wins over GUARDD_CONFIG."""
    (tmp_short / "other").mkdir()
    other = Site(tmp_short / "other")
    other.turn_on()
    result = plain_site.run("--config", str(other.config_path), "--when-on", "fail", "--", "true")
    assert result.returncode == 75


def test_run_lock_not_creatable_exit_2_naming_path(tmp_short: Path) -> None:
    """Where the run lock cannot be created: exit 2 naming it; the command is not run."""
    (tmp_short / "file").touch()
    runtime = tmp_short / "file" / "run"
    site = Site(tmp_short, settings={"runtime_dir": str(runtime)})
    marker = tmp_short / "ran"
    result = site.run("--", "touch", str(marker))
    assert result.returncode == 2
    assert result.stderr == (
        f"guard-run: cannot open run lock {runtime}/default.run: Not a directory (not running)\n"
    )
    assert not marker.exists()


def test_run_lock_not_creatable_by_user_exit_2(tmp_short: Path) -> None:
    """A user who may not create a missing run lock in root's runtime dir gets exit 2."""
    site = Site(tmp_short)
    site.runtime_dir.mkdir(mode=0o755)
    open_to_nobody(site.config_path, site.runtime_dir)
    result = subprocess.run(
        as_nobody([GUARD_RUN, "--scope", "shop", "--", "true"]),
        env=site.env(XDG_CACHE_HOME=str(tmp_short / "nobody-cache")),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert f"cannot open run lock {site.runtime_dir}/default.run: Permission denied" in (
        result.stderr
    )


def test_user_job_locks_root_created_run_locks(tmp_short: Path) -> None:
    """Run locks created by root (0644) let any user's job hold them shared."""
    site = Site(tmp_short)
    ensure_run_locks(str(site.runtime_dir), ["default", "shop"])
    assert site.run_lock("shop").stat().st_mode & 0o777 == 0o644
    open_to_nobody(site.config_path, site.runtime_dir)
    proc = subprocess.Popen(
        as_nobody([GUARD_RUN, "--scope", "shop", "--", "sleep", "30"]),
        env=site.env(XDG_CACHE_HOME=str(tmp_short / "nobody-cache")),
        start_new_session=True,
    )
    try:
        wait_until(lambda: site.holders("shop") == {proc.pid}, what="nobody's job holding shop")
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()


def test_unreadable_flag_directory_counts_as_maintenance(tmp_short: Path) -> None:
    """When whether a flag exists cannot be known (EACCES), the scope is on (SPEC "One
    rule"): --check says 1, a job is skipped (or fails with 75), and stderr says why."""
    site = Site(tmp_short)
    site.lock_dir.mkdir(mode=0o700)
    ensure_run_locks(str(site.runtime_dir), ["default", "shop"])
    out = tmp_short / "out"
    out.mkdir(mode=0o777)
    out.chmod(0o777)
    open_to_nobody(site.config_path, site.runtime_dir, out)
    marker = out / "ran"
    why = (
        f"guard-run: cannot tell whether flag {site.lock_dir}/default.lock exists "
        "(Permission denied): counting it as on\n"
    )
    for args, code in (
        (["--", "touch", str(marker)], 0),
        (["--when-on", "fail", "--", "touch", str(marker)], 75),
        (["--check"], 1),
    ):
        result = subprocess.run(
            as_nobody([GUARD_RUN, *args]),
            env=site.env(XDG_CACHE_HOME=str(tmp_short / "nobody-cache")),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == code, (args, result.stderr)
        assert result.stderr.startswith(why), result.stderr
    assert not marker.exists()


def test_interrupt_stops_a_worker_when_its_flag_becomes_unknowable(tmp_short: Path) -> None:
    """--interrupt: a flag whose existence can no longer be known (lock dir made
    unreadable) counts as on, as everywhere: the worker gets SIGTERM (exit 143)."""
    site = Site(tmp_short)
    site.lock_dir.mkdir(mode=0o755)
    ensure_run_locks(str(site.runtime_dir), ["default", "shop"])
    open_to_nobody(site.config_path, site.runtime_dir, site.lock_dir)
    proc = subprocess.Popen(
        as_nobody([GUARD_RUN, "--interrupt", "--grace", "5s", "--", "sleep", "30"]),
        env=site.env(XDG_CACHE_HOME=str(tmp_short / "nobody-cache")),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        wait_until(lambda: site.holders() != set(), what="the worker holding its run lock")
        site.lock_dir.chmod(0o700)
        _, err = proc.communicate(timeout=20)
    finally:
        kill_session(proc)
    assert proc.returncode == 143, err
    assert f"cannot tell whether flag {site.lock_dir}/default.lock exists" in err


def test_builtin_paths_without_config_file(tmp_short: Path) -> None:
    """No config file: a non-root user's paths come from $HOME alone; XDG_* variables,
    which differ between cron and a login shell, change nothing (run lock 0644)."""
    home = tmp_short / "home"
    state = home / ".local" / "state" / "guardd"
    state.mkdir(parents=True)
    for part in (home, home / ".local", home / ".local" / "state", state):
        os.chown(part, NOBODY.pw_uid, NOBODY.pw_gid)
    open_to_nobody(state)
    env = {k: v for k, v in os.environ.items() if k not in ("GUARDD_CONFIG", "GUARD_SCOPE")}
    env.update(
        HOME=str(home),
        XDG_STATE_HOME=str(tmp_short / "xdg-state"),
        XDG_RUNTIME_DIR=str(tmp_short / "xdg-run"),
        XDG_CACHE_HOME=str(tmp_short / "nobody-cache"),
    )
    if os.path.exists("/etc/guardd/config.yaml"):
        pytest.skip("this host has /etc/guardd/config.yaml: built-ins are not in use")
    result = subprocess.run(
        as_nobody([GUARD_RUN, "--", "echo", "ran"]),
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (result.returncode, result.stdout) == (0, "ran\n"), result.stderr
    run_lock = state / "run" / "default.run"
    assert run_lock.stat().st_mode & 0o777 == 0o644
    assert (state / "run").stat().st_mode & 0o777 == 0o755
    assert not (tmp_short / "xdg-state").exists() and not (tmp_short / "xdg-run").exists()
    (state / "default.lock").touch()
    result = subprocess.run(
        as_nobody([GUARD_RUN, "--when-on", "fail", "--", "true"]),
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 75
    shop = subprocess.run(
        as_nobody([GUARD_RUN, "--scope", "shop", "--", "true"]),
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert shop.returncode == 2 and "configured scopes: default" in shop.stderr


@pytest.mark.parametrize(
    ("args", "maintenance"),
    [
        (["--", "true"], False),
        (["--", "true"], True),
        (["--when-on", "fail", "--", "true"], True),
        (["--check"], True),
        (["--interrupt", "--", "true"], False),
    ],
)
def test_lean_start(plain_site: Site, args: list[str], maintenance: bool) -> None:
    """With a warm config cache, guard-run runs or skips without asyncio, psutil, yaml,
    dataclasses/inspect, subprocess or any daemon module."""
    assert plain_site.run("--", "true").returncode == 0  # fills the cache
    if maintenance:
        plain_site.turn_on("default", '{"reason": "x"}')
    # What guard-run imports beyond what this interpreter imports for `pass` (a .pth of
    # the test venv may bring some of the forbidden ones itself).
    imported = _imports(plain_site, GUARD_RUN, *args) - _imports(plain_site, "-c", "pass")
    assert "guardd.cli.run" in imported
    forbidden = {
        "__future__",  # its import alone is ~3% of python -c pass: annotations are quoted
        "guardd.core.atomic",  # only when the config cache is written
        "asyncio",
        "psutil",
        "yaml",
        "dataclasses",
        "inspect",
        "subprocess",
        "guardd.config",
        "guardd.daemon",
        "guardd.core.flag",
        "guardd.core.jobs",
        "guardd.daemon.control",
        "guardd.daemon.watch",
        "guardd.cli.client",
    }
    assert imported & forbidden == set()
    # signal imports enum (~3 ms): the supervisor uses the C _signal.
    assert imported & {"signal", "enum"} == set()


def _imports(site: Site, *args: str) -> set[str]:
    """The modules ``python -X importtime ARGS`` imports."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", *args],
        env=site.env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return {
        line.rsplit("|", 1)[-1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:")
    }


def test_output_is_flushed_and_a_failed_write_is_one_line(plain_site: Site) -> None:
    """guard-run ends without the interpreter's teardown but flushes what it wrote
    first (a pipe gets the whole usage); output it cannot write is one line and exit 1."""
    # Buffered output, as under cron (the test runner's environment may unbuffer it).
    env = {k: v for k, v in plain_site.env().items() if k != "PYTHONUNBUFFERED"}
    shown = subprocess.run(
        [GUARD_RUN, "--help"], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert (shown.returncode, shown.stdout, shown.stderr) == (0, USAGE, "")
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            [GUARD_RUN, "--help"],
            env=env,
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=30,
            check=False,
        )
    assert result.returncode == 1
    assert result.stderr.startswith("guard-run: ") and result.stderr.count("\n") == 1
    assert "No space left on device" in result.stderr


def test_cache_is_used_and_rejected_when_config_changes(plain_site: Site) -> None:
    """A warm cache is written 0600 in a 0700 dir; editing the config is seen at once."""
    assert plain_site.run("--scope", "shop", "--", "true").returncode == 0
    cache_dir = plain_site.cache_home / "guardd"
    (cache_file,) = cache_dir.iterdir()
    assert cache_dir.stat().st_mode & 0o777 == 0o700
    assert cache_file.stat().st_mode & 0o777 == 0o600
    entry = decode_entry(cache_file.read_bytes())
    assert entry is not None
    flags = entry["view"]["scope_flags"]
    assert isinstance(flags, dict) and flags["shop"].endswith("shop.lock")
    text = plain_site.config_path.read_text()
    plain_site.config_path.write_text(text.replace("shop: null", "blog: null"))
    result = plain_site.run("--scope", "shop", "--", "true")
    assert result.returncode == 2 and "configured scopes: blog, default" in result.stderr
