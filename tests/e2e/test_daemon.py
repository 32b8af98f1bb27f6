"""The real guardd: systemd notifications, the control socket, flag watching, signals."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import ControlClient, Guardd, command, free_port, wait_until
from tests.httpclient import get, write_flag

MakeGuardd = Callable[..., Guardd]


def test_ready_carries_status_and_listeners_are_up(make_guardd: MakeGuardd) -> None:
    """READY=1 comes with a STATUS= line, and only once the socket already answers."""
    daemon = make_guardd({"scopes": {"shop": None}})
    daemon.start()
    ready = daemon.notify.wait_for("READY=1")
    assert "STATUS=all 2 scope(s) in service" in ready
    assert daemon.request({"op": "ping"}) == {"ok": True}
    status = daemon.request({"op": "status"})
    assert status["ok"] is True and status["node"] == "test-node"
    assert set(status["scopes"]) == {"default", "shop"}
    for fields in status["scopes"].values():
        assert fields == {
            "state": "off",
            "since": None,
            "until": None,
            "reason": None,
            "jobs": 0,
            "mode": None,
            "overdue": False,
            "via": None,
            "by": None,
            "note": None,
        }
    # The run locks of configured scopes exist, readable by every user.
    for scope in ("default", "shop"):
        mode = (daemon.runtime_dir / f"{scope}.run").stat().st_mode & 0o777
        assert mode == 0o644


def test_touch_and_rm_reach_a_watch_client(guardd: Guardd) -> None:
    """A plain touch and rm of the flag each produce one watch event."""
    with guardd.connect() as client:
        first = client.request({"op": "watch"})
        assert first["scopes"]["default"]["state"] == "off"
        guardd.flag().touch()
        event = client.read_line()
        assert event["event"] == "state" and event["scope"] == "default"
        assert event["state"] == "on"
        assert event["since"] is not None and event["reason"] is None
        guardd.flag().unlink()
        event = client.read_line()
        assert (event["scope"], event["state"], event["since"]) == ("default", "off", None)


def test_flag_content_and_reason_changes_are_events(guardd: Guardd) -> None:
    """Rewriting the flag's reason or until is an event too; guardctl on writes atomically."""
    env = {**os.environ, "GUARDD_CONFIG": str(guardd.config_path)}
    with guardd.connect() as client:
        client.request({"op": "watch"})
        subprocess.run(
            [command("guardctl"), "on", "--reason", "first"],
            env=env,
            check=True,
            capture_output=True,
            timeout=30,
        )
        assert client.read_line()["reason"] == "first"
        subprocess.run(
            [command("guardctl"), "on", "--reason", "second", "--for", "1h"],
            env=env,
            check=True,
            capture_output=True,
            timeout=30,
        )
        event = client.read_line()
        assert event["reason"] == "second" and event["until"] is not None


def test_status_reflects_garbage_flag_sanely(guardd: Guardd) -> None:
    """A binary or hostile flag still means on; the reason is one clean line."""
    guardd.flag().write_bytes(b"\x00\xff\xfe binary")
    wait_until(
        lambda: guardd.request({"op": "status"})["scopes"]["default"]["state"] == "on",
        what="state on",
    )
    guardd.flag().write_text("line one\r\nSet-Cookie: evil\n")
    fields = wait_until(
        lambda: (f := guardd.request({"op": "status"})["scopes"]["default"])["reason"] and f,
        what="reason",
    )
    assert fields["reason"] == "line one"


def test_bad_socket_input_gets_codes_and_connection_stays_usable(guardd: Guardd) -> None:
    """bad_request and unknown_op keep the connection open; each line gets its answer."""
    with guardd.connect() as client:
        client.send_raw(b'garbage\n{"op":"reboot"}\n[1,2]\n\xff\xfe\n{"op":"ping"}\n')
        codes = [client.read_line()["error"]["code"] for _ in range(4)]
        assert codes == ["bad_request", "unknown_op", "bad_request", "bad_request"]
        assert client.read_line() == {"ok": True}
        assert client.request({"op": "jobs"}) == {"ok": True, "jobs": []}


