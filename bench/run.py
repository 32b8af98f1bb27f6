"""guardd's benchmark: one command, one table, bench/results.json and bench/RESULTS.md.

    .venv/bin/python bench/run.py            # full run, about 7 minutes
    .venv/bin/python bench/run.py --quick    # shorter runs, under 2 minutes
    .venv/bin/python bench/run.py --only http,flip --profile

Not part of the test suite: it measures, it does not assert. The goals of issue 5
are checked and reported (table and JSON), never turned into an exit status.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import flip
import gate
import guard_run
import http_load
import idle
import scale
from common import PROJECT, BenchError, Processes, raise_nofile, tool
from report import check_goals, render_markdown, render_text

BENCH = Path(__file__).resolve().parent
SECTIONS = ("http", "guard_run", "flip", "idle", "jobs", "connections", "gate")


class Settings:
    """How long and how often each section measures."""

    def __init__(self, *, quick: bool) -> None:
        self.quick = quick
        self.http_seconds = 2.0 if quick else 5.0
        self.http_rounds = 1 if quick else 3
        self.run_count = 40 if quick else 200
        self.run_warmup = 5 if quick else 10
        self.flips = 200 if quick else 400
        self.idle_seconds = 10.0 if quick else 60.0
        self.job_steps = (0, 10, 100, 1000)
        self.job_repeats = 3 if quick else 5
        self.connection_steps = (0, 100, 1000, 10000)
        self.connection_seconds = 1.0 if quick else 2.0


def machine() -> dict:
    """What the figures were measured on."""
    model = "?"
    with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as stream:
        for line in stream:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo", encoding="ascii") as stream:
        mem_kb = int(stream.readline().split()[1])

    def version(argv: list[str]) -> str:
        try:
            result = subprocess.run(argv, capture_output=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return "?"
        text = (result.stdout or result.stderr).decode(errors="replace").strip()
        return text.splitlines()[0] if text else "?"

    return {
        "cores": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "nginx": version([tool("nginx"), "-v"]),
        "wrk": version([tool("wrk"), "-v"]).split(" Copyright")[0],
        "hyperfine": version([tool("hyperfine"), "--version"]),
        "git_commit": version(["git", "-C", str(PROJECT), "rev-parse", "--short", "HEAD"]),
    }


def _loadavg() -> str:
    with open("/proc/loadavg", encoding="ascii") as stream:
        return " ".join(stream.read().split()[:3])


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs (under 2 minutes)")
    parser.add_argument(
        "--only",
        metavar="SECTIONS",
        help=f"comma-separated subset of {','.join(SECTIONS)}",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also profile the gaps (needs py-spy in the venv; not a project dependency)",
    )
    parser.add_argument(
        "--editable-only",
        action="store_true",
        help="time guard-run in .venv only (skip building the non-editable bench/out/venv)",
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        default=str(BENCH),
        help="where results.json and RESULTS.md go (default: bench/)",
    )
    args = parser.parse_args(argv)
    sections = SECTIONS if not args.only else tuple(args.only.split(","))
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section {unknown[0]!r} (choose from {', '.join(SECTIONS)})")
    args.sections = sections
    return args


def _on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through every finally: processes get stopped


def run(args: argparse.Namespace) -> dict:
    for name in ("wrk", "nginx", "hyperfine", "flock", "taskset", "true", "sleep"):
        tool(name)  # fail with one line before anything starts
    if os.cpu_count() is None or (os.cpu_count() or 0) < 2:
        raise BenchError("the bench pins servers and clients to two different cores: needs 2")
    settings = Settings(quick=args.quick)
    nofile = raise_nofile()
    profiler = None
    if args.profile:
        from profiling import Profiler

        profiler = Profiler(BENCH / "out" / "profiles")
    results: dict = {
        "meta": {
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "mode": "quick" if args.quick else "full",
            "command": shlex.join([".venv/bin/python", "bench/run.py", *sys.argv[1:]]),
            "machine": machine(),
            "rlimit_nofile": nofile,
            "pinning": "servers (guardd, nginx) on CPU 0; wrk, hyperfine and clients on CPU 1",
            "loadavg_start": _loadavg(),
        }
    }
    procs = Processes()
    started = time.monotonic()
    try:
        for section in args.sections:
            print(f"bench: {section} ...", flush=True)
            section_start = time.monotonic()
            try:
                results[section] = _run_section(section, procs, settings, args, profiler)
            except BenchError as err:
                # One broken section must not waste the others' minutes.
                print(f"bench: {section} failed: {err}", file=sys.stderr, flush=True)
                results.setdefault("errors", {})[section] = str(err)
            finally:
                procs.close()  # nothing of one section outlives it
            results["meta"].setdefault("section_seconds", {})[section] = round(
                time.monotonic() - section_start, 1
            )
    finally:
        procs.close()
    results["meta"]["total_seconds"] = round(time.monotonic() - started, 1)
    results["meta"]["loadavg_end"] = _loadavg()
    results["goals"] = check_goals(results)
    return results


def _run_section(
    section: str,
    procs: Processes,
    settings: Settings,
    args: argparse.Namespace,
    profiler: object | None,
) -> dict:
    if section == "http":
        return http_load.run(
            procs, duration=settings.http_seconds, rounds=settings.http_rounds, profiler=profiler
        )
    if section == "guard_run":
        result = guard_run.run(
            runs=settings.run_count,
            warmup=settings.run_warmup,
            use_installed=not args.editable_only,
        )
        if profiler is not None:
            result["profile"] = _start_up_profiles(profiler, args.editable_only)
        return result
    if section == "gate":
        return gate.run(procs, duration=settings.http_seconds, rounds=settings.http_rounds)
    if section == "flip":
        return flip.run(procs, flips=settings.flips)
    if section == "idle":
        return idle.run(procs, seconds=settings.idle_seconds)
    if section == "jobs":
        return scale.run_jobs(
            procs, steps=settings.job_steps, repeats=settings.job_repeats, profiler=profiler
        )
    return scale.run_connections(
        procs, steps=settings.connection_steps, seconds=settings.connection_seconds
    )


def _start_up_profiles(profiler: object, editable_only: bool) -> dict:
    """-X importtime of guard-run (both venvs) and guardctl."""
    from profiling import Profiler

    assert isinstance(profiler, Profiler)
    venvs = {"editable": PROJECT / ".venv"}
    if not editable_only:
        venvs["installed"] = guard_run.INSTALLED_VENV
    out = {}
    isolation = tuple(guard_run.isolation())  # built-in dirs: see guard_run.py
    for name, venv in venvs.items():
        python = str(venv / "bin" / "python")
        out[f"{name}: guard-run -- true (no config)"] = profiler.import_times(
            [python, str(venv / "bin" / "guard-run"), "--", tool("true")], prefix=isolation
        )
        out[f"{name}: python -c pass"] = profiler.import_times([python, "-c", "pass"])
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    try:
        results = run(args)
    except BenchError as err:
        print(f"bench: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted; every process it started is stopped", file=sys.stderr)
        return 130
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(render_text(results))
    md_path = out / "RESULTS.md"
    previous = md_path.read_text() if md_path.exists() else ""
    md_path.write_text(render_markdown(results, previous))
    print(f"bench: wrote {out / 'results.json'} and {md_path}")
    if results.get("errors"):
        print(f"bench: sections that failed: {', '.join(results['errors'])}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
