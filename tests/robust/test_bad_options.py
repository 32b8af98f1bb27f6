"""Durations and times on the command line: beyond any clock they are usage errors
(exit 2, one line), never an OverflowError traceback; the parsers behind them are
fuzzed in-process."""

from __future__ import annotations

import json
import math
import os
import pwd
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st

from guardd.core.durations import format_duration, format_time, parse_duration, parse_time
from tests.helpers import command


@settings(max_examples=300, deadline=None)
@given(
    text=st.one_of(
        st.text(max_size=40),
        st.from_regex(r"\A[0-9]{1,450}(\.[0-9]{1,20})?[dhms]?\Z"),
        st.from_regex(r"\A([0-9]{1,40}d)?([0-9]{1,40}h)?([0-9]{1,40}m)?([0-9]{1,40}s)?\Z"),
    )
)
def test_any_duration_text_is_usable_or_a_value_error(text: str) -> None:
    """parse_duration gives a finite, non-negative number every caller can add to a
    clock and a date, or a ValueError: never OverflowError or anything else."""
    try:
        seconds = parse_duration(text)
    except ValueError:
        return
    assert math.isfinite(seconds) and seconds >= 0
    format_duration(seconds)
    datetime.now(UTC) + timedelta(seconds=seconds)
    assert math.isfinite(time.monotonic() + seconds)


@settings(max_examples=300, deadline=None)
@given(
    text=st.one_of(
        st.text(max_size=40),
        st.from_regex(
            r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}([+-][0-9]{2}:[0-9]{2}|Z)?\Z"
        ),
    )
)
@example(text="9999-12-31T23:59:59-23:59")
@example(text="0001-01-01T00:00:00+23:59")
def test_any_time_text_is_usable_or_a_value_error(text: str) -> None:
    """parse_time gives an aware time that can be shown in UTC, or a ValueError."""
    try:
        moment = parse_time(text)
    except ValueError:
        return
    assert moment.tzinfo is not None
    format_time(moment)


HUGE = "99999999999999999999"
WHEN = "2099-01-01T00:00:00Z"


