"""A guarded job is its whole process tree (SPEC, guard-run): children that close the
inherited lock descriptors (Python's subprocess, Java) still count for ``jobs``,
``draining`` and the drain, until they exit; and job command lines are shown safely.
Real guard-run, guardctl and guardd."""

from __future__ import annotations

import json
import os
import pty
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import Guardd, wait_until
from tests.run_helpers import GUARD_RUN, Site, kill_session

# A job that starts a worker the way most programs do (close_fds=True: the worker
# holds no lock descriptor) and exits at once.
LEAVES_WORKER = (
    "import subprocess, sys; "
    "p = subprocess.Popen(sys.argv[1:], stdin=subprocess.DEVNULL, "
    "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); print(p.pid)"
)
# The same after closing every descriptor and forking twice (a daemon, or a JVM's
# launcher): the worker's parent is gone as well.
DAEMONIZES = (
    "import os, sys\n"
    "r, w = os.pipe()\n"
    "if os.fork() == 0:\n"
    "    os.closerange(3, w); os.closerange(w + 1, 1 << 16)\n"
    "    if os.fork() == 0:\n"
    "        os.write(w, str(os.getpid()).encode()); os.close(w)\n"
    "        null = os.open('/dev/null', os.O_RDWR)\n"
    "        for fd in (0, 1, 2): os.dup2(null, fd)\n"
    "        os.execvp(sys.argv[1], sys.argv[1:])\n"
    "    os._exit(0)\n"
    "os.close(w); print(os.read(r, 20).decode())\n"
)


@pytest.fixture
def daemon(make_guardd: Callable[..., Guardd]) -> Guardd:
    """A running guardd with scope shop."""
    return make_guardd({"scopes": {"shop": None}}).start()


@pytest.fixture
def leftovers() -> Iterator[list[int]]:
    """Pids of workers a test leaves; killed after it."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _start_leaving(site: Site, leftovers: list[int], program: str, *worker: str) -> int:
    """Run a guarded job that leaves ``worker`` running; the worker's pid."""
    result = site.run("--scope", "shop", "--", sys.executable, "-c", program, *worker, timeout=10)
    assert result.returncode == 0, result.stderr
    leftovers.append(int(result.stdout))
    return leftovers[-1]


def _scope_state(daemon: Guardd) -> str:
    return str(daemon.request({"op": "status"})["scopes"]["shop"]["state"])


@pytest.mark.parametrize("program", [LEAVES_WORKER, DAEMONIZES], ids=["subprocess", "daemon"])
def test_worker_without_lock_descriptors_holds_up_the_drain(
    daemon: Guardd, leftovers: list[int], program: str
) -> None:
    """A job's worker that holds no lock descriptor is listed by ``guardctl jobs``, keeps
    the scope ``draining`` and ``on --wait`` from returning 0 (exit 3 naming it), and the
    drain returns 0 once it has ended."""
    site = Site.of_guardd(daemon)
    worker = _start_leaving(site, leftovers, program, "sleep", "30")
    listing = json.loads(site.ctl("jobs", "shop", "--json").stdout)["jobs"]
    assert [(job["pid"], job["cmd"]) for job in listing] == [(worker, ["sleep", "30"])]
    drain = site.ctl("on", "shop", "--wait", "--timeout", "2")
    assert drain.returncode == 3, drain.stdout + drain.stderr
    assert f"{worker}" in drain.stdout and "sleep 30" in drain.stdout
    wait_until(lambda: _scope_state(daemon) == "draining", what="guardd to say draining")
    os.kill(worker, signal.SIGTERM)
    drain = site.ctl("on", "shop", "--wait", "--timeout", "10")
    assert drain.returncode == 0, drain.stdout + drain.stderr
    wait_until(lambda: _scope_state(daemon) == "on", what="guardd to say on")
    assert site.ctl("jobs").stdout.strip() == "no guarded jobs running"


def test_job_gets_no_unexpected_child(tmp_short: Path) -> None:
    """The process holding the locks for the group is not the command's child: a
    command that waits for all its children does not wait for it."""
    site = Site(tmp_short)
    result = site.run("--", sys.executable, "-c", "import os; os.wait()")
    assert result.returncode == 1 and "ChildProcessError" in result.stderr


def test_job_returns_while_its_worker_runs(tmp_short: Path, leftovers: list[int]) -> None:
    """guard-run still exits with the command (the worker runs on), and nothing of it
    keeps the caller's output pipe open: a caller reading to EOF is not held up."""
    site = Site(tmp_short)
    worker = _start_leaving(site, leftovers, LEAVES_WORKER, "sleep", "30")
    assert site.holders("default") == {worker}
    os.kill(worker, signal.SIGKILL)
    wait_until(lambda: not site.holders("default"), what="the locks to be free")


