"""guard-run --interrupt as a supervisor: its own process group for the command, signals
forwarded, maintenance stops the group (TERM, then KILL after --grace), statuses passed
through, and nothing left holding a run lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import wait_until
from tests.run_helpers import GUARD_RUN, Site, kill_session

# A command that records every signal it is sent, and exits 40 on SIGTERM.
RECORDER = r"""
import signal, sys, time
out = sys.argv[1]
def record(signum, frame):
    with open(out, "a") as stream:
        stream.write(signal.Signals(signum).name + "\n")
    if signum == signal.SIGTERM:
        # A second TERM (systemd's and guard-run's both) must not kill it mid-exit.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        sys.exit(40)
for name in ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2"):
    signal.signal(getattr(signal, name), record)
open(out + ".ready", "w").close()
while True:
    time.sleep(0.02)
"""


@pytest.fixture
def site(tmp_short: Path) -> Iterator[Site]:
    """A config with scopes default and shop; any process group left behind is killed."""
    made = Site(tmp_short)
    yield made
    for pid in made.holders("default"):
        try:
            os.killpg(os.getpgid(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass


def _child_of(pid: int) -> int:
    """The one child of ``pid`` (the command guard-run started)."""
    children = wait_until(
        lambda: Path(f"/proc/{pid}/task/{pid}/children").read_text().split(), what="a child"
    )
    return int(children[0])


def _exe(pid: int) -> str:
    """What ``pid`` runs now ("" while it cannot be read)."""
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


def _recorder(site: Site, *args: str) -> tuple[subprocess.Popen[str], Path]:
    out = site.root / "signals"
    proc = site.popen(
        *args, "--interrupt", "--scope", "shop", "--", sys.executable, "-c", RECORDER, str(out)
    )
    wait_until(lambda: Path(f"{out}.ready").exists(), what="the command to start")
    return proc, out


def test_runs_in_own_process_group_holding_the_locks(site: Site) -> None:
    """The command leads its own process group and holds both run locks itself."""
    proc = site.popen("--interrupt", "--scope", "shop", "--", "sleep", "30")
    try:
        child = _child_of(proc.pid)
        # The child is found as soon as it is forked; look at it once it is `sleep`, when
        # its descriptors no longer change under the test.
        wait_until(lambda: _exe(child).endswith("/sleep"), what="the child to exec sleep")
        assert os.getpgid(child) == child != os.getpgid(proc.pid)
        targets = {os.readlink(f"/proc/{child}/fd/{fd}") for fd in os.listdir(f"/proc/{child}/fd")}
        assert {str(site.run_lock("default")), str(site.run_lock("shop"))} <= targets
        assert site.holders("shop") == {proc.pid}
    finally:
        os.killpg(_child_of(proc.pid), signal.SIGKILL)
        proc.communicate()


def test_status_and_io_pass_through(site: Site) -> None:
    """With --interrupt, the command's output and exit status are guard-run's."""
    result = site.run("--interrupt", "--", "sh", "-c", "echo out; echo err >&2; exit 9")
    assert (result.returncode, result.stdout, result.stderr) == (9, "out\n", "err\n")


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGKILL, 137), (signal.SIGTERM, 143)])
def test_signal_death_is_128_plus_n(site: Site, signum: int, code: int) -> None:
    """A command killed by signal N makes guard-run exit 128+N."""
    result = site.run("--interrupt", "--", "sh", "-c", f"kill -{signum} $$")
    assert (result.returncode, result.stderr) == (code, "")


def test_signals_are_forwarded_to_the_command(site: Site) -> None:
    """TERM, INT, HUP, QUIT, USR1, USR2 sent to guard-run reach the command; its exit
    status (40 on TERM here) is guard-run's."""
    proc, out = _recorder(site)
    sent = [signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP, signal.SIGINT, signal.SIGQUIT]
    try:
        for number, signum in enumerate(sent, start=1):
            os.kill(proc.pid, signum)
            wait_until(
                lambda n=number: out.exists() and len(out.read_text().split()) == n,
                what=f"{signum.name} recorded",
            )
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    finally:
        kill_session(proc)
    assert proc.returncode == 40 and err == ""
    assert out.read_text().split() == [s.name for s in [*sent, signal.SIGTERM]]


