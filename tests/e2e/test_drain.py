"""The drain guarantee (SPEC): once ``guardctl on --wait`` returns 0, no guarded job of
the scope runs and none starts until the flag is removed; waiting jobs never hold up a
drain. Proven with real guard-run and guardctl processes, with and without guardd."""

from __future__ import annotations

import random
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import Guardd, running_guardd, short_tmp, wait_until
from tests.run_helpers import (
    SITE_VARIANTS,
    Site,
    exclusive_now,
    flock_drain,
    kill_session,
    site_variant,
)

# A job that logs its start and end (O_APPEND: one line per write, in time order).
JOB = 'echo "start $1 $$" >>"$0"; sleep "$2"; echo "end $1 $$" >>"$0"'


@pytest.fixture(params=SITE_VARIANTS)
def site(
    request: pytest.FixtureRequest, tmp_short: Path, make_guardd: Callable[..., Guardd]
) -> Site:
    """Scopes default and shop; the second variant has guardd running on the config."""
    return site_variant(request.param, tmp_short, make_guardd)


def _job(site: Site, log: Path, scope: str, seconds: float, *extra: str) -> list[str]:
    return ["--scope", scope, *extra, "--", "sh", "-c", JOB, str(log), scope, f"{seconds:.3f}"]


def test_drain_waits_for_the_running_job_and_blocks_new_ones(site: Site) -> None:
    """``guardctl on --wait`` returns only after the running job ended; a job started
    after that does not run."""
    log = site.root / "events"
    proc = site.popen(*_job(site, log, "shop", 1.0))
    wait_until(log.exists, what="the job to start")
    drain = site.ctl("on", "shop", "--wait", "--timeout", "30")
    assert drain.returncode == 0, drain.stderr
    assert log.read_text().splitlines()[-1].startswith("end shop")  # ended before the return
    proc.communicate(timeout=10)
    late = site.run(*_job(site, log, "shop", 0))
    assert (late.returncode, late.stdout, late.stderr) == (0, "", "")
    assert len(log.read_text().splitlines()) == 2


def test_flock_protocol_alone_drains(tmp_short: Path) -> None:
    """The protocol needs no guardctl or daemon: flag, then an exclusive flock, is a drain."""
    site = Site(tmp_short)
    log = tmp_short / "events"
    proc = site.popen(*_job(site, log, "default", 0.5))
    wait_until(log.exists, what="the job to start")
    assert flock_drain(site, "default")
    assert log.read_text().splitlines()[-1].startswith("end default")
    proc.communicate(timeout=10)
    assert site.run(*_job(site, log, "default", 0)).returncode == 0
    assert len(log.read_text().splitlines()) == 2


def test_waiting_job_does_not_hold_up_a_drain(site: Site) -> None:
    """--when-on wait releases the run locks while it waits: a drain returns at once;
    the job runs (holding the locks again) once maintenance is off."""
    site.turn_on("shop")
    proc = site.popen(
        "--when-on", "wait", "-v", "--scope", "shop", "--", "sh", "-c", "echo ran; sleep 30"
    )
    try:
        assert proc.stderr is not None and "waiting to run" in proc.stderr.readline()
        assert site.holders("shop") == site.holders("default") == set()
        assert exclusive_now(site.run_lock("shop")) and exclusive_now(site.run_lock("default"))
        drain = site.ctl("on", "shop", "--wait", "--timeout", "5")
        assert drain.returncode == 0, drain.stderr
        assert flock_drain(site, "default", timeout=5)
        site.turn_off("default")
        assert site.ctl("off", "shop").returncode == 0
        assert proc.stdout is not None and proc.stdout.readline() == "ran\n"
        assert site.holders("shop") == {proc.pid}
    finally:
        kill_session(proc)


