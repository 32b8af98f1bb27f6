"""Scheduled windows and transition hooks, with the real guardd and guardctl."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from guardd.core.durations import format_time
from guardd.core.schedule import Window, read_windows, write_windows
from guardd.daemon.app import SCHEDULE_RECHECK
from tests.helpers import Guardd, free_port, run_guardctl, wait_until
from tests.httpclient import get, write_flag

MakeGuardd = Callable[..., Guardd]


def ctl(daemon: Guardd, *args: str) -> subprocess.CompletedProcess[str]:
    return run_guardctl(daemon.config_path, *args)


def at(seconds: float) -> str:
    return format_time(datetime.now(UTC) + timedelta(seconds=seconds))


def shop_state(daemon: Guardd) -> str:
    return str(daemon.request({"op": "status"})["scopes"]["shop"]["state"])


def near_window(
    daemon: Guardd, *, auto_off: bool, lead: float = 1.0, length: float = 1.5
) -> Window:
    """Store a window starting ``lead`` seconds from now, as guardctl would.

    Written directly (not through guardctl) so that the test, not the speed of a
    loaded machine starting guardctl, decides how far ahead the window starts.
    """
    now = datetime.now(UTC)
    window = Window(
        id="near1",
        scope="shop",
        at=format_time(now + timedelta(seconds=lead)),
        end=format_time(now + timedelta(seconds=lead + length)),
        reason="kernel update",
        notice=3600,
        auto_off=auto_off,
    )
    daemon.lock_dir.mkdir(parents=True, exist_ok=True)
    write_windows(str(daemon.lock_dir), "shop", [window])
    return window


def test_window_is_announced_and_listed(make_guardd: MakeGuardd) -> None:
    """A scheduled window shows as upcoming in the status reply, guardctl status and --list."""
    daemon = make_guardd({"scopes": {"shop": None}}).start()
    result = ctl(
        daemon,
        "schedule",
        "shop",
        "--at",
        at(3600),
        "--for",
        "1h",
        "--reason",
        "kernel update",
        "--notice",
        "2h",
        "--auto-off",
    )
    assert result.returncode == 0, result.stderr
    window_id = result.stdout.split()[1].rstrip(":")
    status = wait_until(
        lambda: (r := daemon.request({"op": "status"}))["upcoming"] and r, what="window announced"
    )
    assert [w["id"] for w in status["upcoming"]] == [window_id]
    assert status["upcoming"][0]["reason"] == "kernel update"
    listed = json.loads(ctl(daemon, "schedule", "--list", "--json").stdout)["windows"]
    assert listed[0]["id"] == window_id and listed[0]["auto_off"] is True
    assert "upcoming: shop" in ctl(daemon, "status").stdout
    assert shop_state(daemon) == "off"


def test_window_starts_and_auto_ends(make_guardd: MakeGuardd) -> None:
    """At its start guardd writes the flag; at its end, with auto-off, removes it."""
    daemon = make_guardd({"scopes": {"shop": None}}).start()
    window = near_window(daemon, auto_off=True)
    wait_until(lambda: shop_state(daemon) == "on", timeout=15, what="window start")
    flag = json.loads(daemon.flag("shop").read_text())
    assert flag["reason"] == "kernel update" and flag["by"] == f"guardd schedule {window.id}"
    assert daemon.request({"op": "status"})["upcoming"] == []
    wait_until(lambda: shop_state(daemon) == "off", timeout=15, what="auto-off at the end")
    windows = read_windows(str(daemon.lock_dir), "shop")
    assert windows[0].started and windows[0].done


def test_without_auto_off_maintenance_stays_on(make_guardd: MakeGuardd) -> None:
    """Without --auto-off the end of the window leaves maintenance on for the operator."""
    daemon = make_guardd({"scopes": {"shop": None}}).start()
    near_window(daemon, auto_off=False)
    wait_until(
        lambda: read_windows(str(daemon.lock_dir), "shop")[0].done, timeout=15, what="window done"
    )
    assert shop_state(daemon) == "on"


def test_start_never_overwrites_an_existing_flag(make_guardd: MakeGuardd) -> None:
    """An operator's flag present at the window's start is left as it is, even at auto-off."""
    daemon = make_guardd({"scopes": {"shop": None}}).start()
    daemon.flag("shop").write_text('{"reason": "operator"}')
    near_window(daemon, auto_off=True)
    wait_until(
        lambda: read_windows(str(daemon.lock_dir), "shop")[0].done, timeout=15, what="window done"
    )
    assert json.loads(daemon.flag("shop").read_text()) == {"reason": "operator"}


def test_restart_starts_a_missed_window_but_not_one_an_operator_ended(
    make_guardd: MakeGuardd,
) -> None:
    """A start missed while guardd was down happens at startup; an ended one is not re-entered."""
    daemon = make_guardd({"scopes": {"shop": None, "blog": None}})
    now = datetime.now(UTC)
    daemon.lock_dir.mkdir(parents=True)

    def window(scope: str, *, started: bool) -> Window:
        return Window(
            id=f"{scope}1",
            scope=scope,
            at=format_time(now - timedelta(minutes=5)),
            end=format_time(now + timedelta(hours=1)),
            reason="planned",
            notice=3600,
            auto_off=True,
            started=started,
            wrote_flag=started,
        )

    write_windows(str(daemon.lock_dir), "shop", [window("shop", started=False)])
    # blog's window started earlier and an operator has since removed the flag.
    write_windows(str(daemon.lock_dir), "blog", [window("blog", started=True)])
    daemon.start()
    wait_until(lambda: shop_state(daemon) == "on", what="missed start carried out")
    assert daemon.request({"op": "status"})["scopes"]["blog"]["state"] == "off"
    assert not daemon.flag("blog").exists()


def test_schedule_usage_errors(make_guardd: MakeGuardd) -> None:
    """A past --at, an overlap or a missing --for is exit 2; unknown ids too."""
    daemon = make_guardd({"scopes": {"shop": None}})
    assert ctl(daemon, "schedule", "shop", "--at", at(-60), "--for", "1h").returncode == 2
    assert ctl(daemon, "schedule", "shop", "--at", at(3600), "--for", "1h").returncode == 0
    clash = ctl(daemon, "schedule", "shop", "--at", at(5400), "--for", "1h")
    assert clash.returncode == 2 and "overlaps window" in clash.stderr
    assert ctl(daemon, "schedule", "shop", "--at", at(3600)).returncode == 2
    assert ctl(daemon, "unschedule", "nope").returncode == 2


def test_unschedule_removes_the_window(make_guardd: MakeGuardd) -> None:
    """unschedule ID removes a window; --list no longer shows it."""
    daemon = make_guardd({"scopes": {"shop": None}})
    out = ctl(daemon, "schedule", "shop", "--at", at(3600), "--for", "1h").stdout
    window_id = out.split()[1].rstrip(":")
    assert ctl(daemon, "unschedule", window_id).returncode == 0
    assert ctl(daemon, "schedule", "--list").stdout.strip() == "no scheduled windows"


def test_hooks_run_with_environment_in_order(make_guardd: MakeGuardd, tmp_short: Path) -> None:
    """on_enter and on_exit run in order with GUARD_* set (GUARD_BY and GUARD_NOTE
    too); a failing hook blocks nothing."""
    log = tmp_short / "hooks.log"
    record = [
        "sh",
        "-c",
        f'echo "$0 $GUARD_SCOPE $GUARD_STATE $GUARD_REASON $GUARD_UNTIL $GUARD_BY $GUARD_NOTE"'
        f" >> {log}",
    ]
    daemon = make_guardd(
        {
            "scopes": {"shop": None},
            "hooks": {
                "on_enter": [
                    [*record[:2], record[2], "enter1"],
                    ["false"],
                    [*record[:2], record[2], "enter2"],
                ],
                "on_exit": [[*record[:2], record[2], "exit"]],
            },
        }
    ).start()
    # Atomically, as guardctl does: a plain write can be seen empty (on, no reason).
    write_flag(
        daemon.flag("shop"),
        {"reason": "db", "until": "2099-01-01T00:00:00Z", "by": "ana@h", "note": "n1"},
    )
    wait_until(lambda: log.exists() and log.read_text().count("\n") >= 2, what="enter hooks")
    daemon.flag("shop").unlink()
    wait_until(lambda: log.read_text().count("\n") >= 3, what="exit hook")
    assert log.read_text().splitlines() == [
        "enter1 shop on db 2099-01-01T00:00:00Z ana@h n1",
        "enter2 shop on db 2099-01-01T00:00:00Z ana@h n1",
        "exit shop off    ",
    ]
    _, err = daemon.stop()
    assert "on_enter hook 'false' for shop failed with exit status 1" in err


def test_hook_timeout_kills_it_and_states_found_at_start_fire_nothing(
    make_guardd: MakeGuardd, tmp_short: Path
) -> None:
    """A hook past hooks.timeout is killed and logged; a flag present at start fires nothing."""
    marker = tmp_short / "fired"
    daemon = make_guardd(
        {
            "hooks": {"timeout": "0.5", "on_enter": [["sleep", "30"], ["touch", str(marker)]]},
        }
    )
    daemon.lock_dir.mkdir(parents=True)
    daemon.flag().touch()
    daemon.start()
    daemon.notify.wait_for("READY=1")
    assert not marker.exists()
    daemon.flag().unlink()
    wait_until(
        lambda: daemon.request({"op": "status"})["scopes"]["default"]["state"] == "off", what="off"
    )
    daemon.flag().touch()
    wait_until(marker.exists, what="hook after the timed-out one")
    _, err = daemon.stop()
    assert "timed out after 0.5s and was killed" in err


def test_upcoming_window_is_in_maintenance_json(make_guardd: MakeGuardd) -> None:
    """/maintenance.json lists a window in its notice period under upcoming (for banners)."""
    port = free_port()
    daemon = make_guardd(
        {"scopes": {"shop": None}, "http": {"listen": [f"127.0.0.1:{port}"], "scope": "shop"}}
    ).start()
    assert get(port, "/maintenance.json").json()["upcoming"] == []
    result = ctl(
        daemon,
        "schedule",
        "shop",
        "--at",
        at(3600),
        "--for",
        "30m",
        "--reason",
        "db upgrade",
        "--notice",
        "2h",
    )
    assert result.returncode == 0, result.stderr
    document = wait_until(
        lambda: (d := get(port, "/maintenance.json").json())["upcoming"] and d,
        what="upcoming window published",
    )
    assert document["state"] == "off"
    [window] = document["upcoming"]
    assert window["reason"] == "db upgrade" and window["scope"] == "shop"
    # A window further away than its notice is not announced yet.
    ctl(daemon, "schedule", "shop", "--at", at(5 * 3600), "--for", "30m", "--notice", "1h")
    time.sleep(0.3)
    assert len(get(port, "/maintenance.json").json()["upcoming"]) == 1


def test_bad_window_is_skipped_and_every_other_window_runs(make_guardd: MakeGuardd) -> None:
    """A hand-edited window guardd cannot use (a notice reaching past any clock) is
    logged once and kept in the file; the scope's other windows and other scopes'
    windows still start on time."""
    daemon = make_guardd({"scopes": {"shop": None, "blog": None}})
    near_window(daemon, auto_off=False)
    path = daemon.lock_dir / "shop.schedule.json"
    data = json.loads(path.read_text())
    bad = {**data["windows"][0], "id": "bad1", "notice": -1e12}
    path.write_text(json.dumps({"windows": [bad, *data["windows"]]}))
    blog = Window(
        id="blog1",
        scope="blog",
        at=at(1.0),
        end=at(30.0),
        reason=None,
        notice=60,
        auto_off=False,
    )
    write_windows(str(daemon.lock_dir), "blog", [blog])
    daemon.start()

    def state(scope: str) -> str:
        return str(daemon.request({"op": "status"})["scopes"][scope]["state"])

    wait_until(lambda: state("shop") == state("blog") == "on", timeout=15, what="both start")
    assert daemon.log().count("'bad1' skipped") == 1
    assert "bad1" in {w["id"] for w in json.loads(path.read_text())["windows"]}


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_hook_leaving_a_background_process_is_done_and_leaks_nothing(
    make_guardd: MakeGuardd, tmp_short: Path, loop: str
) -> None:
    """A hook that exits 0 leaving background processes (holding its output pipe) is
    logged as done with what it printed, not as timed out; over 20 transitions
    guardd's descriptor count stays where it was (the processes are left alone). On
    both event loops: asyncio's kept one pipe per transition."""
    pids = tmp_short / "pids"
    # One left in the hook's process group, one in a session of its own (out of reach
    # of a kill of the group): both hold the hook's output pipe open.
    script = f"sleep 60 & echo $! >> {pids}; setsid sleep 60 & echo $! >> {pids}; echo started"
    daemon = make_guardd(
        {"hooks": {"timeout": "2", "on_enter": [["sh", "-c", script]]}}, env={"GUARDD_LOOP": loop}
    ).start()
    assert daemon.process is not None
    fd_dir = f"/proc/{daemon.process.pid}/fd"
    try:
        for flip in range(20):
            daemon.flag().touch()
            wait_until(
                lambda flip=flip: daemon.log().count("on_enter hook 'sh' for default") > flip,
                what=f"hook {flip + 1} logged",
            )
            if flip == 0:
                before = fd_list(fd_dir)  # after the first: its pipes warmed up
            daemon.flag().unlink()
            wait_until(lambda: default_off(daemon), what="off")
        after = fd_list(fd_dir)
        assert len(after) <= len(before), sorted(set(after) - set(before))
        log = daemon.log()
        assert log.count("on_enter hook 'sh' for default done: started") == 20, log[-2000:]
        assert "timed out" not in log
    finally:
        for pid in pids.read_text().split() if pids.exists() else []:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)


