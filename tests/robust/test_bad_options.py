"""Durations and times on the command line: beyond any clock they are usage errors
(exit 2, one line), never an OverflowError traceback; the parsers behind them are
fuzzed in-process."""

from __future__ import annotations

import math
import subprocess
import time
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
