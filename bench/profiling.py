"""``--profile``: where the time goes, as evidence for RESULTS.md.

- guardd under wrk load: py-spy samples (idle included, so time spent waiting in
  epoll shows), folded into self and inclusive time per function;
- guard-run and guardctl start-up: ``python -X importtime``, median over runs;
- job listing: cProfile of ``guardd.jobs.list_jobs`` with every job running.

py-spy is not a project dependency: ``.venv/bin/pip install py-spy``.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import shutil
import subprocess
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from common import CLIENT_CPU, VENV_BIN, BenchError, Guardd, clean_env, median, tool
from http_load import wrk

TOP = 15
# The frame of a ThreadPoolExecutor worker: its threads wait, idle, under load.
IDLE_WORKER = "_worker (thread.py)"
SKELETON_PCT = 95.0


def _py_spy() -> str:
    found = VENV_BIN / "py-spy"
    if found.exists():
        return str(found)
    which = shutil.which("py-spy")
    if which is None:
        raise BenchError("--profile needs py-spy: .venv/bin/pip install py-spy")
    return which


def _short(frame: str) -> str:
    """``fn (path/to/file.py:12)`` -> ``fn (file.py)``: lines split one function apart."""
    name, _, where = frame.partition(" (")
    file = where.rsplit(":", 1)[0].rsplit("/", 1)[-1]
    return f"{name} ({file})" if file else name


def fold(raw: str) -> dict:
    """Self and inclusive sample shares per function of the event loop's thread, from
    py-spy's raw (folded) output."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(f) for f in stack.split(";") if not f.startswith("process ")]
        if not frames or IDLE_WORKER in frames:
            continue  # asyncio.to_thread's idle pool threads: not the event loop
        total += count
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count

    def share(counter: Counter[str]) -> list[list[object]]:
        # Frames in (nearly) every sample are the loop's skeleton: they tell nothing.
        rows = [[name, round(100 * n / total, 1)] for name, n in counter.most_common()]
        return [row for row in rows if float(row[1]) < SKELETON_PCT][:TOP]

    return {"samples": total, "self_pct": share(own), "inclusive_pct": share(inclusive)}


class Profiler:
    """Collects the profiles of one bench run."""

    def __init__(self, out_dir: Path) -> None:
        self.py_spy = _py_spy()
        self.out_dir = out_dir
        out_dir.mkdir(parents=True, exist_ok=True)

    def record_guardd_under_load(self, daemon: Guardd) -> dict:
        """py-spy on guardd while wrk (-c64, keep-alive) asks for /healthz."""
        raw_path = self.out_dir / "guardd-healthz.folded"
        seconds = 5
        load = threading.Thread(
            target=wrk,
            args=(daemon.port, "/healthz"),
            kwargs={"connections": 64, "duration": seconds + 1, "close": False},
        )
        load.start()
        try:
            subprocess.run(
                [
                    tool("taskset"),
                    "-c",
                    CLIENT_CPU,
                    self.py_spy,
                    "record",
                    "--pid",
                    str(daemon.pid),
                    "--duration",
                    str(seconds),
                    "--rate",
                    "250",
                    "--idle",
                    "--nonblocking",
                    "--format",
                    "raw",
                    "--output",
                    str(raw_path),
                ],
                capture_output=True,
                timeout=seconds + 60,
                check=True,
            )
        except subprocess.CalledProcessError as err:
            raise BenchError(f"py-spy failed: {err.stderr.decode()[-300:]!r}") from None
        finally:
            load.join(timeout=seconds + 60)
        return {"what": "guardd, /healthz, wrk -t1 -c64", **fold(raw_path.read_text())}

    def import_times(self, argv: list[str], *, runs: int = 7, prefix: tuple[str, ...] = ()) -> dict:
        """Median self and cumulative import time (us) per module of one command
        (run behind ``prefix``, e.g. guard_run's private mount namespace)."""
        own: dict[str, list[int]] = {}
        cumulative: dict[str, list[int]] = {}
        python, *rest = argv
        for _ in range(runs):
            result = subprocess.run(
                [*prefix, python, "-X", "importtime", *rest],
                capture_output=True,
                timeout=60,
                check=False,
                env=clean_env(),
            )
            for line in result.stderr.decode(errors="replace").splitlines():
                if not line.startswith("import time:") or "[us]" in line:
                    continue
                self_us, cumulative_us, name = line.removeprefix("import time:").split("|", 2)
                name = name.rstrip()[1:]  # two more spaces of indent per nesting level
                own.setdefault(name, []).append(int(self_us))
                cumulative.setdefault(name, []).append(int(cumulative_us))
        top_level = {
            name: median(values) for name, values in cumulative.items() if not name.startswith(" ")
        }
        total = sum(top_level.values())
        # Up to two levels deep ("> " per level): what a top-level import pulls in.
        shallow = {
            name: median(values)
            for name, values in cumulative.items()
            if not name.startswith("    ")
        }
        return {
            "command": " ".join(argv),
            "imports_total_us": round(total),
            "top_level_cumulative_us": sorted(
                (
                    ["> " * ((len(n) - len(n.lstrip())) // 2) + n.strip(), round(v)]
                    for n, v in shallow.items()
                ),
                key=lambda x: -x[1],
            )[:TOP],
            "self_us": sorted(
                ([n.strip(), round(median(v))] for n, v in own.items()), key=lambda x: -x[1]
            )[:TOP],
        }

    def call_profile(self, call: Callable[[], object], label: str) -> dict:
        """cProfile of one call: the functions with the most cumulative time."""
        profile = cProfile.Profile()
        profile.enable()
        call()
        profile.disable()
        text = io.StringIO()
        stats = pstats.Stats(profile, stream=text)
        stats.sort_stats("cumulative").print_stats(TOP)
        (self.out_dir / f"{label}.pstats.txt").write_text(text.getvalue())
        rows = []
        for (file, line, name), (_cc, calls, tottime, cumtime, _) in sorted(
            stats.stats.items(),  # type: ignore[attr-defined]
            key=lambda item: -item[1][3],
        )[:TOP]:
            where = f"{Path(file).name}:{line}" if line else file
            rows.append(
                [f"{name} ({where})", calls, round(tottime * 1000, 1), round(cumtime * 1000, 1)]
            )
        return {
            "what": label,
            "columns": ["function", "calls", "own_ms", "cumulative_ms"],
            "rows": rows,
        }
