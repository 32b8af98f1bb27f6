"""cli/drain.py: waiting for a scope's jobs and --then wait/term/kill, with real lock holders."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from guardd.cli.drain import DrainResult, drain
from guardd.core.choices import Then
from guardd.core.jobs import Job
from guardd.core.paths import run_lock_path

HOLDER = """
import fcntl, os, signal, sys, time
if sys.argv[2] == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.flock(fd, fcntl.LOCK_SH)
print("locked", flush=True)
time.sleep(float(sys.argv[3]))
"""


class Drain:
    """A run directory, its run lock, and the jobs a test starts on it."""

    def __init__(self, run_dir: Path) -> None:
        self.lock = run_lock_path(str(run_dir), "default")
        Path(self.lock).touch()
        self.jobs: list[subprocess.Popen[str]] = []
        self.progress: list[list[int]] = []
        self.signals: list[tuple[str, list[int]]] = []

    def job(self, *, seconds: float, on_term: str = "die") -> subprocess.Popen[str]:
        """A guarded job: holds the run lock shared for ``seconds``, in its own group."""
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                HOLDER,
                self.lock,
                "ignore-term" if on_term == "ignore" else "-",
                str(seconds),
            ],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline() == "locked\n"
        self.jobs.append(proc)
        return proc

    def run(self, *, timeout: float | None, then: Then = "wait", grace: float = 1.0) -> DrainResult:
        def on_progress(jobs: list[Job]) -> None:
            self.progress.append([job.pid for job in jobs])

        def on_signal(name: str, jobs: list[Job]) -> None:
            self.signals.append((name, [job.pid for job in jobs]))

        return drain(
            run_lock=self.lock,
            run_locks={"default": self.lock},
            scope="default",
            timeout=timeout,
            then=then,
            grace=grace,
            on_progress=on_progress,
            on_signal=on_signal,
        )

    def close(self) -> None:
        for proc in self.jobs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
            if proc.stdout is not None:
                proc.stdout.close()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Drain]:
    drainer = Drain(tmp_path)
    yield drainer
    drainer.close()


def test_no_job_drains_at_once(site: Drain) -> None:
    """Without a holder the exclusive lock is free: drained at once, nobody signalled."""
    started = time.monotonic()
    result = site.run(timeout=5)
    assert result.drained and result.signalled == ()
    assert time.monotonic() - started < 1.0


def test_waits_for_the_running_job_and_shows_it(site: Drain) -> None:
    """A job holding the lock is waited for, shown in the progress, and the drain ends with it."""
    job = site.job(seconds=1.0)
    result = site.run(timeout=20)
    assert result.drained
    assert job.wait(timeout=5) == 0  # it ended by itself: nothing was signalled
    assert [job.pid] in site.progress
    assert site.signals == []


def test_timeout_with_then_wait_leaves_the_job_running(site: Drain) -> None:
    """--then wait: at the timeout the job is reported as remaining, untouched."""
    job = site.job(seconds=30)
    result = site.run(timeout=0.5, then="wait")
    assert not result.drained
    assert [j.pid for j in result.remaining] == [job.pid]
    assert job.poll() is None and site.signals == []


def test_then_term_stops_the_job_group(site: Drain) -> None:
    """--then term: the job's process group gets SIGTERM at the timeout; the drain completes."""
    job = site.job(seconds=30)
    result = site.run(timeout=0.3, then="term", grace=10)
    assert result.drained and result.signalled == (job.pid,)
    assert job.wait(timeout=5) == -15
    assert site.signals == [("TERM", [job.pid])]


def test_then_term_kills_a_job_that_ignores_it(site: Drain) -> None:
    """A job ignoring SIGTERM is SIGKILLed after the grace period."""
    job = site.job(seconds=30, on_term="ignore")
    result = site.run(timeout=0.3, then="term", grace=0.5)
    assert result.drained
    assert job.wait(timeout=5) == -9
    assert [name for name, _ in site.signals] == ["TERM", "KILL"]