def test_wait_timeout_acts_as_fail(site: Site) -> None:
    """Past --wait-timeout a waiting job gives up as --when-on fail does: exit 75, one line."""
    site.turn_on("default", "long job")
    marker = site.root / "ran"
    result = site.run(
        "--when-on", "wait", "--wait-timeout", "0.5", "--scope", "shop", "--", "touch", str(marker)
    )
    assert result.returncode == 75 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "still on after --wait-timeout" in result.stderr
    assert not marker.exists()


def test_drain_waits_for_interrupted_worker(tmp_short: Path) -> None:
    """A --interrupt worker is stopped by its own guard-run when the flag appears, so
    ``guardctl on --wait`` returns without --then."""
    site = Site(tmp_short)
    proc = site.popen("--interrupt", "--scope", "shop", "--", "sh", "-c", "echo up; sleep 30")
    assert proc.stdout is not None and proc.stdout.readline() == "up\n"
    drain = site.ctl("on", "shop", "--wait", "--timeout", "20")
    assert drain.returncode == 0, drain.stderr
    assert proc.wait(timeout=10) == 143
    proc.communicate()


def test_jobs_listed_while_draining_then_none(tmp_short: Path) -> None:
    """``guardctl jobs`` lists a guard-run job (its command, not guard-run) until it ends."""
    site = Site(tmp_short)
    proc = site.popen("--scope", "shop", "--", "sleep", "30")
    try:
        wait_until(lambda: site.holders("shop"), what="the job")
        listing = site.ctl("jobs", "shop")
        assert listing.returncode == 0 and str(proc.pid) in listing.stdout
        assert "sleep 30" in listing.stdout
    finally:
        kill_session(proc)
    assert site.ctl("jobs").stdout.strip() == "no guarded jobs running"


# --------------------------------------------------------------------------- churn


class Churn:
    """Launchers starting guard-run jobs back to back while maintenance is toggled."""

    def __init__(self, site: Site, *, launchers: int, durations: list[float], seed: int) -> None:
        self.site = site
        self.log = site.root / "events"
        self.durations = durations
        self.seed = seed
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.threads = [
            threading.Thread(target=self._launch, args=(i,), daemon=True) for i in range(launchers)
        ]

    def _launch(self, index: int) -> None:
        picker = random.Random(self.seed * 1000 + index)
        while not self.stop.is_set():
            scope = picker.choice(["shop", "shop", "default"])
            extra = ["--when-on", "wait"] if picker.random() < 0.25 else []
            seconds = picker.choice(self.durations)
            result = self.site.run(*_job(self.site, self.log, scope, seconds, *extra), timeout=60)
            if result.returncode != 0 or result.stderr:
                self.errors.append(f"{result.returncode}: {result.stderr}")

    def mark(self, text: str) -> None:
        with open(self.log, "a") as stream:
            stream.write(text + "\n")

    def cycle(self, scope: str, *, settle: float) -> None:
        """One maintenance window on ``scope``: drain, stay on for ``settle`` s, off.

        A job that surely runs across the drain is started first, so every drain has
        something to wait for.
        """
        long_job = self.site.popen(*_job(self.site, self.log, scope, 1.0))
        wait_until(lambda: self.site.holders(scope), what="the long job to run")
        self.mark(f"begin {scope}")
        drain = self.site.ctl("on", scope, "--wait", "--timeout", "30")
        assert drain.returncode == 0, drain.stdout + drain.stderr
        self.mark(f"drained {scope}")
        time.sleep(settle)
        self.mark(f"off {scope}")  # before the flag goes: later starts are legitimate
        assert self.site.ctl("off", scope).returncode == 0
        long_job.communicate(timeout=30)

    def __enter__(self) -> Churn:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)