def default_off(daemon: Guardd) -> bool:
    """The default scope is off."""
    return bool(daemon.request({"op": "status"})["scopes"]["default"]["state"] == "off")


def fd_list(fd_dir: str) -> list[str]:
    """guardd's pipes (where a hook's output comes; sockets and files come and go
    with status requests and job counts)."""
    targets = []
    for name in os.listdir(fd_dir):
        with contextlib.suppress(OSError):
            targets.append(f"{name}:{os.readlink(f'{fd_dir}/{name}')}")
    return [target for target in targets if ":pipe:" in target]


def unseen_window(daemon: Guardd, *, lead: float) -> None:
    """Add a window starting ``lead`` seconds from now next to one two hours ahead,
    where guardd cannot see the file change (polling once an hour): only its own
    re-planning can find it, as after a forward clock step."""
    now = datetime.now(UTC)
    near = Window(
        id="near1",
        scope="shop",
        at=format_time(now + timedelta(seconds=lead)),
        end=format_time(now + timedelta(hours=1)),
        reason="clock stepped",
        notice=60,
        auto_off=True,
    )
    write_windows(str(daemon.lock_dir), "shop", [far_window(), near])


def polled_hourly(make_guardd: MakeGuardd) -> Guardd:
    """A guardd with scope shop that learns of file changes only by polling, hourly,
    planned around one window two hours ahead."""
    daemon = make_guardd(
        {"scopes": {"shop": None}, "poll_interval": "1h"}, env={"GUARDD_POLL_ONLY": "1"}
    )
    daemon.lock_dir.mkdir(parents=True)
    write_windows(str(daemon.lock_dir), "shop", [far_window()])
    daemon.start()
    # READY comes before the first schedule pass: wait for it (the window is shown).
    wait_until(
        lambda: [w["id"] for w in daemon.request({"op": "status"})["upcoming"]] == ["far1"],
        what="the first schedule pass",
    )
    return daemon


