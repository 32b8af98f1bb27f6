"""No one let in: the control socket's permissions, nothing served from disk but the
template, nothing leaked through logs or symlinks, and requests that can neither make
guardd open files nor grow its memory without bound."""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import Guardd, free_port, wait_until
from tests.httpclient import Connection, build_request, get, write_flag
from tests.robust.support import (
    WrappedGuardd,
    assert_no_crash,
    fd_targets,
    file_targets,
    long_lived_guardd,
    proc_status_kib,
    wait_state,
)

MakeGuardd = Callable[..., Guardd]
NOBODY = pwd.getpwnam("nobody")


# --------------------------------------------------------------------------- control socket


@contextlib.contextmanager
def scratch_group() -> Iterator[grp.struct_group]:
    """A fresh system group (root only), deleted afterwards."""
    if os.geteuid() != 0 or shutil.which("groupadd") is None:
        pytest.skip("needs root and groupadd to create a group")
    name = f"gdt{secrets.token_hex(3)}"
    subprocess.run(["groupadd", "--system", name], check=True, capture_output=True)
    try:
        yield grp.getgrnam(name)
    finally:
        subprocess.run(["groupdel", name], check=False, capture_output=True)


def connect_as_nobody(path: str, *, groups: list[int]) -> int:
    """Exit code of a process running as nobody (with ``groups``) connecting to ``path``:
    0 connected, 13 permission denied."""
    code = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "try:\n"
        f"    s.connect({path!r})\n"
        "except PermissionError:\n"
        "    sys.exit(13)\n"
    )

    def drop() -> None:
        os.setgroups(groups)
        os.setgid(NOBODY.pw_gid)
        os.setuid(NOBODY.pw_uid)

    python = shutil.which("python3", path="/usr/bin:/bin")  # one nobody may run
    if python is None:
        pytest.skip("no system python3 to run as nobody")
    return subprocess.run([python, "-c", code], preexec_fn=drop, timeout=30, check=False).returncode


def test_socket_mode_and_group_are_enforced_and_follow_reload(make_guardd: MakeGuardd) -> None:
    """control.mode and control.group are the socket's; a user outside the group cannot
    connect, one in it can; a reload applies a new mode and group."""
    with scratch_group() as group, scratch_group() as other:
        daemon = make_guardd({"control": {"mode": "0660", "group": group.gr_name}})
        for directory in (daemon.root, daemon.root.parent):
            directory.chmod(0o755)  # the socket's own mode is what must decide
        daemon.start()
        path = daemon.socket_path
        info = os.stat(path)
        assert (info.st_mode & 0o777, info.st_gid) == (0o660, group.gr_gid)
        assert connect_as_nobody(path, groups=[]) == 13
        assert connect_as_nobody(path, groups=[group.gr_gid]) == 0

        daemon.settings["control"] = {"mode": "0600", "group": other.gr_name}
        daemon.write_config()
        seen = len(daemon.notify.collect())
        daemon.signal(signal.SIGHUP)
        daemon.notify.wait_for("READY=1", after=seen)
        info = os.stat(path)
        assert (info.st_mode & 0o777, info.st_gid) == (0o600, other.gr_gid)
        assert connect_as_nobody(path, groups=[other.gr_gid]) == 13


# --------------------------------------------------------------------------- nothing from disk

TEMPLATE = "<!doctype html><title>down</title><p>{reason}</p>"
SIBLING_SECRET = "SIBLING-SECRET-7f3a"


@pytest.fixture(scope="module")
def page_site() -> Iterator[tuple[WrappedGuardd, int, Path]]:
    """guardd serving an operator's page_template (next to a secret file), in maintenance."""
    port = free_port()
    pages = Path(f"/tmp/gd-pages-{secrets.token_hex(4)}")
    pages.mkdir()
    (pages / "page.html").write_text(TEMPLATE)
    (pages / "secret.txt").write_text(SIBLING_SECRET)
    try:
        settings_ = {
            "http": {"listen": [f"127.0.0.1:{port}"], "page_template": str(pages / "page.html")}
        }
        with long_lived_guardd(settings_) as daemon:
            write_flag(daemon.flag(), {"reason": "r"})
            wait_state(daemon, "on", reason="r")
            yield daemon, port, pages
    finally:
        shutil.rmtree(pages, ignore_errors=True)


