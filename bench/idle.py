"""Idle cost: guardd's CPU time and wake-ups with no traffic and no watchdog, and its RSS.

CPU time is read two ways: utime+stime from /proc/<pid>/stat (10 ms ticks, too
coarse for the goal alone) and the scheduler's nanosecond run time summed over
every thread (/proc/<pid>/task/*/schedstat). Context switches count wake-ups.
"""

from __future__ import annotations

import shutil
import time

from common import Guardd, Processes, cpu_delta, cpu_reading, make_tmp, memory_kb

SETTLE = 2.0


def run(procs: Processes, *, seconds: float) -> dict:
    root = make_tmp("gdb-idle-")
    # A typical host: two scopes, the HTTP responder and the agent port, no watchdog.
    daemon = Guardd(
        procs,
        root / "guardd",
        scopes=("shop",),
    )
    try:
        daemon.start()
        time.sleep(SETTLE)  # startup's worker threads finish their reads
        before = cpu_reading(daemon.pid)
        started = time.monotonic()
        time.sleep(seconds)
        elapsed = time.monotonic() - started
        after = cpu_reading(daemon.pid)
        used = cpu_delta(before, after)
        memory = memory_kb(daemon.pid)
    finally:
        daemon.stop()
        shutil.rmtree(root, ignore_errors=True)
    per_minute = 60.0 / elapsed
    return {
        "seconds": round(elapsed, 2),
        "cpu_ms_ticks": round(used["cpu_s_ticks"] * 1000, 3),
        "cpu_ms_schedstat": round(used["cpu_s_schedstat"] * 1000, 3),
        "cpu_ms_per_min": round(used["cpu_s_schedstat"] * 1000 * per_minute, 3),
        "wakeups": int(used["switches"]),
        "wakeups_per_min": round(used["switches"] * per_minute, 1),
        **memory,
    }
