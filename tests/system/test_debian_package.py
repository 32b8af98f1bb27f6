"""The Debian package on a real Debian 12 under a real systemd and a real cron.

Two boots of one container (mmdebstrap root file system, systemd-nspawn): the first
installs the freshly built package and runs every scenario that needs one boot; the
second proves what a reboot must keep and recreate, then upgrades and purges. The
scenarios run inside (tests/system/scenario.sh); each test here asserts its results.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers import require_tool
from tests.system import machine

pytestmark = [pytest.mark.system, pytest.mark.heavy]

HERE = Path(__file__).resolve().parent
BOOT_TIMEOUT = 300.0
SCENARIO_UNIT = """\
[Unit]
Description=guardd system test scenario
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/bin/bash /root/guardd-test/scenario.sh
StandardOutput=append:/results/scenario.log
StandardError=append:/results/scenario.log
TimeoutStartSec=280
# Whatever happened, power off: the host waits for the container to end.
ExecStopPost=/bin/systemctl poweroff --no-block

[Install]
WantedBy=multi-user.target
"""
# Boot 2: a www-data cron job that runs until released, started before guardd.
BOOT2_CRONTAB = (
    "* * * * * www-data guard-run --scope nightly -- /bin/sh -c "
    "'echo $$ > /srv/out/d.pid; i=0; while [ ! -e /srv/out/release-d ] && [ $i -lt 600 ];"
    " do sleep 0.2; i=$((i+1)); done; echo done >> /srv/out/d'\n"
)


@dataclass
class Results:
    """Each boot's results: check name -> None when it passed, else the detail."""

    checks: dict[int, dict[str, str | None]] = field(default_factory=dict)
    info: dict[str, str] = field(default_factory=dict)
    wall_seconds: dict[str, float] = field(default_factory=dict)
    logs: Path = Path()

    def assert_passed(self, boot: int, *names: str) -> None:
        checks = self.checks.get(boot, {})
        missing = [n for n in names if n not in checks]
        failed = {n: checks[n] for n in names if checks.get(n) is not None}
        assert not missing and not failed, (
            f"boot {boot}: missing {missing}, failed {failed} (logs: {self.logs})"
        )


def _parse(path: Path, results: Results, boot: int) -> None:
    checks: dict[str, str | None] = {}
    text = path.read_text() if path.exists() else ""
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "ok":
            checks[rest] = None
        elif kind == "FAIL":
            name, _, detail = rest.partition(": ")
            checks[name] = detail or "failed"
        elif kind == "info":
            name, _, value = rest.partition(" ")
            results.info[name] = value
    results.checks[boot] = checks


@pytest.fixture(scope="module")
def booted(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Results]:
    """Build the package, boot the container twice, collect what the scenarios found."""
    if os.geteuid() != 0:
        if os.environ.get("GUARDD_REQUIRE_TOOLS") == "1":
            pytest.fail("the system tests need root (systemd-nspawn)")
        pytest.skip("the system tests need root (systemd-nspawn)")
    mmdebstrap = require_tool("mmdebstrap")
    nspawn = require_tool("systemd-nspawn")
    started = time.monotonic()
    work = tmp_path_factory.mktemp("system")
    results = Results(logs=work / "results")
    results.logs.mkdir()
    tar = machine.cached_rootfs(mmdebstrap)
    root = machine.unpack(tar, work)
    try:
        test_dir = root / "root" / "guardd-test"
        test_dir.mkdir()
        shutil.copy(deb, test_dir / "guardd.deb")
        for name in ("scenario.sh", "guardd_query.py"):
            shutil.copy(HERE / name, test_dir / name)
        unit = root / "etc" / "systemd" / "system" / "guardd-scenario.service"
        unit.write_text(SCENARIO_UNIT)
        wants = unit.parent / "multi-user.target.wants"
        wants.mkdir(exist_ok=True)
        (wants / unit.name).symlink_to(f"/etc/systemd/system/{unit.name}")
        results.wall_seconds["prepare"] = time.monotonic() - started

        for boot in (1, 2):
            (test_dir / "boot").write_text(f"{boot}\n")
            if boot == 2:
                (root / "etc" / "cron.d" / "guardd-boot2").write_text(BOOT2_CRONTAB)
            results.wall_seconds[f"boot{boot}"] = machine.boot(
                nspawn, root, results.logs, timeout=BOOT_TIMEOUT
            )
            _parse(results.logs / f"results-{boot}.txt", results, boot)
        results.wall_seconds["total"] = time.monotonic() - started
        (results.logs / "timings.txt").write_text(f"{results.wall_seconds}\n{results.info}\n")
        yield results
    finally:
        machine.remove_rootfs(root)


def test_scenarios_ran_to_the_end(booted: Results) -> None:
    """Both boots ran their whole scenario (a script cut short would hide checks)."""
    booted.assert_passed(1, "install")
    assert booted.checks[2], f"boot 2 recorded nothing (logs: {booted.logs})"
    for boot in (1, 2):
        text = (booted.logs / f"results-{boot}.txt").read_text()
        assert text.endswith("done\n"), f"boot {boot} stopped early (logs: {booted.logs})"