def test_line_of_64_kib_is_accepted_and_longer_is_too_long(guardd: Guardd) -> None:
    """A request line of exactly 64 KiB is read; a longer one gets too_long and a hang-up."""
    head, tail = b'{"op":"ping","pad":"', b'"}'
    exact = head + b"x" * (64 * 1024 - len(head) - len(tail)) + tail
    assert len(exact) == 64 * 1024
    with guardd.connect() as client:
        client.send_raw(exact + b"\n")
        assert client.read_line() == {"ok": True}
        client.send_raw(b'{"op":"ping","pad":"' + b"x" * (70 * 1024) + b'"}\n')
        reply = client.read_line()
        assert reply["ok"] is False and reply["error"]["code"] == "too_long"
        assert client.reader.readline() == b""  # closed
    assert guardd.request({"op": "ping"}) == {"ok": True}  # others unaffected


def test_stuck_client_does_not_block_others(guardd: Guardd) -> None:
    """A client that sends half a line and stalls does not delay anyone else."""
    stuck = socket.socket(socket.AF_UNIX)
    stuck.connect(guardd.socket_path)
    stuck.sendall(b'{"op":')
    try:
        assert guardd.request({"op": "status"})["ok"] is True
    finally:
        stuck.close()


def test_sighup_with_broken_config_keeps_serving(guardd: Guardd) -> None:
    """SIGHUP with an invalid config: RELOADING then READY, old config kept, error logged."""
    before = len(guardd.notify.collect())
    guardd.write_config("http:\n  listen: [nope]\n")
    guardd.signal(signal.SIGHUP)
    reloading = guardd.notify.wait_for("RELOADING=1", after=before)
    assert "MONOTONIC_USEC=" in reloading
    usec = int(reloading.split("MONOTONIC_USEC=")[1].split()[0])
    assert abs(usec - time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000) < 60_000_000
    index = guardd.notify.messages.index(reloading)
    guardd.notify.wait_for("READY=1", after=index + 1)
    assert guardd.request({"op": "ping"}) == {"ok": True}
    guardd.flag().touch()  # the old config's watcher still works
    wait_until(
        lambda: guardd.request({"op": "status"})["scopes"]["default"]["state"] == "on",
        what="flag seen after failed reload",
    )
    code, err = guardd.stop()
    assert code == 0
    assert "reload failed, keeping the running configuration" in err
    assert "http.listen[0]" in err


def test_sighup_with_valid_config_adds_a_scope(guardd: Guardd) -> None:
    """SIGHUP with a valid new config: the new scope appears and its flag is watched."""
    guardd.settings["scopes"] = {"shop": None}
    guardd.write_config()
    with guardd.connect() as watcher:
        watcher.request({"op": "watch"})
        guardd.signal(signal.SIGHUP)
        wait_until(
            lambda: "shop" in guardd.request({"op": "status"})["scopes"],
            what="new scope after reload",
        )
        guardd.flag("shop").write_text('{"reason": "after reload"}')
        event = watcher.read_line()
        while event.get("scope") != "shop" or event.get("state") != "on":
            event = watcher.read_line()
        assert event["reason"] == "after reload"


def test_sigterm_sends_stopping_and_exits_zero(guardd: Guardd) -> None:
    """SIGTERM: STOPPING=1, exit 0, the socket file is removed; watch clients see EOF."""
    client = guardd.connect()
    client.request({"op": "watch"})
    code, _ = guardd.stop()
    assert code == 0
    guardd.notify.wait_for("STOPPING=1")
    assert not os.path.exists(guardd.socket_path)
    assert client.reader.readline() == b""
    client.close()


def test_sigint_also_stops_cleanly(guardd: Guardd) -> None:
    """SIGINT (Ctrl-C in a terminal) stops like SIGTERM, exit 0."""
    guardd.signal(signal.SIGINT)
    assert guardd.process is not None
    assert guardd.process.wait(timeout=10) == 0
    guardd.notify.wait_for("STOPPING=1")


def test_watchdog_pings_at_half_the_interval(make_guardd: MakeGuardd) -> None:
    """With WATCHDOG_USEC set, WATCHDOG=1 arrives repeatedly; without it, never."""
    daemon = make_guardd(env={"WATCHDOG_USEC": "400000"}).start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if sum("WATCHDOG=1" in m for m in daemon.notify.collect(timeout=0.2)) >= 3:
            break
    assert sum("WATCHDOG=1" in m for m in daemon.notify.messages) >= 3
    quiet = make_guardd().start()
    time.sleep(0.5)
    assert not any("WATCHDOG" in m for m in quiet.notify.collect())


def test_watchdog_pid_of_another_process_is_ignored(make_guardd: MakeGuardd) -> None:
    """WATCHDOG_PID naming another process (inherited env) means no pings."""
    daemon = make_guardd(env={"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"}).start()
    time.sleep(0.6)
    assert not any("WATCHDOG" in m for m in daemon.notify.collect())