def test_term_to_the_whole_cgroup_is_tolerated(site: Site) -> None:
    """systemd's KillMode=control-group sends SIGTERM to guard-run and the command at
    once: guard-run stays until the command exits, then exits with its status."""
    proc, out = _recorder(site)
    child = _child_of(proc.pid)
    os.kill(proc.pid, signal.SIGTERM)
    os.killpg(child, signal.SIGTERM)
    _, err = proc.communicate(timeout=10)
    assert (proc.returncode, err) == (40, "")
    assert out.read_text().split()[0] == "SIGTERM"


def test_ignored_signal_stays_ignored(site: Site) -> None:
    """A signal the caller ignores (nohup) is neither forwarded nor un-ignored."""
    result = subprocess.run(
        [
            "sh",
            "-c",
            'trap "" HUP; exec "$@"',
            "sh",
            GUARD_RUN,
            "--interrupt",
            "--",
            "grep",
            "^SigIgn",
            "/proc/self/status",
        ],
        env=site.env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    ignored = int(result.stdout.split()[1], 16)
    assert ignored & (1 << (signal.SIGHUP - 1))


def test_maintenance_terminates_the_command(site: Site) -> None:
    """When the scope's flag appears, the command gets SIGTERM; guard-run exits with the
    command's status and no job holds the run lock any more."""
    proc, out = _recorder(site, "--grace", "20s")
    site.turn_on("shop")
    proc.communicate(timeout=15)
    assert proc.returncode == 40
    assert out.read_text().split() == ["SIGTERM"]
    assert site.holders("shop") == set()


def test_default_flag_terminates_a_named_scope_job(site: Site) -> None:
    """default's flag interrupts a job of a named scope too."""
    proc, _ = _recorder(site)
    site.turn_on("default")
    proc.communicate(timeout=15)
    assert proc.returncode == 40


def test_sigkill_after_grace(site: Site) -> None:
    """A command group that ignores SIGTERM is killed with SIGKILL after --grace."""
    proc = site.popen(
        "--interrupt",
        "--grace",
        "0.5",
        "--scope",
        "shop",
        "--",
        "sh",
        "-c",
        'trap "" TERM; echo up; sleep 30 & wait; wait',
    )
    assert proc.stdout is not None and proc.stdout.readline() == "up\n"
    site.turn_on("shop")
    proc.communicate(timeout=15)
    assert proc.returncode == 137
    wait_until(lambda: not site.holders("shop"), what="the run lock to be free")


def test_group_leftovers_are_killed_after_grace(site: Site) -> None:
    """If the command exits on SIGTERM but a process of its group ignores it and keeps
    the lock, that process is killed once --grace is over."""
    script = 'trap "exit 3" TERM; (trap "" TERM; exec sleep 30) & echo $!; wait'
    proc = site.popen(
        "--interrupt",
        "--grace",
        "0.5",
        "--",
        "sh",
        "-c",
        script,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    straggler = int(proc.stdout.readline())
    site.turn_on()
    assert proc.wait(timeout=15) == 3
    proc.communicate()
    wait_until(lambda: _is_gone(straggler), what="the straggler to be killed")
    assert site.holders("default") == set()


def _is_gone(pid: int) -> bool:
    """Dead: no such process, or a zombie (which holds no files)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_worker_waits_runs_and_is_interrupted(site: Site) -> None:
    """The worker pattern (--when-on wait --interrupt): waits while on, runs once off
    holding the locks, is stopped when maintenance comes back."""
    site.turn_on("shop")
    proc = site.popen(
        "--when-on",
        "wait",
        "--interrupt",
        "-v",
        "--scope",
        "shop",
        "--",
        "sh",
        "-c",
        "echo started; sleep 30",
    )
    assert proc.stderr is not None
    assert "waiting to run" in proc.stderr.readline()
    assert site.holders("shop") == set()
    site.turn_off("shop")
    assert proc.stdout is not None and proc.stdout.readline() == "started\n"
    assert site.holders("shop") == {proc.pid}
    site.turn_on("shop", '{"reason": "deploy"}')
    _, err = proc.communicate(timeout=15)
    assert proc.returncode == 143
    assert "(deploy; flag" in err and "sending SIGTERM" in err
    assert site.holders("shop") == set()


def test_supervisor_killed_then_job_killed_leaves_nothing(site: Site) -> None:
    """guard-run SIGKILLed, then its job killed: no run lock is held by anyone."""
    proc = site.popen(
        "--interrupt", "--", "sleep", "30", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    child = _child_of(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert site.holders("default") == {child}
    os.kill(child, signal.SIGKILL)
    wait_until(lambda: not site.holders("default"), what="the run lock to be free")