TRAVERSALS = [
    "/../../etc/passwd",
    "/%2e%2e/%2e%2e/etc/passwd",
    "/..%2f..%2fetc%2fpasswd",
    "/%252e%252e/etc/passwd",
    "/.guardd/../../etc/passwd",
    "/.guardd/bypass/../../../etc/passwd",
    "/.guardd/%2e%2e/%2e%2e/etc/passwd",
    "//etc/passwd",
    "/page.html",
    "/secret.txt",
    "/../secret.txt",
    "/..\\..\\etc\\passwd",
    "/etc/passwd%00.html",
    "http://localhost/../../etc/passwd",
    "http://localhost/%2e%2e/secret.txt",
    "file:///etc/passwd",
    "*",
]


def assert_only_known_answer(body: bytes, status: int) -> None:
    """The body is the rendered template, a fixed error, or guardd's own JSON."""
    assert b"root:" not in body and SIBLING_SECRET.encode() not in body
    rendered = TEMPLATE.replace("{reason}", "r").encode()
    if status == 503 and body.startswith(b"<!doctype"):
        assert body == rendered
    elif status in (400, 404):
        assert body in (b"bad request\n", b"not found\n")
    else:
        json.loads(body)  # health, /maintenance.json or the API page


@pytest.mark.parametrize("target", TRAVERSALS)
def test_traversal_targets_get_the_template_or_an_error(
    page_site: tuple[WrappedGuardd, int, Path], target: str
) -> None:
    """Dot segments, encoded dots and slashes, absolute-form and file: targets: only
    the configured template or a fixed answer, never a file from disk."""
    _, port, _ = page_site
    with Connection(port) as conn:
        conn.send(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode("latin-1"))
        response = conn.read_response()
    assert_only_known_answer(response.body, response.status)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    path=st.lists(
        st.sampled_from(["..", ".", "%2e%2e", "%2f", "etc", "passwd", "secret.txt", "page.html"])
        | st.text(alphabet="abc./%2e\\", max_size=6),
        max_size=8,
    ).map(lambda parts: "/" + "/".join(parts))
)
def test_generated_paths_never_reach_the_disk(
    page_site: tuple[WrappedGuardd, int, Path], path: str
) -> None:
    """Generated paths of dots, slashes and file names: the template or a fixed answer."""
    _, port, _ = page_site
    with Connection(port) as conn:
        conn.send(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        response = conn.read_response()
    assert_only_known_answer(response.body, response.status)


# --------------------------------------------------------------------------- logs

FLAG_SECRET = "FLAG-SECRET-91c2"


def test_logs_carry_the_reason_but_no_other_flag_content(make_guardd: MakeGuardd) -> None:
    """Flags with more than the SPEC's fields (other JSON fields, later lines): the log
    shows the reason, by and note (the audit trail) and nothing else of them."""
    daemon = make_guardd({"scopes": {"shop": None}}).start()
    write_flag(
        daemon.flag(),
        {
            "reason": "visible reason",
            "by": "ops@web-1",
            "note": "audit note",
            "token": FLAG_SECRET,
        },
    )
    wait_state(daemon, "on", reason="visible reason")
    write_flag(daemon.flag("shop"), f"plain reason\nsecond line {FLAG_SECRET}\n")
    wait_state(daemon, "on", "shop", reason="plain reason")
    daemon.flag("shop").write_bytes(b"\x00binary " + FLAG_SECRET.encode())
    wait_state(daemon, "on", "shop", reason=None)
    _, log = daemon.stop()
    assert "visible reason" in log and "plain reason" in log
    assert "by ops@web-1" in log and "note: audit note" in log
    assert FLAG_SECRET not in log


# --------------------------------------------------------------------------- symlinks


def all_answers(daemon: Guardd, port: int, agent_port: int) -> str:
    """Every answer guardd gives about its scopes, as one text to search."""
    texts = [json.dumps(daemon.request({"op": "status"}))]
    texts.append(json.dumps(daemon.request({"op": "jobs"})))
    for path in ("/", "/healthz", "/maintenance.json", "/api/x"):
        response = get(port, path)
        texts.append(response.raw_head.decode("latin-1") + response.body.decode())
    with socket.create_connection(("127.0.0.1", agent_port), timeout=5) as agent:
        texts.append(agent.recv(4096).decode())
    return "\n".join(texts)


def test_flag_symlinked_out_of_its_directory_is_never_read(
    make_guardd: MakeGuardd, tmp_short: Path
) -> None:
    """Flags that are symlinks to secret files (/etc/shadow, a root-only JSON flag):
    the scope is on, but their content reaches no answer and no log."""
    secret = tmp_short / "outside.json"
    secret.write_text(json.dumps({"reason": FLAG_SECRET}))
    secret.chmod(0o600)
    own = tmp_short / "app" / "down"
    own.parent.mkdir()
    port, agent_port = free_port(), free_port()
    daemon = make_guardd(
        {
            "scopes": {"shop": None, "app": {"lock_file": str(own)}},
            "http": {"listen": [f"127.0.0.1:{port}"]},
            "agent": {"listen": [f"127.0.0.1:{agent_port}"]},
        }
    ).start()
    daemon.lock_dir.mkdir(exist_ok=True)
    daemon.flag().symlink_to(secret)
    daemon.flag("shop").symlink_to("/etc/shadow")
    own.symlink_to(secret)
    for scope in ("default", "shop", "app"):
        wait_state(daemon, "on", scope, reason=None)
    shadow_line = Path("/etc/shadow").read_text().splitlines()[0]
    answers = all_answers(daemon, port, agent_port)
    assert FLAG_SECRET not in answers and shadow_line not in answers
    _, log = daemon.stop()
    assert FLAG_SECRET not in log and shadow_line not in log


def test_schedule_symlinked_out_of_its_directory_is_never_read(
    make_guardd: MakeGuardd, tmp_short: Path
) -> None:
    """A schedule file that is a symlink to a file elsewhere is not read (its window
    never shows as upcoming), nor is one that is a FIFO (which would block the read for
    ever); a symlinked schedule mutex is never followed to create a file elsewhere.
    Flags keep working throughout."""
    at = datetime.now(UTC) + timedelta(hours=1)
    outside = tmp_short / "outside.schedule.json"
    window = {
        "id": "deadbeef",
        "at": at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "end": (at + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "reason": FLAG_SECRET,
        "notice": 86400,
    }
    outside.write_text(json.dumps({"windows": [window]}))
    victim = tmp_short / "victim"
    daemon = make_guardd({"scopes": {"shop": None}})
    daemon.lock_dir.mkdir()
    (daemon.lock_dir / "default.schedule.json").symlink_to(outside)
    os.mkfifo(daemon.lock_dir / "shop.schedule.json")
    (daemon.lock_dir / ".schedule.mutex").symlink_to(victim)
    daemon.start()
    write_flag(daemon.flag("shop"), {"reason": "still watched"})
    wait_state(daemon, "on", "shop", reason="still watched")
    reply = daemon.request({"op": "status"})
    assert reply["upcoming"] == []
    assert FLAG_SECRET not in json.dumps(reply)
    assert not victim.exists()
    _, log = daemon.stop()
    assert FLAG_SECRET not in log


# --------------------------------------------------------------------------- descriptors


def steady_fds(pid: int) -> list[str]:
    """The descriptors of ``pid`` once unchanged for 0.3 s (connections just closed by
    a client are gone from guardd's side too)."""
    readings: list[list[str]] = []

    def steady() -> bool:
        readings.append(fd_targets(pid))
        return len(readings) >= 4 and all(r == readings[-1] for r in readings[-4:])

    wait_until(steady, timeout=15, interval=0.1, what="descriptors to settle")
    return readings[-1]


def test_requests_never_open_files_nor_leak_descriptors(make_guardd: MakeGuardd) -> None:
    """A barrage of good, bad and traversal requests on the HTTP and agent ports never
    makes guardd open a file; after it, and after control requests of every kind,
    guardd holds exactly the descriptors it held before."""
    port, agent_port = free_port(), free_port()
    daemon = make_guardd(
        {
            "http": {"listen": [f"127.0.0.1:{port}"], "header_timeout": "1s"},
            "agent": {"listen": [f"127.0.0.1:{agent_port}"]},
        }
    ).start()
    write_flag(daemon.flag(), {"reason": "fds"})
    wait_state(daemon, "on", reason="fds")
    assert daemon.process is not None
    pid = daemon.process.pid
    baseline = steady_fds(pid)
    files = file_targets(pid)
    stop = threading.Event()
    samples: list[list[str]] = []

    def sample() -> None:
        while not stop.is_set():
            samples.append(file_targets(pid))
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        for target in [*TRAVERSALS, "/", "/healthz", "/maintenance.json", "/.guardd/x"] * 5:
            with Connection(port) as conn:
                conn.send(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode("latin-1"))
                conn.read_response()
        for raw in (b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nX: " + b"a" * 9000, b"\x00" * 100):
            with Connection(port) as conn:
                conn.send(raw)
                conn.wait_closed()
        half_open = [socket.create_connection(("127.0.0.1", port)) for _ in range(50)]
        for sock in half_open:
            sock.sendall(b"GET / HTTP/1.1\r\n")
        for _ in range(100):
            with socket.create_connection(("127.0.0.1", agent_port), timeout=5) as agent:
                agent.sendall(b"ready\n")
                agent.recv(100)
    finally:
        stop.set()
        sampler.join()
    for sock in half_open:
        sock.close()
    opened = {target for sample in samples for target in sample if target not in files}
    assert not opened, f"requests made guardd open {opened}"

    for request in ({"op": "ping"}, {"op": "status"}, {"op": "jobs"}, {"op": "nope"}):
        for _ in range(20):
            daemon.request(request)
    watchers = [daemon.connect() for _ in range(20)]
    for watcher in watchers:
        watcher.request({"op": "watch"})
    for watcher in watchers:
        watcher.close()
    assert steady_fds(pid) == baseline
    assert_no_crash(daemon.log())


# --------------------------------------------------------------------------- memory

# What guardd may grow by (peak RSS, VmHWM) while clients send it far more than this:
# a generous bound that still fails if it buffered what it was sent.
RSS_GROWTH_BOUND_KIB = 64 * 1024


def test_memory_stays_bounded_under_oversized_input(make_guardd: MakeGuardd) -> None:
    """Huge request heads, endless header lines and control lines far over 64 KiB, from
    many clients at once (some 400 MiB offered in all): guardd's peak memory grows by less than
    RSS_GROWTH_BOUND_KIB, and it still answers."""
    port = free_port()
    daemon = make_guardd({"http": {"listen": [f"127.0.0.1:{port}"]}}).start()
    assert daemon.process is not None
    pid = daemon.process.pid
    assert get(port, "/healthz").status == 200
    assert daemon.request({"op": "ping"}) == {"ok": True}
    before = proc_status_kib(pid, "VmHWM")
    chunk = b"X-Filler: " + b"a" * 65536

    def huge_head() -> None:
        with contextlib.suppress(OSError), Connection(port) as conn:
            conn.send(b"GET / HTTP/1.1\r\n")
            for _ in range(64):  # 4 MiB without the blank line that ends a head
                conn.send(chunk)

    def endless_lines() -> None:
        with contextlib.suppress(OSError), Connection(port) as conn:
            conn.send(b"GET / HTTP/1.1\r\n")
            for _ in range(20_000):
                conn.send(b"X-Line: value\r\n")

    def long_control_line() -> None:
        with contextlib.suppress(OSError), daemon.connect() as client:
            for _ in range(64):  # 4 MiB in one line
                client.send_raw(b"a" * 65536)

    threads = [threading.Thread(target=work) for work in [huge_head, endless_lines] * 50]
    threads += [threading.Thread(target=long_control_line) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    grown = proc_status_kib(pid, "VmHWM") - before
    assert grown < RSS_GROWTH_BOUND_KIB, f"peak RSS grew by {grown} KiB"
    assert get(port, "/healthz").status == 200
    assert daemon.request({"op": "ping"}) == {"ok": True}
    with Connection(port) as conn:
        conn.send(build_request("/healthz") * 100)
        assert {conn.read_response().status for _ in range(100)} == {200}
    assert_no_crash(daemon.log())


def test_watch_client_that_stops_reading_is_dropped_alone(make_guardd: MakeGuardd) -> None:
    """A watch client that never reads is dropped once 1 MiB is queued for it (peak
    RSS stays bounded); a watcher that reads gets every change up to the last."""
    # default's flag changes all 31 scopes at once: 31 events of about 1 KiB each.
    daemon = make_guardd({"scopes": [f"s{n}" for n in range(30)]}).start()
    assert daemon.process is not None
    pid = daemon.process.pid
    stuck = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.connect(daemon.socket_path)
    stuck.sendall(b'{"op":"watch"}\n')
    reader = daemon.connect()
    reader.request({"op": "watch"})
    received: list[str] = []
    alive = threading.Event()
    alive.set()

    def read_events() -> None:
        with contextlib.suppress(OSError, AssertionError, ValueError):
            while alive.is_set():
                received.append(reader.read_line()["reason"])

    thread = threading.Thread(target=read_events)
    thread.start()
    before = proc_status_kib(pid, "VmHWM")
    padding = "p" * 900  # about 1 KiB per event
    try:
        deadline = time.monotonic() + 60
        count = 0
        while "dropping a watch client" not in daemon.log():
            assert time.monotonic() < deadline, "the stuck watch client was never dropped"
            count += 1
            write_flag(daemon.flag(), {"reason": f"{count} {padding}"})
            time.sleep(0.005)  # one change per refresh, not a coalesced burst
        last = f"{count} {padding}"
        wait_until(lambda: received and received[-1] == last, what="the reader's last event")
    finally:
        alive.clear()
        with contextlib.suppress(OSError):
            reader.sock.shutdown(socket.SHUT_RDWR)  # wakes the reading thread
        thread.join(timeout=10)
        reader.close()
        stuck.close()
    grown = proc_status_kib(pid, "VmHWM") - before
    assert grown < RSS_GROWTH_BOUND_KIB, f"peak RSS grew by {grown} KiB"
    assert daemon.request({"op": "ping"}) == {"ok": True}
    assert_no_crash(daemon.log())


def test_hook_flooding_its_output_keeps_memory_bounded(make_guardd: MakeGuardd) -> None:
    """A hook that prints 300 MB: guardd keeps only the tail it logs, its peak RSS stays
    within the bound, and the hook's last line still reaches the log."""
    flood = "head -c 300000000 /dev/zero | tr '\\0' x; echo; echo hook-finished"
    daemon = make_guardd({"hooks": {"on_enter": [["sh", "-c", flood]], "timeout": "60s"}}).start()
    assert daemon.process is not None
    pid = daemon.process.pid
    before = proc_status_kib(pid, "VmHWM")
    daemon.flag().touch()
    wait_until(lambda: "hook-finished" in daemon.log(), timeout=60, what="the hook to finish")
    grown = proc_status_kib(pid, "VmHWM") - before
    assert grown < RSS_GROWTH_BOUND_KIB, f"peak RSS grew by {grown} KiB"
    assert_no_crash(daemon.log())