def test_status_line_follows_changes(guardd: Guardd) -> None:
    """STATUS= is sent again when the state changes."""
    guardd.flag().write_text("maintenance window\n")
    guardd.notify.wait_for("STATUS=maintenance: default on")


def test_journal_stream_gets_priority_prefixes(make_guardd: MakeGuardd) -> None:
    """Under journald (JOURNAL_STREAM set) every stderr line starts with <N>."""
    daemon = make_guardd(env={"JOURNAL_STREAM": "8:12345"}).start()
    daemon.flag().touch()
    wait_until(
        lambda: daemon.request({"op": "status"})["scopes"]["default"]["state"] == "on",
        what="state on",
    )
    code, err = daemon.stop()
    assert code == 0
    lines = [line for line in err.splitlines() if line]
    assert lines and all(line[0] == "<" and line[2] == ">" for line in lines)
    assert any(line.startswith("<6>") for line in lines)


def test_lock_dir_deleted_and_recreated(make_guardd: MakeGuardd) -> None:
    """rm -r of the lock directory and mkdir again: flags there are still seen."""
    daemon = make_guardd({"poll_interval": "0.1"}).start()
    shutil.rmtree(daemon.lock_dir)
    daemon.lock_dir.mkdir()
    time.sleep(0.3)  # let the watcher notice the directory is back
    daemon.flag().write_text("after recreate\n")
    wait_until(
        lambda: daemon.request({"op": "status"})["scopes"]["default"]["reason"] == "after recreate",
        what="flag in recreated dir",
    )
    daemon.flag().unlink()
    wait_until(
        lambda: daemon.request({"op": "status"})["scopes"]["default"]["state"] == "off",
        what="flag removed in recreated dir",
    )


def test_lock_file_in_a_directory_that_appears_later(
    make_guardd: MakeGuardd, tmp_short: Path
) -> None:
    """A scope's own lock_file in a missing directory is polled until the directory exists."""
    app = tmp_short / "app" / "storage"
    daemon = make_guardd(
        {"poll_interval": "0.1", "scopes": {"blog": {"lock_file": str(app / "down")}}}
    ).start()
    app.mkdir(parents=True)
    (app / "down").write_text('{"reason": "framework down file"}')
    wait_until(
        lambda: daemon.request({"op": "status"})["scopes"]["blog"]["state"] == "on",
        what="app's own flag seen",
    )
    _, err = daemon.stop()
    assert "does not exist (yet)" in err


def test_polling_mode_sees_changes(make_guardd: MakeGuardd) -> None:
    """With inotify off (GUARDD_POLL_ONLY=1) changes are seen by polling, and logged as such."""
    daemon = make_guardd({"poll_interval": "0.1"}, env={"GUARDD_POLL_ONLY": "1"}).start()
    daemon.flag().touch()
    wait_until(
        lambda: daemon.request({"op": "status"})["scopes"]["default"]["state"] == "on",
        what="flag seen by polling",
    )
    daemon.flag().unlink()
    wait_until(
        lambda: daemon.request({"op": "status"})["scopes"]["default"]["state"] == "off",
        what="removal seen by polling",
    )
    _, err = daemon.stop()
    assert "polling" in err and "GUARDD_POLL_ONLY=1" in err


def test_draining_then_on_when_the_job_ends(make_guardd: MakeGuardd) -> None:
    """A flag with a lock holder is draining; when the holder ends, on (with no file event)."""
    daemon = make_guardd({"scopes": {"shop": None}}).start()
    # flock(1) runs sleep as a child that inherits the lock: the job is the group.
    holder = subprocess.Popen(
        ["flock", "-s", str(daemon.runtime_dir / "shop.run"), "sleep", "30"], start_new_session=True
    )
    try:
        wait_until(
            lambda: daemon.request({"op": "status"})["scopes"]["shop"]["jobs"] == 1,
            what="job counted",
        )
        with daemon.connect() as client:
            client.request({"op": "watch"})
            daemon.flag("shop").touch()
            event = client.read_line()
            assert (event["scope"], event["state"], event["jobs"]) == ("shop", "draining", 1)
            jobs = daemon.request({"op": "jobs", "scope": "shop"})["jobs"]
            assert [job["pid"] for job in jobs] == [holder.pid]
            assert jobs[0]["cmd"][:2] == ["flock", "-s"] and jobs[0]["scope"] == "shop"
            os.killpg(holder.pid, signal.SIGKILL)
            holder.wait()
            event = client.read_line()
            assert (event["scope"], event["state"], event["jobs"]) == ("shop", "on", 0)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()