def test_interrupt_waits_for_and_stops_the_workers_group(tmp_short: Path) -> None:
    """--interrupt: guard-run keeps the locks after its command exited while the
    command's worker runs, and stops that worker when maintenance comes on."""
    site = Site(tmp_short)
    proc = site.popen(
        "--interrupt", "--scope", "shop", "--", sys.executable, "-c", LEAVES_WORKER, "sleep", "30"
    )
    try:
        assert proc.stdout is not None
        worker = int(proc.stdout.readline())
        wait_until(lambda: site.holders("shop") == {proc.pid}, what="the supervisor to hold")
        assert proc.poll() is None  # its command has exited, the worker has not
        drain = site.ctl("on", "shop", "--wait", "--timeout", "20")
        assert drain.returncode == 0, drain.stdout + drain.stderr
        assert proc.wait(timeout=10) == 0
        assert not Path(f"/proc/{worker}").exists() or "Z" in _state(worker)
    finally:
        kill_session(proc)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def test_control_characters_in_a_command_line_are_escaped(tmp_short: Path) -> None:
    """``guardctl jobs`` and the drain's list show a job's ESC and CR as escapes: a
    command line cannot clear the operator's screen or overwrite a line."""
    site = Site(tmp_short)
    proc = site.popen("--scope", "shop", "--", "sh", "-c", "sleep 30", "x\x1b[2Jy\rz")
    try:
        wait_until(lambda: site.holders("shop"), what="the job")
        listing = site.ctl("jobs")
        drain = site.ctl("on", "shop", "--wait", "--timeout", "0.5")
        assert drain.returncode == 3
        for out in (listing.stdout, drain.stdout):
            assert "\x1b" not in out and "\r" not in out
            assert "sleep 30 x\\x1b[2Jy\\rz" in out
        raw = json.loads(site.ctl("jobs", "--json").stdout)["jobs"][0]["cmd"]
        assert raw == ["sh", "-c", "sleep 30", "x\x1b[2Jy\rz"]
    finally:
        kill_session(proc)


def test_job_in_a_terminals_foreground_keeps_ctrl_c(tmp_short: Path) -> None:
    """Started by a script in the foreground of a terminal, guard-run leaves the job in
    that process group: Ctrl-C still reaches it (no group of its own, no keeper)."""
    site = Site(tmp_short)
    script = f"{GUARD_RUN} -- sh -c 'echo started $$; exec sleep 30'; echo after"
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover -- the child: a session on the new terminal
        os.execve("/bin/sh", ["sh", "-c", script], site.env())
    job = 0
    try:
        seen = b""
        while b"started" not in seen or not seen.rstrip().split(b"started ")[-1].isdigit():
            seen += os.read(fd, 1024)
        job = int(seen.split(b"started ")[-1].split()[0])
        assert os.getpgid(job) == os.getpgid(pid)
        os.write(fd, b"\x03")
        wait_until(lambda: _state(job) in ("gone", "Z"), what="Ctrl-C to end the job")
    finally:
        for victim in (pid, job) if job else (pid,):
            try:
                os.kill(victim, signal.SIGKILL)
            except ProcessLookupError:
                pass
        os.waitpid(pid, 0)
        os.close(fd)


def test_drain_signals_reach_the_command_once_and_kill_too(tmp_short: Path) -> None:
    """A plain job runs as guard-run's child: the drain's --then term reaches the
    command once (not also through guard-run's forwarding), and the SIGKILL after
    --grace, which guard-run could not forward, reaches it as well: the drain ends 0
    and guard-run reports 128+9."""
    site = Site(tmp_short)
    terms = tmp_short / "terms"
    script = f"trap 'echo TERM >> {terms}' TERM; while :; do sleep 0.05; done"
    proc = site.popen("--scope", "shop", "--", "sh", "-c", script)
    try:
        wait_until(lambda: site.holders("shop") == {proc.pid}, what="the job's locks")
        wait_until(
            lambda: any(
                Path(f"/proc/{child}/comm").read_text() == "sh\n"
                for child in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
            ),
            what="the command to start",
        )
        drain = site.ctl(
            "on", "shop", "--wait", "--timeout", "0.5", "--then", "term", "--grace", "1"
        )
        assert drain.returncode == 0, drain.stdout + drain.stderr
        assert proc.wait(timeout=10) == 137
        assert terms.read_text() == "TERM\n"
    finally:
        kill_session(proc)
