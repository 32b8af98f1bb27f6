"""Scale: many guarded jobs (guardctl jobs, the status op, draining) and many idle HTTP
connections (guardd's RSS and /healthz latency).

Jobs are real ``guard-run --scope shop -- sleep 600`` processes (guard-run with
``sleep`` as its child, both holding both run locks), started afresh for every step in
batches and killed after it (the ``sleep``: guard-run then exits by itself).
Connections are plain TCP connections that never send a byte; guardd runs with a long
``http.header_timeout`` so that it keeps them.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import select
import selectors
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from common import (
    CLIENT_CPU,
    BenchError,
    ControlClient,
    Guardd,
    Processes,
    clean_env,
    cpu_delta,
    cpu_reading,
    kill_group,
    make_tmp,
    median,
    memory_kb,
    open_fds,
    pinned,
    ratio,
    summary_ms,
    venv_command,
)
from http_load import wrk

START_BATCH = 40
START_TIMEOUT = 120.0
DRAIN_TIMEOUT = 60.0
ACCEPT_BATCH = 100


# --------------------------------------------------------------------------- jobs


def _lock_holders(inode: int) -> int:
    """FLOCK entries on ``inode`` in /proc/locks (granted ones only)."""
    count = 0
    with open("/proc/locks", encoding="ascii", errors="replace") as stream:
        for line in stream:
            fields = line.split()
            if len(fields) > 5 and fields[1] == "FLOCK" and fields[5].endswith(f":{inode}"):
                count += 1
    return count


def _command(pid: int) -> int:
    """The command guard-run ``pid`` runs as its child (``pid`` itself until it has one)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as stream:
            children = stream.read().split()
    except OSError:
        return pid
    return int(children[0]) if children else pid


def _kill_commands(jobs: list[subprocess.Popen[bytes]]) -> None:
    """SIGKILL each job's command (its own process group); guard-run then exits."""
    for pid in [_command(job.pid) for job in jobs]:
        if pid not in {job.pid for job in jobs}:
            kill_group(pid)


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", encoding="ascii", errors="replace") as stream:
            return stream.read().strip()
    except OSError:
        return ""


def start_jobs(
    procs: Processes, guard_run: str, config: Path, count: int
) -> list[subprocess.Popen[bytes]]:
    """Start ``count`` guarded ``sleep 600`` jobs; return once every one has exec'd."""
    env = clean_env()
    jobs: list[subprocess.Popen[bytes]] = []
    deadline = time.monotonic() + START_TIMEOUT
    while len(jobs) < count:
        batch = [
            procs.start(
                [guard_run, "--config", str(config), "--scope", "shop", "--", "sleep", "600"],
                env=env,
            )
            for _ in range(min(START_BATCH, count - len(jobs)))
        ]
        for proc in batch:
            while _comm(_command(proc.pid)) != "sleep":
                if proc.poll() is not None:
                    raise BenchError(f"guard-run exited {proc.returncode} instead of running")
                if time.monotonic() > deadline:
                    raise BenchError("guarded jobs take too long to start")
                time.sleep(0.005)
        jobs += batch
    return jobs


def _proc_floor(pids: list[int]) -> None:
    """The kernel's part of listing ``pids``: the /proc reads list_jobs cannot avoid
    (/proc/locks once; per job two descriptor stats, its stat and its cmdline)."""
    with open("/proc/locks", "rb") as stream:
        stream.read()
    for pid in pids:
        for fd in (200, 201):
            with contextlib.suppress(OSError):
                os.stat(f"/proc/{pid}/fd/{fd}")
        for name in ("stat", "cmdline"):
            with contextlib.suppress(OSError):
                handle = os.open(f"/proc/{pid}/{name}", os.O_RDONLY)
                try:
                    os.read(handle, 65536)
                finally:
                    os.close(handle)