@pytest.mark.parametrize(
    ("program", "args", "option"),
    [
        ("guardctl", ["on", "--for", HUGE], "--for"),
        ("guardctl", ["on", "--for", "9" * 400 + "d"], "--for"),
        ("guardctl", ["on", "--until", "9999-12-31T23:59:59-23:59"], "--until"),
        ("guardctl", ["on", "--wait", "--timeout", HUGE], "--timeout"),
        ("guardctl", ["schedule", "--at", WHEN, "--for", HUGE], "--for"),
        ("guardctl", ["schedule", "--at", WHEN, "--for", "1h", "--notice", HUGE], "--notice"),
        ("guardctl", ["schedule", "--at", "9999-12-31T23:00:00Z", "--for", "2h"], "--for"),
        ("guard-run", ["--when-on", "wait", "--wait-timeout", HUGE, "--", "true"], "--wait"),
        ("guard-run", ["--interrupt", "--grace", "9" * 400 + "d", "--", "true"], "--grace"),
    ],
)
def test_out_of_range_durations_and_times_are_usage_errors(
    tmp_path: Path, program: str, args: list[str], option: str
) -> None:
    """Durations and times beyond any clock: exit 2 with one line naming the option, and
    nothing written or run."""
    config = tmp_path / "config.yaml"
    lock_dir = tmp_path / "lock"
    config.write_text(
        yaml.safe_dump(
            {
                "lock_dir": str(lock_dir),
                "runtime_dir": str(tmp_path / "run"),
                "http": {"listen": []},
            }
        )
    )
    result = subprocess.run(
        [command(program), *args],
        env={"PATH": "/usr/bin:/bin", "GUARDD_CONFIG": str(config), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"{program}: ") and result.stderr.count("\n") == 1
    assert option in result.stderr
    assert "Traceback" not in result.stderr
    written = [p.name for p in lock_dir.iterdir()] if lock_dir.exists() else []
    assert written in ([], [".schedule.mutex"])


def _ctl(
    tmp_path: Path, *args: str, preexec_fn: Callable[[], None] | None = None
) -> subprocess.CompletedProcess[str]:
    """guardctl ARGS on a config in ``tmp_path`` (scopes default and shop)."""
    config = tmp_path / "config.yaml"
    if not config.exists():
        config.write_text(
            yaml.safe_dump(
                {
                    "lock_dir": str(tmp_path / "lock"),
                    "runtime_dir": str(tmp_path / "run"),
                    "scopes": {"shop": None},
                    "http": {"listen": []},
                }
            )
        )
    return subprocess.run(
        [command("guardctl"), *args],
        env={"PATH": "/usr/bin:/bin", "GUARDD_CONFIG": str(config), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        preexec_fn=preexec_fn,
    )


def test_schedule_list_skips_windows_beyond_any_clock(tmp_path: Path) -> None:
    """``schedule --list`` on a hand-edited file with Infinity, NaN and a negative
    notice lists the good window and says once, per bad window, that it was skipped."""
    (tmp_path / "lock").mkdir()
    good = {"id": "good1", "at": WHEN, "end": "2099-01-01T01:00:00Z", "notice": 60}
    bad = [
        {**good, "id": "inf1", "notice": math.inf},
        {**good, "id": "nan1", "notice": math.nan},
        {**good, "id": "neg1", "notice": -1e12},
        {**good, "id": "back1", "end": "2098-01-01T00:00:00Z"},
    ]
    (tmp_path / "lock" / "shop.schedule.json").write_text(json.dumps({"windows": [*bad, good]}))
    result = _ctl(tmp_path, "schedule", "--list")
    assert result.returncode == 0, result.stderr
    assert "good1" in result.stdout and "inf1" not in result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 4 and all(line.startswith("guardctl: ") for line in lines)
    assert all(f"'{w['id']}' skipped" in line for w, line in zip(bad, lines, strict=True))
    added = _ctl(tmp_path, "schedule", "shop", "--at", "2099-02-01T00:00:00Z", "--for", "1h")
    assert added.returncode == 0, added.stderr
    kept = json.loads((tmp_path / "lock" / "shop.schedule.json").read_text())["windows"]
    assert {w["id"] for w in kept} >= {"inf1", "nan1", "neg1", "back1", "good1"}


def test_on_works_for_a_uid_without_passwd_entry(tmp_short: Path) -> None:
    """``guardctl on`` run by a uid that has no passwd entry (no USER, LOGNAME) writes
    the flag with ``by`` naming the uid instead of failing with a traceback.

    guardctl runs in a forked child that drops to the uid (the interpreter may live
    where that uid cannot exec it, e.g. under /root)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to a uid without a passwd entry")
    uid = 54321
    with pytest.raises(KeyError):
        pwd.getpwuid(uid)
    tmp_path = tmp_short
    tmp_path.chmod(0o755)  # the uid reads the config in it
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "lock_dir": str(tmp_path / "lock"),
                "runtime_dir": str(tmp_path / "run"),
                "scopes": {"shop": None},
                "http": {"listen": []},
            }
        )
    )
    for name in ("lock", "run"):
        (tmp_path / name).mkdir()
        os.chown(tmp_path / name, uid, uid)
    out, err = tmp_path / "out", tmp_path / "err"
    pid = os.fork()
    if pid == 0:  # pragma: no cover -- the child; its results are checked below
        code = 70
        try:
            from guardd.cli.ctl.main import main

            for name in ("USER", "LOGNAME", "LNAME", "USERNAME", "SUDO_USER"):
                os.environ.pop(name, None)
            os.environ["GUARDD_CONFIG"] = str(config)
            sys.stdout = open(out, "w")  # noqa: SIM115 -- the child exits right after
            sys.stderr = open(err, "w")  # noqa: SIM115
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            code = main(["on", "shop", "--reason", "test"])
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert (os.waitstatus_to_exitcode(status), err.read_text()) == (0, "")
    flag = json.loads((tmp_path / "lock" / "shop.lock").read_text())
    assert flag["by"].startswith(f"uid {uid}@")
