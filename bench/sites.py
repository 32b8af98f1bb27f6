"""Many sites on one guardd: 1, 100, 1,000 and 10,000 scopes, each with its own host
name, side by side in one run.

Per step: start-up to READY=1 (a restart: the run locks exist, as on every start
but the first; the first start, which creates them, is reported too) in wall time
and in guardd's own CPU time (the machine may be shared: CPU time is what the
work costs), RSS, inotify watches in use, flip latency of one scope (to its watch
event and to its changed /healthz/<scope>), then wrk on /healthz/<scope> and on the
page chosen by Host, alternating between the steps round after round so that the
machine's noise hits every step alike. Every guardd runs on the server core, wrk
and the flip client on the client core.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from common import (
    CLIENT_CPU,
    BenchError,
    Guardd,
    Processes,
    cpu_reading,
    make_tmp,
    median,
    memory_kb,
    pinned,
    ratio,
)
from flip import _measure as measure_flips
from http_load import wrk

STEPS = (1, 100, 1_000, 10_000)
CONNECTIONS = 64
# In-process hot path: 64 pipelined requests fed to one connection, this many times
# per round; the best round of ROUNDS, in CPU time of the measuring thread.
FEEDS = 100
ROUNDS = 40


def _write_config(daemon: Guardd, scopes: int) -> None:
    """Scopes s0..s<n-1>, scope sN claiming sN.example.com; HTTP on the bench's port."""
    settings = {
        "lock_dir": str(daemon.lock_dir),
        "runtime_dir": str(daemon.runtime_dir),
        "node": "bench",
        "scopes": {f"s{i}": {"hosts": [f"s{i}.example.com"]} for i in range(scopes)},
        "http": daemon.http,
    }
    daemon.config_path.write_text(json.dumps(settings) + "\n")


def inotify_watches(pid: int) -> int:
    """Watches held by every inotify instance of ``pid`` (from /proc/<pid>/fdinfo)."""
    total = 0
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            text = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        total += text.count("inotify wd:")
    return total


def hot_path(config_paths: dict[int, Path]) -> dict[str, dict[str, float]]:
    """CPU per request of guardd's request path, in this process, per step: parse
    (remembered per distinct head), choose the scope, frame the answer; no sockets.
    The steps alternate round after round; the best round counts (noise only adds)."""
    import asyncio
    from typing import cast

    from guardd.answers.http.connection import HttpConnection
    from guardd.answers.http.replies import Answers
    from guardd.config.load import load_config
    from guardd.core.state import ScopeStatus, Snapshot
    from guardd.daemon.listeners import HttpListener

    class Sink:
        def write(self, data: bytes) -> None:
            pass

        def get_extra_info(self, name: str) -> object:
            return ("127.0.0.1", 40000)

    async def measure() -> dict[str, dict[str, float]]:
        loop = asyncio.get_running_loop()
        cases = []
        listeners: dict[int, HttpListener] = {}
        for count, path in config_paths.items():
            listener = listeners[count] = HttpListener(load_config(str(path)))
            listener.update(Snapshot(statuses={}))
            connection = HttpConnection(listener.shared, loop)
            connection.transport = cast(asyncio.Transport, Sink())
            middle = f"s{count // 2}"
            for name, target, host in (
                ("health", f"/healthz/{middle}", "bench"),
                ("page", "/", f"{middle}.example.com"),
            ):
                head = f"GET {target} HTTP/1.1\r\nHost: {host}\r\nAccept: */*\r\n\r\n"
                cases.append((str(count), name, connection, head.encode() * 64))
        best = {(count, name): float("inf") for count, name, _, _ in cases}
        for _ in range(ROUNDS):
            for count, name, connection, batch in cases:
                started = time.thread_time()
                for _ in range(FEEDS):
                    connection._feed(batch)
                per_request = (time.thread_time() - started) / (FEEDS * 64)
                best[(count, name)] = min(best[(count, name)], per_request)
        out: dict[str, dict[str, float]] = {}
        for (count, name), seconds in best.items():
            out.setdefault(count, {})[f"{name}_us"] = round(seconds * 1e6, 3)
        for count, listener in listeners.items():
            out[str(count)]["answers_rebuilt_per_flip"] = rebuilds(listener, count)
        return out

    def rebuilds(listener: HttpListener, count: int) -> float:
        """Answers made again when one scope flips, every scope's answers in use."""
        shared = listener.shared
        names = [f"s{i}" for i in range(count)]
        for name in names:
            shared.answers_for(name)
        flipped = f"s{count // 2}"
        before = Answers.builds
        status = ScopeStatus(flipped, "on", None, None, "bench", 0)
        statuses = {**listener.snapshot.statuses, flipped: status}
        listener.update(Snapshot(statuses=statuses, changed=frozenset({flipped})))
        for name in names:
            shared.answers_for(name)
        return float(Answers.builds - before)

    return asyncio.run(measure())