def _timed_cli(argv: list[str], repeats: int) -> tuple[list[float], str]:
    """Wall times of ``repeats`` runs after one untimed run (it may write .pyc files)."""
    times = []
    out = ""
    for attempt in range(repeats + 1):
        start = time.perf_counter()
        result = subprocess.run(
            argv, capture_output=True, timeout=120, check=False, env=clean_env()
        )
        if attempt:
            times.append(time.perf_counter() - start)
        if result.returncode != 0:
            raise BenchError(f"{' '.join(argv[-2:])} failed: {result.stderr.decode()[-200:]!r}")
        out = result.stdout.decode(errors="replace")
    return times, out


def _timed_op(path: str, obj: dict[str, object], repeats: int) -> tuple[list[float], dict]:
    times = []
    reply: dict = {}
    for _ in range(repeats):
        start = time.perf_counter()
        with ControlClient(path, timeout=60) as client:
            reply = client.request(obj)
        times.append(time.perf_counter() - start)
    return times, reply


def _drain(
    procs: Processes,
    daemon: Guardd,
    guardctl: str,
    jobs: list[subprocess.Popen[bytes]],
    root: Path,
) -> dict:
    """``guardctl on shop --wait`` while ``jobs`` run; then every job is killed at once.

    Measured from the moment the last SIGKILL is sent: until guardctl exits 0, and
    until guardd's watch stream reports shop ``on``.
    """
    out_path = root / "drain.out"
    watch = ControlClient(daemon.socket_path, timeout=DRAIN_TIMEOUT)
    try:
        watch.send({"op": "watch"})
        watch.read_line()
        before = cpu_reading(daemon.pid)
        with open(out_path, "wb") as out:
            waiter = procs.start(
                [guardctl, "--config", str(daemon.config_path), "on", "shop", "--wait"],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        started = time.perf_counter()
        needle = f"draining shop: {len(jobs)} job(s)"
        while needle not in out_path.read_text(errors="replace"):
            if time.perf_counter() - started > DRAIN_TIMEOUT or waiter.poll() is not None:
                raise BenchError(f"guardctl on --wait: {out_path.read_text()[-300:]!r}")
            time.sleep(0.01)
        listed_after = time.perf_counter() - started
        time.sleep(0.3)  # guardctl is in its polling loop now
        commands = [_command(job.pid) for job in jobs]
        for pid in commands:  # SIGKILL every job first; reaping them comes after the clocks
            kill_group(pid)
        kill_at = time.perf_counter()
        exited_at = event_at = None
        deadline = kill_at + DRAIN_TIMEOUT
        while exited_at is None or event_at is None:
            now = time.perf_counter()
            if now > deadline:
                raise BenchError("the drain was not noticed within 60 s")
            if exited_at is None and waiter.poll() is not None:
                exited_at = now
                if waiter.returncode != 0:
                    raise BenchError(f"guardctl on --wait exited {waiter.returncode}")
            if event_at is None:
                ready = b"\n" in watch.buffer or select.select([watch.sock], [], [], 0.001)[0]
                if ready:
                    event = watch.read_line()
                    if event.get("scope") == "shop" and event.get("state") == "on":
                        event_at = time.perf_counter()
            else:
                time.sleep(0.001)
        used = cpu_delta(before, cpu_reading(daemon.pid))
    finally:
        watch.sock.close()
        _kill_commands(jobs)
        procs.kill_all(jobs)
    off = subprocess.run(
        [guardctl, "--config", str(daemon.config_path), "off", "shop"],
        capture_output=True,
        timeout=60,
        check=False,
        env=clean_env(),
    )
    if off.returncode != 0:
        raise BenchError(f"guardctl off failed: {off.stderr.decode()!r}")
    return {
        "first_listing_s": round(listed_after, 3),
        "guardctl_exit_after_kill_ms": round((exited_at - kill_at) * 1000, 1),
        "guardd_on_event_after_kill_ms": round((event_at - kill_at) * 1000, 1),
        "guardd_cpu_ms_during_drain": round(used["cpu_s_schedstat"] * 1000, 1),
        "drain_wall_s": round(exited_at - started, 3),
    }


def run_jobs(
    procs: Processes, *, steps: tuple[int, ...], repeats: int, profiler: object | None = None
) -> dict:
    """Each step: that many jobs, then guardctl jobs, status and jobs ops, a drain."""
    from guardd.core.jobs import list_jobs  # the bench runs in the project's venv

    root = make_tmp("gdb-jobs-")
    daemon = Guardd(procs, root / "guardd", scopes=("shop",))
    guard_run = venv_command("guard-run")
    guardctl = venv_command("guardctl")
    rows = []
    profile = None
    try:
        daemon.start()
        run_locks = {s: str(daemon.runtime_dir / f"{s}.run") for s in ("default", "shop")}
        shop_inode = os.stat(run_locks["shop"]).st_ino
        list_jobs(run_locks)  # imports psutil once, outside the timings
        for step in steps:
            start = time.perf_counter()
            jobs = start_jobs(procs, guard_run, daemon.config_path, step)
            start_s = time.perf_counter() - start
            holders = _lock_holders(shop_inode)
            if holders != step:
                raise BenchError(f"{holders} holders of shop.run, expected {step}")
            time.sleep(0.3)  # guardd's recount after the last start
            cli_times, cli_out = _timed_cli(
                [guardctl, "--config", str(daemon.config_path), "jobs", "--json"], repeats
            )
            listed = cli_out.count('"pid"')
            if listed != step:
                raise BenchError(f"guardctl jobs listed {listed} jobs, expected {step}")
            inproc = []
            floor = []
            pids = [job.pid for job in jobs]
            for _ in range(repeats):
                t0 = time.perf_counter()
                list_jobs(run_locks)
                inproc.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                _proc_floor(pids)
                floor.append(time.perf_counter() - t0)
            with pinned(CLIENT_CPU):
                status_times, status = _timed_op(daemon.socket_path, {"op": "status"}, 50)
            scopes = status.get("scopes")
            reported = scopes["shop"]["jobs"] if isinstance(scopes, dict) else None
            jobs_op_times, _ = _timed_op(daemon.socket_path, {"op": "jobs"}, repeats)
            if profiler is not None and step == max(steps):
                profile = _profile_listing(profiler, guardctl, daemon, run_locks, step)
            drain = _drain(procs, daemon, guardctl, jobs, root) if jobs else None
            rows.append(
                {
                    "jobs": step,
                    "start_s": round(start_s, 2),
                    "guardd_reports_jobs": reported,
                    "guardctl_jobs": summary_ms(cli_times),
                    "list_jobs_in_process": summary_ms(inproc),
                    "proc_floor": summary_ms(floor),
                    "status_op": summary_ms(status_times),
                    "jobs_op": summary_ms(jobs_op_times),
                    "drain": drain,
                }
            )
    finally:
        daemon.stop()
        shutil.rmtree(root, ignore_errors=True)
    return {"repeats": repeats, "rows": rows, "growth": _growth(rows), "profile": profile}


def _profile_listing(
    profiler: object, guardctl: str, daemon: Guardd, run_locks: dict[str, str], step: int
) -> dict:
    from profiling import Profiler

    from guardd.core.jobs import list_jobs

    assert isinstance(profiler, Profiler)
    return {
        "list_jobs": profiler.call_profile(lambda: list_jobs(run_locks), f"list_jobs-{step}"),
        "guardctl_imports": profiler.import_times(
            [sys.executable, guardctl, "--config", str(daemon.config_path), "jobs"], runs=3
        ),
    }


def _growth(rows: list[dict]) -> list[dict]:
    """Per step: how much each figure grew, and the cost per added job."""
    out = []
    base = next((r for r in rows if r["jobs"] == 0), None)
    for previous, row in itertools.pairwise(rows):
        entry: dict[str, object] = {"from": previous["jobs"], "to": row["jobs"]}
        for key in ("guardctl_jobs", "list_jobs_in_process", "proc_floor", "status_op", "jobs_op"):
            entry[f"{key}_x"] = ratio(row[key]["p50_ms"], previous[key]["p50_ms"])
            if base is not None and row["jobs"]:
                entry[f"{key}_ms_per_job"] = round(
                    (row[key]["p50_ms"] - base[key]["p50_ms"]) / row["jobs"], 4
                )
        out.append(entry)
    return out


# --------------------------------------------------------------------------- connections


def _open_connections(port: int, count: int, held: list[socket.socket]) -> None:
    """Open ``count`` more idle connections (non-blocking connects, epoll for completion)."""
    selector = selectors.DefaultSelector()
    try:
        pending = set()
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(sock)  # closed by the caller, whatever happens
            sock.setblocking(False)
            code = sock.connect_ex(("127.0.0.1", port))
            if code not in (0, errno.EINPROGRESS):
                raise BenchError(f"connect failed: {os.strerror(code)}")
            selector.register(sock, selectors.EVENT_WRITE)
            pending.add(sock)
        deadline = time.monotonic() + 30
        while pending:
            if time.monotonic() > deadline:
                raise BenchError("connections take more than 30 s to establish")
            for key, _ in selector.select(timeout=1.0):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if error:
                    raise BenchError(f"connect failed: {os.strerror(error)}")
                selector.unregister(sock)
                pending.discard(sock)
    finally:
        selector.close()


def run_connections(procs: Processes, *, steps: tuple[int, ...], seconds: float) -> dict:
    """Each step: that many idle connections held; guardd's RSS and /healthz latency."""
    root = make_tmp("gdb-conn-")
    daemon = Guardd(procs, root / "guardd", http={"header_timeout": "10m"})
    held: list[socket.socket] = []
    rows = []
    try:
        daemon.start()
        base_fds = open_fds(daemon.pid)
        for step in steps:
            while len(held) < step:
                # In batches no larger than the listen backlog asyncio really uses
                # (100: see RESULTS.md), each accepted before the next: connections
                # beyond the accept queue would wait for SYN-ACK retransmits.
                _open_connections(daemon.port, min(ACCEPT_BATCH, step - len(held)), held)
                deadline = time.monotonic() + 30
                while open_fds(daemon.pid) < base_fds + len(held):
                    if time.monotonic() > deadline:
                        accepted = open_fds(daemon.pid) - base_fds
                        raise BenchError(f"guardd accepted {accepted} of {len(held)} connections")
                    time.sleep(0.005)
            time.sleep(0.5)
            before = cpu_reading(daemon.pid)
            time.sleep(1.0)
            idle = cpu_delta(before, cpu_reading(daemon.pid))
            memory = memory_kb(daemon.pid)
            single = wrk(daemon.port, "/healthz", connections=1, duration=seconds, close=False)
            loaded = wrk(daemon.port, "/healthz", connections=64, duration=seconds, close=False)
            rows.append(
                {
                    "connections": step,
                    "guardd_fds": open_fds(daemon.pid),
                    "rss_kb": memory["rss_kb"],
                    "uss_kb": memory["uss_kb"],
                    "idle_cpu_ms_per_s": round(idle["cpu_s_schedstat"] * 1000, 3),
                    "healthz_c1_p50_ms": round(single["p50_us"] / 1000, 3),
                    "healthz_c1_p99_ms": round(single["p99_us"] / 1000, 3),
                    "healthz_c64_rps": loaded["rps"],
                    "healthz_c64_p99_ms": round(loaded["p99_us"] / 1000, 3),
                }
            )
    finally:
        for sock in held:
            with contextlib.suppress(OSError):
                sock.close()
        daemon.stop()
        shutil.rmtree(root, ignore_errors=True)
    base = rows[0]
    for row in rows:
        added = row["connections"] - base["connections"]
        row["rss_kb_per_connection"] = (
            round((row["rss_kb"] - base["rss_kb"]) / added, 2) if added else None
        )
    return {
        "client_cpu": CLIENT_CPU,
        "rows": rows,
        "median_c1_p99_ms": median([r["healthz_c1_p99_ms"] for r in rows]),
    }