def far_window() -> Window:
    """A window two hours ahead, announced from now on."""
    now = datetime.now(UTC)
    return Window(
        id="far1",
        scope="shop",
        at=format_time(now + timedelta(hours=2)),
        end=format_time(now + timedelta(hours=3)),
        reason="later",
        notice=3 * 3600,
        auto_off=True,
    )


def test_reload_re_plans_the_schedule(make_guardd: MakeGuardd) -> None:
    """SIGHUP runs the schedule again: a window due now (that guardd could not have
    seen coming) starts at the reload, not at the next planned wake-up."""
    daemon = polled_hourly(make_guardd)
    unseen_window(daemon, lead=0.5)
    time.sleep(1.0)
    assert shop_state(daemon) == "off"  # not seen: nothing re-planned yet
    daemon.signal(signal.SIGHUP)
    wait_until(lambda: shop_state(daemon) == "on", timeout=5.0, what="window started")


@pytest.mark.heavy
def test_schedule_sleeps_at_most_the_recheck_interval(make_guardd: MakeGuardd) -> None:
    """With the next window two hours away guardd still wakes within
    SCHEDULE_RECHECK (30 s): a window whose start came while it slept (a forward
    clock step, here a file change it could not see) starts at most that late."""
    assert SCHEDULE_RECHECK <= 30.0
    daemon = polled_hourly(make_guardd)
    started = time.monotonic()
    unseen_window(daemon, lead=0.5)
    wait_until(
        lambda: shop_state(daemon) == "on",
        timeout=40.0,
        interval=0.5,
        what="window started by the bounded re-check",
    )
    assert time.monotonic() - started <= 35.0