def test_lock_inherited_by_a_child_still_counts(make_guardd: MakeGuardd) -> None:
    """A job whose first process exited while a child kept the lock is still draining."""
    daemon = make_guardd({"scopes": {"shop": None}}).start()
    run_lock = daemon.runtime_dir / "shop.run"
    # flock takes the lock, its shell child backgrounds a sleeper and exits.
    subprocess.run(
        ["flock", "-s", str(run_lock), "sh", "-c", "sleep 30 >/dev/null 2>&1 &"],
        check=True,
        timeout=30,
    )
    try:
        daemon.flag("shop").touch()
        fields = wait_until(
            lambda: (
                (f := daemon.request({"op": "status"})["scopes"]["shop"])["state"] == "draining"
                and f
            ),
            what="draining",
        )
        assert fields["jobs"] == 1
        jobs = daemon.request({"op": "jobs"})["jobs"]
        assert len(jobs) == 1 and jobs[0]["cmd"] == ["sleep", "30"]
    finally:
        subprocess.run(["pkill", "-f", "^sleep 30$"], check=False)


def test_second_daemon_on_the_same_socket_refuses(guardd: Guardd, make_guardd: MakeGuardd) -> None:
    """A second guardd does not steal a live daemon's socket: one line, non-zero exit."""
    result = subprocess.run(
        [command("guardd"), "--config", str(guardd.config_path)],
        env=guardd.env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert "another guardd is already running" in result.stderr
    assert "Traceback" not in result.stderr
    assert guardd.request({"op": "ping"}) == {"ok": True}


def test_stale_socket_file_is_replaced(make_guardd: MakeGuardd) -> None:
    """A socket file left by a killed guardd does not stop the next one from starting."""
    daemon = make_guardd().start()
    assert daemon.process is not None
    daemon.process.kill()
    daemon.process.wait()
    assert os.path.exists(daemon.socket_path)
    daemon.start()
    assert daemon.request({"op": "ping"}) == {"ok": True}


def test_socket_mode_is_applied(make_guardd: MakeGuardd) -> None:
    """control.mode is the socket file's mode."""
    daemon = make_guardd({"control": {"mode": "0600"}}).start()
    assert os.stat(daemon.socket_path).st_mode & 0o777 == 0o600


def test_bad_config_at_start_is_exit_2(make_guardd: MakeGuardd) -> None:
    """guardd with an invalid config exits 2 with one line, no traceback."""
    daemon = make_guardd()
    daemon.write_config("agent: {withdraw_as: sideways}\n")
    result = subprocess.run(
        [command("guardd"), "--config", str(daemon.config_path)],
        env=daemon.env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "agent.withdraw_as" in result.stderr


@pytest.mark.parametrize("count", [20])
def test_many_watchers_all_get_the_event(guardd: Guardd, count: int) -> None:
    """Every connected watch client receives each change."""
    clients = [ControlClient(guardd.socket_path) for _ in range(count)]
    try:
        for client in clients:
            client.request({"op": "watch"})
        guardd.flag().touch()
        for client in clients:
            assert client.read_line()["state"] == "on"
    finally:
        for client in clients:
            client.close()


def test_status_reply_is_valid_json_line(guardd: Guardd) -> None:
    """Replies are single JSON lines in UTF-8 (non-ASCII reasons kept as is)."""
    guardd.flag().write_text(json.dumps({"reason": "Wartung: Datenbank-Umzug ☕"}))
    wait_until(
        lambda: (
            guardd.request({"op": "status"})["scopes"]["default"]["reason"]
            == "Wartung: Datenbank-Umzug ☕"
        ),
        what="utf-8 reason",
    )


def test_asyncio_loop_fallback_serves(make_guardd: MakeGuardd) -> None:
    """With GUARDD_LOOP=asyncio (or no uvloop) guardd runs on asyncio's own loop, fully."""
    port = free_port()
    daemon = make_guardd(
        {"http": {"listen": [f"127.0.0.1:{port}"]}}, env={"GUARDD_LOOP": "asyncio"}
    ).start()
    with daemon.connect() as client:
        client.request({"op": "watch"})
        write_flag(daemon.flag(), "on the fallback loop\n")  # atomic: never seen empty
        assert client.read_line()["reason"] == "on the fallback loop"
    response = get(port, "/healthz")
    assert response.status == 503 and response.header("Guard-Maintenance") == "default"
