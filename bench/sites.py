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
        base = steps[str(STEPS[0])]
        for step in steps.values():
            step["vs_1_scope"] = {
                name: {
                    "rps": ratio(step[name]["rps"], base[name]["rps"]),
                    "p99": ratio(step[name]["p99_ms"], base[name]["p99_ms"]),
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