def _start_timed(daemon: Guardd) -> dict:
    (daemon.root / "notify.sock").unlink(missing_ok=True)  # left by the previous start
    started = time.perf_counter()
    daemon.start()
    wall = time.perf_counter() - started
    cpu = cpu_reading(daemon.pid)["cpu_s_schedstat"]
    return {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3)}


def run(procs: Processes, *, flips: int, duration: float, rounds: int) -> dict:
    """The curve over STEPS; ratios of every step to the 1-scope step."""
    roots: list[Path] = []
    daemons: dict[int, Guardd] = {}
    steps: dict[str, dict] = {}
    try:
        for count in STEPS:
            root = make_tmp(f"gdb-sites-{count}-")
            roots.append(root)
            daemon = Guardd(procs, root / "guardd", http={"header_timeout": "60s"})
            _write_config(daemon, count)
            first = _start_timed(daemon)  # creates the run locks
            daemon.stop()
            restart = _start_timed(daemon)
            middle = f"s{count // 2}"
            with pinned(CLIENT_CPU):
                flip = measure_flips(daemon, flips, scope=middle, health_path=f"/healthz/{middle}")
            steps[str(count)] = {
                "scopes": count,
                "first_start": first,
                "start": restart,
                "memory": memory_kb(daemon.pid),
                "inotify_watches": inotify_watches(daemon.pid),
                "flip": flip,
            }
            # The measured site in maintenance: its page is the maintenance page.
            daemon.flag(middle).write_text(json.dumps({"reason": "bench"}) + "\n")
            daemons[count] = daemon
        time.sleep(0.5)
        loads: dict[str, dict[str, list[dict]]] = {
            str(count): {"health": [], "page": []} for count in STEPS
        }
        for _ in range(rounds):
            for count, daemon in daemons.items():
                middle = f"s{count // 2}"
                loads[str(count)]["health"].append(
                    wrk(
                        daemon.port,
                        f"/healthz/{middle}",
                        connections=CONNECTIONS,
                        duration=duration,
                        close=False,
                    )
                )
                loads[str(count)]["page"].append(
                    wrk(
                        daemon.port,
                        "/",
                        connections=CONNECTIONS,
                        duration=duration,
                        close=False,
                        host=f"{middle}.example.com",
                    )
                )
        for count, daemon in daemons.items():
            step = steps[str(count)]
            step["memory_after_load"] = memory_kb(daemon.pid)
            for name, runs in loads[str(count)].items():
                if any(r["errors"] for r in runs):
                    raise BenchError(f"wrk errors at {count} scopes on {name}: {runs}")
                step[name] = {
                    "rps": round(median([r["rps"] for r in runs]), 1),
                    "p99_ms": round(median([r["p99_us"] for r in runs]) / 1000, 3),
                    "rps_runs": [r["rps"] for r in runs],
                }
        with pinned(CLIENT_CPU):
            cpu = hot_path({count: daemon.config_path for count, daemon in daemons.items()})
        base = steps[str(STEPS[0])]
        for count, step in steps.items():
            step["hot_path"] = cpu[count]
            step["vs_1_scope"] = {
                name: {
                    "rps": ratio(step[name]["rps"], base[name]["rps"]),
                    "p99": ratio(step[name]["p99_ms"], base[name]["p99_ms"]),
                    "cpu_per_request": ratio(
                        cpu[count][f"{name}_us"], cpu[str(STEPS[0])][f"{name}_us"]
                    ),
                }
                for name in ("health", "page")
            }
        return {
            "connections": CONNECTIONS,
            "duration_s": duration,
            "rounds": rounds,
            "flips": flips,
            "steps": steps,
        }
    finally:
        for daemon in daemons.values():
            daemon.stop()
        for root in roots:
            shutil.rmtree(root, ignore_errors=True)