def test_install_enables_and_starts_under_type_notify(booted: Results) -> None:
    """apt/dpkg install: commands on cron's PATH, unit enabled and active as Type=notify
    with a STATUS= line, the group, modes of lock_dir, runtime_dir, socket and locks."""
    booted.assert_passed(
        1,
        "install",
        "commands_on_cron_path",
        "unit_enabled",
        "unit_active",
        "runtime_unit_active",
        "type_notify",
        "status_line",
        "group_exists",
        "lock_dir_mode",
        "runtime_dir_mode",
        "default_run_lock",
        "socket_mode",
        "shipped_config_valid",
        "config_is_conffile",
        "documentation",
    )


def test_unit_hardening_score_and_verify(booted: Results) -> None:
    """`systemd-analyze security` rates guardd.service 2.0 or less inside Debian 12, and
    `systemd-analyze verify` is silent for both units and with the example drop-in; the
    sandbox leaves guardd its inotify watches and /metrics (Debian's prometheus-client)."""
    booted.assert_passed(
        1,
        "security_at_most_2",
        "verify_units",
        "verify_with_dropin",
        "sandbox_keeps_inotify",
        "sandbox_keeps_nofile",
        "metrics_served",
    )
    assert float(booted.info["security_exposure"]) <= 2.0


def test_hooks_write_what_the_dropin_allows(booted: Results) -> None:
    """A hook writes where the example drop-in's ReadWritePaths= allows, and nowhere
    else (the sandbox still holds); it can still have systemd start a unit."""
    booted.assert_passed(
        1, "hook_writes_dropin_path", "hook_sandboxed_elsewhere", "hook_runs_systemctl"
    )


def test_reload(booted: Results) -> None:
    """`systemctl reload guardd` applies a new config in the same process; an invalid
    one is logged and the old config stays in force."""
    booted.assert_passed(
        1,
        "reload",
        "reload_creates_run_lock",
        "reload_same_pid",
        "reload_logged",
        "invalid_reload_keeps_running",
        "invalid_reload_same_pid",
        "invalid_reload_logged",
        "invalid_reload_old_config_in_use",
    )


def test_config_error_at_start_does_not_restart_loop(booted: Results) -> None:
    """An invalid config at start: exit 2, the unit fails once and is not restarted."""
    booted.assert_passed(
        1,
        "start_error_failed",
        "start_error_status_2",
        "start_error_no_restart",
        "start_after_fix",
    )


def test_watchdog_restarts_a_stopped_guardd(booted: Results) -> None:
    """A SIGSTOPped guardd misses its watchdog pings: systemd kills and restarts it."""
    booted.assert_passed(1, "watchdog_restarted", "watchdog_logged")


def test_timer_exec_condition(booted: Results) -> None:
    """A timer's service with ExecCondition=guard-run --check is skipped in
    maintenance (visible in the journal) and runs after `guardctl off`."""
    booted.assert_passed(1, "timer_skipped_in_journal", "timer_did_not_run", "timer_runs_after_off")


def test_group_members_switch_without_sudo(booted: Results) -> None:
    """A member of group guardd runs on/off/status/jobs; an outsider cannot switch
    maintenance and gets one clear line (exit 1, no flag written)."""
    booted.assert_passed(
        1,
        "member_on",
        "member_status",
        "member_jobs",
        "member_off",
        "member_on_wait",
        "outsider_refused",
        "outsider_one_line",
        "outsider_told_who_may",
        "outsider_no_flag",
        "outsider_no_traceback",
    )


def test_real_cron_runs_jobs_through_guard_run(booted: Results) -> None:
    """The cron daemon runs crontab lines through guard-run as www-data: skipped in
    maintenance (one journal line, no mail), run after; `guardctl on --wait` drains a
    cron-started job; `--then term` ends one that will not stop."""
    booted.assert_passed(
        1,
        "cron_started_jobs",
        "cron_skipped_not_run",
        "cron_skip_in_journal",
        "cron_skip_one_line",
        "cron_job_listed",
        "guardd_sees_cron_job",
        "drain_cron_waits",
        "drain_cron_returns_0",
        "drain_cron_job_finished",
        "term_stubborn_job",
        "term_job_gone",
        "cron_runs_after_off",
        "cron_no_mail",
    )


def test_reboot_keeps_flags_and_guards_jobs_before_guardd(booted: Results) -> None:
    """After a reboot: flags kept, /run/guardd and the run locks recreated at boot, so a
    www-data cron job started before guardd runs, is listed and is drained."""
    booted.assert_passed(1, "flags_before_reboot")
    booted.assert_passed(
        2,
        "runtime_dir_recreated",
        "default_run_lock_recreated",
        "scope_run_lock_recreated",
        "guardd_not_started",
        "flag_kept",
        "flag_kept_status",
        "cron_job_before_guardd",
        "guardd_still_not_started",
        "jobs_sees_early_job",
        "guardd_sees_early_job",
        "drain_early_waits",
        "drain_early_returns_0",
        "drain_early_job_finished",
    )


def test_upgrade_and_purge(booted: Results) -> None:
    """Reinstalling keeps the edited conffile and restarts guardd; purge removes
    /etc/guardd, /var/lib/guardd and /run/guardd and keeps the system group."""
    booted.assert_passed(
        2,
        "reinstall",
        "reinstall_keeps_config",
        "reinstall_restarts",
        "purge",
        "purge_etc",
        "purge_var_lib",
        "purge_run",
        "purge_commands",
        "purge_keeps_group",
    )
