"""Faults around guardd: its notify socket, flag storms, its directories, crashes of
guardd and guardctl, a full disk. State ends correct, nothing is half-written,
guard-run is never affected."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import Guardd, command, free_port, wait_until
from tests.httpclient import get, write_flag
from tests.robust.support import (
    WrappedGuardd,
    assert_no_crash,
    http_state,
    kernel_setting,
    run_as_nobody,
    scope_fields,
    slow_job_counts,
    tmpfs,
    wait_state,
)
from tests.run_helpers import Site, kill_session

MakeGuardd = Callable[..., Guardd]


def test_notify_socket_nobody_reads_never_blocks_guardd(make_guardd: MakeGuardd) -> None:
    """A NOTIFY_SOCKET whose reader is stuck (PID 1 busy) never stalls guardd: it keeps
    answering through many state changes, and systemd gets the latest STATUS= once it
    reads again."""
    daemon = make_guardd().start()
    queue_length = int(Path("/proc/sys/net/unix/max_dgram_qlen").read_text())
    flips = 2 * queue_length + 20  # every change sends a STATUS=: the queue overflows
    for flip in range(flips):
        if flip % 2 == 0:
            daemon.flag().touch()
        else:
            daemon.flag().unlink()
        want = "on" if flip % 2 == 0 else "off"
        started = time.monotonic()
        wait_until(lambda want=want: scope_fields(daemon)["state"] == want, what=want)
        assert time.monotonic() - started < 5.0, "guardd stalled on its notify socket"
    daemon.flag().touch()
    wait_until(lambda: scope_fields(daemon)["state"] == "on", what="final on")

    def last_status() -> str:
        statuses = [m for m in daemon.notify.collect(timeout=0.1) if m.startswith("STATUS=")]
        return statuses[-1] if statuses else ""

    # Reading again: what was queued arrives, the current summary last.
    wait_until(lambda: last_status() == "STATUS=maintenance: default on", what="last STATUS")


# --------------------------------------------------------------------------- flag storms


# Run as nobody: takes every inotify instance nobody may have (fs.inotify.
# max_user_instances), so that only nobody's processes are short of one.
TAKE_ALL_INOTIFY = (
    "import ctypes, sys\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "fds = [fd for fd in (libc.inotify_init1(0) for _ in range(100000)) if fd >= 0]\n"
    "print(len(fds), flush=True)\n"
    "sys.stdin.read()\n"
)


def test_no_inotify_instance_left_falls_back_to_polling(
    make_wrapped: Callable[..., WrappedGuardd],
) -> None:
    """No inotify instance left for guardd's user: guardd says so, polls every
    poll_interval, and flag changes are still seen."""
    daemon = make_wrapped({"poll_interval": "0.1"})
    run_as_nobody(daemon)
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        pytest.skip("no system python3 to run as nobody")
    hog = subprocess.Popen(
        [*daemon.prefix, python, "-c", TAKE_ALL_INOTIFY],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert hog.stdout is not None
        assert int(hog.stdout.readline()) > 0
        daemon.start()
    finally:
        hog.communicate(timeout=10)  # closes its stdin: it exits
    write_flag(daemon.flag(), {"reason": "polled"})
    wait_state(daemon, "on", reason="polled")
    daemon.flag().unlink()
    wait_state(daemon, "off")
    log = daemon.log()
    assert "inotify unavailable (Too many open files)" in log and "polling" in log
    assert_no_crash(log)


@pytest.mark.parametrize("final", ["on", "off"])
def test_ten_thousand_flips_overflowing_inotify_end_in_the_right_state(
    make_guardd: MakeGuardd, final: str
) -> None:
    """10,000 create/remove flips with a 16-event inotify queue: the queue overflows,
    guardd re-reads everything, and every answer ends in the final state."""
    port = free_port()
    with kernel_setting("fs/inotify/max_queued_events", 16):
        daemon = make_guardd({"http": {"listen": [f"127.0.0.1:{port}"]}}).start()
    flag = daemon.flag()
    assert daemon.process is not None
    # Stopped, guardd cannot drain its queue: the overflow is certain, not a race
    # between this loop and a fast event loop on the other core.
    daemon.process.send_signal(signal.SIGSTOP)
    try:
        for _ in range(5_000):
            flag.touch()
            flag.unlink()
        if final == "on":
            write_flag(flag, {"reason": "final"})
    finally:
        daemon.process.send_signal(signal.SIGCONT)
    wait_state(daemon, final, reason="final" if final == "on" else None)
    assert http_state(port) == final
    assert "inotify queue overflowed" in daemon.log()
    assert_no_crash(daemon.log())


# --------------------------------------------------------------------------- the lock directory


@pytest.mark.parametrize("mode", ["inotify", "polling"])
def test_lock_dir_replaced_by_another_directory(make_guardd: MakeGuardd, mode: str) -> None:
    """The lock directory deleted (flag gone: off), then a prepared directory holding a
    flag renamed into its place (on): seen with inotify and on the polling path."""
    env = {"GUARDD_POLL_ONLY": "1"} if mode == "polling" else {}
    daemon = make_guardd({"poll_interval": "0.1"}, env=env).start()
    write_flag(daemon.flag(), {"reason": "before"})
    wait_state(daemon, "on", reason="before")
    shutil.rmtree(daemon.lock_dir)
    wait_state(daemon, "off")
    prepared = daemon.root / "lock.new"
    prepared.mkdir()
    write_flag(prepared / "default.lock", {"reason": "deployed"})
    prepared.rename(daemon.lock_dir)
    wait_state(daemon, "on", reason="deployed")
    daemon.flag().unlink()
    wait_state(daemon, "off")


def _replace(link: Path, target: Path, how: str) -> None:
    """Point ``link`` at ``target`` the way a deploy does: an atomic symlink re-point
    (``ln -sfn`` to a temporary name, then ``mv -T``), or a directory rename
    (``mv app app.old && mv app.new app``)."""
    if how == "symlink":
        temporary = link.with_name(link.name + ".tmp")
        temporary.symlink_to(target)
        os.rename(temporary, link)
    else:
        old = link.with_name(link.name + f".old{time.monotonic_ns()}")
        link.rename(old)
        target.rename(link)


@pytest.mark.parametrize("how", ["symlink", "rename"])
def test_directory_above_a_flag_replaced_is_followed(make_guardd: MakeGuardd, how: str) -> None:
    """A directory above a scope's lock_file replaced by a deploy (a re-pointed
    ``current`` symlink, or a renamed app directory): the flag under the new directory
    is what counts, on and off, with flips inside it seen as before, at flip latency
    (no poll: the poll interval here is an hour)."""
    base = Path(tempfile.mkdtemp(prefix="gd-app-", dir="/tmp"))
    try:
        releases = [base / "releases" / str(n) for n in range(4)]
        for release in releases:
            (release / "storage").mkdir(parents=True)
        (releases[1] / "storage" / "down").write_text("")  # release 1 is "down"
        app = base / "current"
        if how == "symlink":
            app.symlink_to(releases[0])
        else:
            releases[0].rename(app)
        daemon = make_guardd(
            {"poll_interval": "1h", "scopes": {"app": {"lock_file": f"{app}/storage/down"}}}
        ).start()
        wait_state(daemon, "off", scope="app")
        for number, state in ((1, "on"), (2, "off"), (3, "off")):
            _replace(app, releases[number], how)
            wait_until(
                lambda state=state: scope_fields(daemon, "app")["state"] == state,
                timeout=3.0,
                what=f"app {state} after release {number}",
            )
        # Flips inside the directory now in place are seen too.
        (app / "storage" / "down").write_text("")
        wait_until(lambda: scope_fields(daemon, "app")["state"] == "on", timeout=3.0, what="on")
        (app / "storage" / "down").unlink()
        wait_until(lambda: scope_fields(daemon, "app")["state"] == "off", timeout=3.0, what="off")
        assert_no_crash(daemon.log())
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_unreadable_lock_dir_fails_closed_and_recovers(
    make_wrapped: Callable[..., WrappedGuardd],
) -> None:
    """Lock directory made unreadable (chmod 000) under an unprivileged guardd: whether
    a flag exists cannot be known, so the scope counts as on, as guard-run does, never
    off; once readable again the true state is back (here: off)."""
    daemon = make_wrapped({"poll_interval": "0.2"})
    run_as_nobody(daemon)
    daemon.start()
    write_flag(daemon.flag(), {"reason": "before"})
    wait_state(daemon, "on", reason="before")
    known = scope_fields(daemon)
    daemon.lock_dir.chmod(0o000)
    try:
        daemon.flag().unlink()  # root still can; nobody cannot tell it happened
        time.sleep(1.0)  # five poll intervals and any inotify event: still on
        assert scope_fields(daemon) == known  # what was known of it stays shown
    finally:
        daemon.lock_dir.chmod(0o755)
    wait_state(daemon, "off")
    log = daemon.log()
    assert f"{daemon.flag()}" in log and "Permission denied" in log
    assert_no_crash(log)


def test_flag_appearing_in_an_unreadable_lock_dir_counts_as_on(
    make_wrapped: Callable[..., WrappedGuardd],
) -> None:
    """A change in a lock directory guardd cannot read: on (fail closed), not off."""
    daemon = make_wrapped({"poll_interval": "0.2"})
    run_as_nobody(daemon)
    daemon.start()
    daemon.lock_dir.chmod(0o000)
    try:
        daemon.flag().touch()
        wait_state(daemon, "on")
    finally:
        daemon.lock_dir.chmod(0o755)
    daemon.flag().unlink()
    wait_state(daemon, "off")


def test_file_system_mounted_over_the_lock_dir_is_watched(make_guardd: MakeGuardd) -> None:
    """A file system mounted over the lock directory after start (an NFS share mounted
    late at boot): flags on it are seen, and again those underneath once unmounted."""
    daemon = make_guardd({"poll_interval": "0.2"}).start()
    write_flag(daemon.flag(), {"reason": "underneath"})
    wait_state(daemon, "on", reason="underneath")
    with tmpfs(daemon.lock_dir):
        wait_state(daemon, "off")  # the flag underneath is hidden now
        write_flag(daemon.flag(), {"reason": "on the mount"})
        wait_state(daemon, "on", reason="on the mount")
        daemon.flag().unlink()
        wait_state(daemon, "off")
    wait_state(daemon, "on", reason="underneath")
    assert_no_crash(daemon.log())


# --------------------------------------------------------------------------- crashes


def test_guardd_sigkilled_mid_drain_recovers_state_and_jobs_never_notice(
    make_guardd: MakeGuardd,
) -> None:
    """guardd SIGKILLed while guardctl on --wait drains: the job and the drain carry on,
    guard-run keeps deciding from the files, and a restarted guardd reports the same
    draining state (since, reason, job) from the files, then on when the job ends."""
    daemon = make_guardd({"scopes": {"shop": None}}).start()
    site = Site.of_guardd(daemon)
    stop_file = daemon.root / "stop-job"
    job = site.popen(
        "--scope", "shop", "--", "sh", "-c", f'while [ ! -e "{stop_file}" ]; do sleep 0.05; done'
    )
    drain: subprocess.Popen[str] | None = None
    try:
        wait_until(lambda: scope_fields(daemon, "shop")["jobs"] == 1, what="the job counted")
        drain = subprocess.Popen(
            [command("guardctl"), "on", "shop", "--wait", "--reason", "migration"],
            env=site.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_state(daemon, "draining", "shop", reason="migration", jobs=1)
        before = scope_fields(daemon, "shop")
        assert daemon.process is not None
        daemon.process.send_signal(signal.SIGKILL)
        daemon.process.wait(timeout=10)

        # guardd is dead: guard-run decides from the files, the job and the drain go on.
        assert site.run("--check", "--scope", "shop").returncode == 1
        marker = daemon.root / "ran"
        skipped = site.run("--scope", "shop", "--", "touch", str(marker))
        assert (skipped.returncode, skipped.stderr) == (0, "") and not marker.exists()
        assert job.poll() is None and drain.poll() is None

        daemon.start()
        assert scope_fields(daemon, "shop") == before
        stop_file.touch()
        assert job.wait(timeout=20) == 0
        _, err = drain.communicate(timeout=20)
        assert drain.returncode == 0, err
        wait_state(daemon, "on", "shop", reason="migration", jobs=0)
    finally:
        stop_file.touch()
        kill_session(job)
        if drain is not None and drain.poll() is None:
            drain.kill()
            drain.communicate()


def test_guardctl_on_killed_at_random_points_leaves_whole_flags_only(
    make_guardd: MakeGuardd,
) -> None:
    """guardctl on SIGKILLed at random moments around its write: the flag is absent or
    one whole JSON object, every answer agrees, and a stray temp file (here also one
    planted with a flag's content) is never read as a flag."""
    daemon = make_guardd().start()
    site = Site.of_guardd(daemon)
    # How long a whole run takes here: the write happens near its end.
    started = time.monotonic()
    assert site.ctl("on", "--reason", "r-calibrate").returncode == 0
    whole_run = time.monotonic() - started
    rng = random.Random(6)
    written = {"r-calibrate"}
    for attempt in range(30):
        if attempt % 6 == 0:
            daemon.flag().unlink(missing_ok=True)
        reason = f"r{attempt}"
        proc = subprocess.Popen(
            [command("guardctl"), "on", "--reason", reason],
            env=site.env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(0.5, 1.1) * whole_run)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        written.add(reason)
        if daemon.flag().exists():
            content = json.loads(daemon.flag().read_text())
            assert isinstance(content, dict) and content["reason"] in written
            wait_state(daemon, "on", reason=content["reason"])
        else:
            wait_state(daemon, "off")
        assert [p.name for p in daemon.lock_dir.glob("*.lock")] in ([], ["default.lock"])

    stray = daemon.lock_dir / ".default.lock.0123456789ab.tmp"
    stray.write_text(json.dumps({"reason": "stray"}))
    daemon.flag().unlink(missing_ok=True)
    wait_state(daemon, "off")
    assert site.run("--check").returncode == 0
    status = json.loads(site.ctl("status", "--json").stdout)
    assert status["scopes"]["default"]["state"] == "off"
    assert "stray" not in daemon.log()


# --------------------------------------------------------------------------- disk full


def fill(directory: Path) -> None:
    """Write a filler file until the file system says ENOSPC."""
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as err:
        assert err.errno == errno.ENOSPC, err
    finally:
        os.close(fd)


def test_disk_full_keeps_the_old_flag_and_says_so_in_one_line(make_guardd: MakeGuardd) -> None:
    """guardctl on with the lock directory's file system full: exit 1 with one line, the
    old flag (or its absence) untouched, no temp file left; guardctl off still works."""
    daemon = make_guardd()
    with tmpfs(daemon.lock_dir, size="64k"):
        daemon.start()
        site = Site.of_guardd(daemon)
        assert site.ctl("on", "--reason", "old").returncode == 0
        wait_state(daemon, "on", reason="old")
        fill(daemon.lock_dir)
        result = site.ctl("on", "--reason", "new")
        assert result.returncode == 1
        assert result.stderr == (
            f"guardctl: cannot write {daemon.flag()}: No space left on device\n"
        )
        assert json.loads(daemon.flag().read_text())["reason"] == "old"
        assert sorted(p.name for p in daemon.lock_dir.iterdir() if p.name.endswith(".tmp")) == []
        assert scope_fields(daemon)["reason"] == "old"

        assert site.ctl("off").returncode == 0
        wait_state(daemon, "off")
        fill(daemon.lock_dir)  # the flag's page is free again: take it
        again = site.ctl("on", "--reason", "new")
        assert again.returncode == 1 and again.stderr.count("\n") == 1
        assert not daemon.flag().exists()
        time.sleep(0.3)
        assert scope_fields(daemon)["state"] == "off"
        daemon.stop()


# --------------------------------------------------------------------------- reloads


def test_flag_change_during_a_reload_wins(make_guardd: MakeGuardd, tmp_short: Path) -> None:
    """A flag created or removed while a SIGHUP reload reads (its job count made slow):
    the change wins, on and off, every time; never the state the reload read first."""
    daemon = make_guardd().start()
    rng = random.Random(12)
    with slow_job_counts(tmp_short):
        for round_ in range(16):
            present = round_ % 2 == 0
            sent = len(daemon.notify.collect())
            daemon.signal(signal.SIGHUP)
            time.sleep(rng.uniform(0.0, 0.06))  # within the reload's slow job count
            if present:
                write_flag(daemon.flag(), {"reason": f"round {round_}"})
            else:
                daemon.flag().unlink()
            daemon.notify.wait_for("READY=1", after=sent)
            want = "on" if present else "off"
            wait_until(
                lambda want=want: scope_fields(daemon)["state"] == want,
                timeout=3.0,
                what=f"{want} after reload {round_}",
            )
    assert_no_crash(daemon.log())


def test_reload_to_a_new_http_scope_never_answers_from_half_of_it(
    make_guardd: MakeGuardd, tmp_short: Path
) -> None:
    """A reload that adds scope b, in maintenance, and makes it http.scope, while
    /maintenance.json is asked for without pause: every answer is the old config's
    (http.scope default, off) or the new one's with b's true state; none says b off."""
    port = free_port()
    settings = {"http": {"listen": [f"127.0.0.1:{port}"]}, "scopes": {"a": None}}
    daemon = make_guardd(settings).start()
    write_flag(daemon.flag("b"), {"reason": "b is down"})
    answers: list[tuple[str, str]] = []
    stop = threading.Event()

    def ask() -> None:
        while not stop.is_set():
            body = get(port, "/maintenance.json").json()
            answers.append((body["scope"], body["state"]))

    with slow_job_counts(tmp_short):
        asker = threading.Thread(target=ask)
        asker.start()
        try:
            wait_until(lambda: len(answers) > 20, what="answers before the reload")
            daemon.settings["scopes"] = {"a": None, "b": None}
            daemon.settings["http"]["scope"] = "b"
            daemon.write_config()
            sent = len(daemon.notify.collect())
            daemon.signal(signal.SIGHUP)
            daemon.notify.wait_for("READY=1", after=sent)
            seen = len(answers)
            wait_until(lambda: len(answers) > seen + 20, what="answers after the reload")
        finally:
            stop.set()
            asker.join()
    assert set(answers) == {("default", "off"), ("b", "on")}, sorted(set(answers))
    assert answers[-1] == ("b", "on")
    assert_no_crash(daemon.log())


def test_reload_storm_under_job_churn_never_shows_the_scope_off(make_guardd: MakeGuardd) -> None:
    """SIGHUP after SIGHUP while run-lock activity keeps guardd recounting jobs: every
    health answer and status reply in between still says maintenance."""
    port = free_port()
    daemon = make_guardd({"http": {"listen": [f"127.0.0.1:{port}"]}}).start()
    write_flag(daemon.flag(), {"reason": "reloads"})
    wait_state(daemon, "on", reason="reloads")
    run_lock = daemon.runtime_dir / "default.run"
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():  # open/close events: a job recount every 50 ms
            os.close(os.open(run_lock, os.O_RDONLY))
            time.sleep(0.001)

    churner = threading.Thread(target=churn)
    churner.start()
    answers: list[tuple[int, str]] = []
    try:
        for _ in range(80):
            daemon.signal(signal.SIGHUP)
            for _ in range(3):
                health = get(port, "/healthz").status
                scopes = daemon.request({"op": "status"})["scopes"]
                answers.append((health, scopes.get("default", {}).get("state")))
            time.sleep(0.01)
    finally:
        stop.set()
        churner.join()
    assert set(answers) == {(503, "on")}
    assert_no_crash(daemon.log())
