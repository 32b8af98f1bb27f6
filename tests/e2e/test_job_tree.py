"""A guarded job is its whole process tree (SPEC, guard-run): children that close the
inherited lock descriptors (Python's subprocess, Java) still count for ``jobs``,
``draining`` and the drain, until they exit; and job command lines are shown safely.
Real guard-run, guardctl and guardd."""

from __future__ import annotations

import json
import os
import pty
import shlex
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import Guardd, wait_until
from tests.run_helpers import GUARD_RUN, Site, as_nobody, kill_session

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


# A worker that ignores SIGTERM (sh's ignored TERM is inherited by sleep).
STUBBORN = "trap '' TERM; exec sleep 30"


def test_then_kill_reaches_an_interrupt_jobs_leftover_worker(tmp_short: Path) -> None:
    """--interrupt, command exited, its worker still in the job's group: the drain's
    --then kill reaches the worker (the job's group), not just guard-run; only then is
    the scope drained."""
    site = Site(tmp_short)
    proc = site.popen(
        "--interrupt", "--grace", "30", "--scope", "shop", "--",
        sys.executable, "-c", LEAVES_WORKER, "sh", "-c", STUBBORN,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        worker = int(proc.stdout.readline())
        wait_until(lambda: _state(worker) not in ("gone", "Z"), what="the worker")
        drain = site.ctl("on", "shop", "--wait", "--timeout", "1", "--then", "kill")
        assert drain.returncode == 0, drain.stdout + drain.stderr
        assert _state(worker) in ("gone", "Z"), "the drain returned 0 with the worker alive"
    finally:
        kill_session(proc)


# A daemon that never stays put: each process forks its successor and exits, for
# ``seconds``, holding no lock descriptor; the last one writes ``done`` to a file.
FORK_CHAIN = (
    "import os, sys, time\n"
    "os.closerange(3, 1 << 16)\n"
    "end = time.monotonic() + float(sys.argv[1])\n"
    "while time.monotonic() < end:\n"
    "    if os.fork():\n"
    "        os._exit(0)\n"
    "    time.sleep(0.002)\n"
    "open(sys.argv[2], 'w').write('done')\n"
)


def test_drain_waits_for_a_worker_that_keeps_forking(tmp_short: Path) -> None:
    """A worker that forks its successor and exits, over and over, is never seen as
    gone: one scan of /proc can miss it, so emptiness counts only from a scan during
    which no process was created. The drain times out (3) while it runs, then ends 0."""
    site = Site(tmp_short)
    done = tmp_short / "chain-done"
    chain = f"{sys.executable} -c {shlex.quote(FORK_CHAIN)} 4 {done}"
    result = site.run(
        "--scope", "shop", "--", "sh", "-c", f"{chain} </dev/null >/dev/null 2>&1 &", timeout=10
    )
    assert result.returncode == 0, result.stderr
    drain = site.ctl("on", "shop", "--wait", "--timeout", "2")
    assert drain.returncode == 3, drain.stdout + drain.stderr
    assert not done.exists()
    drain = site.ctl("on", "shop", "--wait", "--timeout", "20")
    assert drain.returncode == 0, drain.stdout + drain.stderr
    assert done.read_text() == "done"


def test_a_keeper_that_cannot_start_leaves_guard_run_holding(tmp_short: Path) -> None:
    """If no keeper can be started (no fork, no pipe), guard-run holds the locks itself
    until its command's group is empty (the one failure injected: start_keeper)."""
    site = Site(tmp_short)
    runner = (
        "import sys; import guardd.cli.keeper as keeper\n"
        "keeper.start_keeper = lambda fds, group: False\n"
        "from guardd.cli.run import finish, main\n"
        "finish(main(sys.argv[1:]))\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", runner, "--scope", "shop", "--",
         sys.executable, "-c", LEAVES_WORKER, "sleep", "30"],
        env=site.env(), stdout=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        worker = int(proc.stdout.readline())
        drain = site.ctl("on", "shop", "--wait", "--timeout", "1")
        assert drain.returncode == 3, drain.stdout + drain.stderr
        assert proc.poll() is None  # still holding for the worker
        os.kill(worker, signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        drain = site.ctl("on", "shop", "--wait", "--timeout", "10")
        assert drain.returncode == 0, drain.stdout + drain.stderr
    finally:
        kill_session(proc)


def test_a_signal_to_the_callers_group_reaches_the_command(tmp_short: Path) -> None:
    """guard-run stays in its caller's process group: a TERM the caller sends to its
    group (`kill 0`, a supervisor) reaches guard-run, which forwards it to the command."""
    site = Site(tmp_short)
    proc = subprocess.Popen(
        ["sh", "-c", f"{GUARD_RUN} --scope shop -- sleep 30; echo status=$?"],
        env=site.env(), stdout=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        wait_until(lambda: site.holders("shop"), what="the job")
        (runner,) = site.holders("shop")
        assert os.getpgid(runner) == proc.pid  # the caller's group
        os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
        assert "status=143" in out or proc.returncode == -15
        wait_until(lambda: not site.holders("shop"), what="the command to end")
    finally:
        kill_session(proc)


@pytest.mark.parametrize("stdio", ["", " </dev/null >/dev/null 2>&1"], ids=["tty", "redirected"])
def test_job_in_a_terminals_foreground_keeps_ctrl_c(tmp_short: Path, stdio: str) -> None:
    """Started by a script in the foreground of a terminal (its stdio on the terminal or
    all redirected: the foreground is read from /proc), guard-run execs the job in
    place, in that process group: Ctrl-C still reaches it (no group of its own, no
    keeper)."""
    site = Site(tmp_short)
    pidfile = tmp_short / "job.pid"
    script = f"{GUARD_RUN} -- sh -c 'echo $$ > {pidfile}; exec sleep 30'{stdio}; echo after"
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover -- the child: a session on the new terminal
        os.execve("/bin/sh", ["sh", "-c", script], site.env())
    job = 0
    try:
        job = int(wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), what="job"))
        wait_until(lambda: Path(f"/proc/{job}/comm").read_text() == "sleep\n", what="sleep")
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


def test_a_group_of_another_users_processes_is_alive() -> None:
    """guard-run (as nobody) asking whether its job's group still lives, when the only
    member left is another user's (a setuid helper, `sudo` in the background): kill(2)
    says EPERM, which means "exists", so it is alive (a keeper holds on for it)."""
    member = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        probe = "import sys; from guardd.cli.supervise import _group_alive; " + (
            f"print(_group_alive({member.pid}))"
        )
        result = subprocess.run(
            as_nobody([sys.executable, "-c", probe]),
            capture_output=True, text=True, timeout=30, check=False, cwd=Path.cwd(),
        )  # fmt: skip
        assert (result.returncode, result.stdout) == (0, "True\n"), result.stderr
    finally:
        member.kill()
        member.wait()


def test_interrupt_with_a_dead_stderr_still_stops_the_worker(tmp_short: Path) -> None:
    """-v --interrupt whose stderr reader goes away while the worker runs: the SIGTERM
    on maintenance is still sent (the message is best effort), and guard-run exits with
    the worker's status (143), not "cannot execute" (126)."""
    site = Site(tmp_short)
    proc = subprocess.Popen(
        [GUARD_RUN, "-v", "--interrupt", "--grace", "5", "--scope", "shop", "--",
         "sleep", "30"],
        env=site.env(), stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        assert "in service" in proc.stderr.readline()
        proc.stderr.close()  # the reader leaves
        proc.stderr = None
        wait_until(lambda: site.holders("shop") == {proc.pid}, what="the job")
        site.turn_on("shop", '{"reason": "x"}')
        assert proc.wait(timeout=10) == 143
    finally:
        kill_session(proc)