def check_log(lines: list[str]) -> dict[str, int]:
    """Verify the drain guarantee on an event log; return counts of what happened.

    At each ``drained S`` no job of a scope S covers is inside; between ``drained S``
    and ``off S`` none starts. ``default`` covers every scope.
    """
    inside: dict[str, str] = {}  # pid -> scope
    on: str | None = None
    counts = {"starts": 0, "drains": 0, "waited": 0}
    waiting, drain_scope = False, ""

    def covered(job_scope: str) -> bool:
        return on is not None and on in ("default", job_scope)

    for number, line in enumerate(lines, start=1):
        kind, scope, *rest = line.split()
        if kind == "start":
            assert not covered(scope), f"line {number}: {scope} job started during maintenance"
            inside[rest[0]] = scope
            counts["starts"] += 1
        elif kind == "end":
            inside.pop(rest[0])
            if waiting and drain_scope in (scope, "default"):
                counts["waited"] += 1
        elif kind == "begin":
            waiting, drain_scope = True, scope
        elif kind == "drained":
            on, waiting = scope, False
            still = [pid for pid, s in inside.items() if covered(s)]
            assert not still, f"line {number}: drained {scope} with jobs {still} inside"
            counts["drains"] += 1
        elif kind == "off":
            on = None
    return counts


def test_check_log_catches_violations() -> None:
    """The log checker rejects a job inside at ``drained`` and a start before ``off``."""
    ok = ["start shop 1", "begin shop", "end shop 1", "drained shop", "off shop", "start shop 2"]
    assert check_log(ok) == {"starts": 2, "drains": 1, "waited": 1}
    with pytest.raises(AssertionError, match="inside"):
        check_log(["start shop 1", "begin shop", "drained shop"])
    with pytest.raises(AssertionError, match="started during maintenance"):
        check_log(["begin default", "drained default", "start shop 3", "off default"])
    assert (
        check_log(
            [
                "start default 1",
                "begin shop",
                "drained shop",
                "start default 2",
                "off shop",
                "end default 1",
                "end default 2",
            ]
        )["drains"]
        == 1
    )


def test_drain_guarantee_under_churn(tmp_short: Path) -> None:
    """Many parallel guard-run jobs while maintenance is toggled with guardctl on --wait:
    after each return no job is inside, and none starts until off."""
    site = Site(tmp_short)
    with Churn(site, launchers=4, durations=[0.0, 0.02, 0.1], seed=1) as churn:
        for scope in ["shop", "default", "shop"]:
            time.sleep(0.2)
            churn.cycle(scope, settle=0.3)
    assert churn.errors == []
    counts = check_log(churn.log.read_text().splitlines())
    assert counts["drains"] == 3 and counts["waited"] >= 3 and counts["starts"] > 10


@contextmanager
def _daemon_site() -> Iterator[Site]:
    with running_guardd({"scopes": {"shop": None}}) as daemon:
        yield Site.of_guardd(daemon)


@pytest.mark.heavy
@pytest.mark.timeout(900)
@settings(
    max_examples=6, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    launchers=st.integers(min_value=2, max_value=8),
    durations=st.lists(st.floats(min_value=0.0, max_value=0.3), min_size=1, max_size=4),
    cycles=st.lists(
        st.tuples(st.sampled_from(["shop", "default"]), st.floats(min_value=0.0, max_value=0.5)),
        min_size=1,
        max_size=4,
    ),
    with_daemon=st.booleans(),
)
def test_drain_guarantee_under_varied_churn(
    launchers: int, durations: list[float], cycles: list[tuple[str, float]], with_daemon: bool
) -> None:
    """The drain guarantee holds for varied job lengths, parallelism and maintenance
    windows, with and without guardd running."""
    context = _daemon_site() if with_daemon else _plain_site()
    with context as site:
        with Churn(site, launchers=launchers, durations=durations, seed=len(cycles)) as churn:
            for scope, settle in cycles:
                churn.cycle(scope, settle=settle)
        lines = churn.log.read_text().splitlines()  # before the site's files are removed
    assert churn.errors == []
    counts = check_log(lines)
    assert counts["drains"] == len(cycles) and counts["waited"] >= len(cycles)


@contextmanager
def _plain_site() -> Iterator[Site]:
    root = short_tmp()
    try:
        yield Site(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
