"""guard-run's overhead: its wall time next to the interpreter's floor, flock and true.

Measured with hyperfine (no shell, pinned to one core) in two venvs: the project's
editable one (.venv: its .pth import hook makes every start slower) and a normal,
non-editable install (bench/out/venv, rebuilt when the sources change), which is what
a host runs. "No config" uses the built-in directories; as root those are
/run/guardd and /var/lib/guardd, so the runs happen in a private mount namespace
with empty tmpfs on them: nothing on the host is read or written.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from common import (
    CLIENT_CPU,
    PROJECT,
    VENV_BIN,
    BenchError,
    clean_env,
    make_tmp,
    median,
    percentile,
    ratio,
    run_checked,
    tool,
)

INSTALLED_VENV = PROJECT / "bench" / "out" / "venv"


def _source_stamp() -> str:
    digest = hashlib.sha256(sys.version.encode())
    for path in [PROJECT / "pyproject.toml", *sorted((PROJECT / "guardd").rglob("*.py"))]:
        digest.update(str(path.relative_to(PROJECT)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def installed_venv() -> Path:
    """A venv with the project installed normally (not editable), built when stale."""
    stamp_file = INSTALLED_VENV / ".bench-stamp"
    stamp = _source_stamp()
    if stamp_file.exists() and stamp_file.read_text() == stamp:
        return INSTALLED_VENV
    shutil.rmtree(INSTALLED_VENV, ignore_errors=True)
    base = getattr(sys, "_base_executable", sys.executable)
    print(f"bench: installing the project into {INSTALLED_VENV} (non-editable)", flush=True)
    run_checked([base, "-m", "venv", str(INSTALLED_VENV)], timeout=120)
    run_checked(
        [
            str(INSTALLED_VENV / "bin" / "pip"),
            "install",
            "-q",
            "--disable-pip-version-check",
            str(PROJECT),
        ],
        timeout=600,
    )
    stamp_file.write_text(stamp)
    return INSTALLED_VENV


def _compile(python: str) -> None:
    """Write guardd's .pyc files (this sandbox sets PYTHONDONTWRITEBYTECODE; hosts do not)."""
    code = (
        "import compileall, os, guardd; "
        "compileall.compile_dir(os.path.dirname(guardd.__file__), quiet=1)"
    )
    run_checked([python, "-c", code], timeout=120, env=clean_env())


def isolation() -> list[str]:
    """The prefix that runs a command with empty built-in directories (root only)."""
    if os.geteuid() != 0:
        return []
    unshare = tool("unshare")
    script = (
        "mount -t tmpfs -o size=8m,mode=755 bench /run"
        " && { [ ! -d /var/lib/guardd ] || mount -t tmpfs -o size=8m,mode=755 bench"
        ' /var/lib/guardd; } && exec "$@"'
    )
    prefix = [unshare, "-m", "--propagation", "private", "sh", "-c", script, "sh"]
    probe = subprocess.run([*prefix, tool("true")], capture_output=True, timeout=30, check=False)
    if probe.returncode != 0:
        raise BenchError(
            "cannot make a private mount namespace for guard-run's built-in dirs: "
            + probe.stderr.decode(errors="replace").strip()
        )
    return prefix


def _summary(times: list[float]) -> dict[str, float]:
    return {
        "n": len(times),
        "median_ms": round(median(times) * 1000, 3),
        "p90_ms": round(percentile(times, 90) * 1000, 3),
        "mean_ms": round(sum(times) / len(times) * 1000, 3),
        "min_ms": round(min(times) * 1000, 3),
    }


def run(*, runs: int, warmup: int, use_installed: bool) -> dict:
    """Every command's median and p90, and the ratios the goals are about."""
    root = make_tmp("gdb-run-")
    try:
        return _run(root, runs=runs, warmup=warmup, use_installed=use_installed)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _run(root: Path, *, runs: int, warmup: int, use_installed: bool) -> dict:
    config = root / "config.yaml"
    config.write_text(
        json.dumps(
            {
                "lock_dir": str(root / "lock"),
                "runtime_dir": str(root / "run"),
                "scopes": {"shop": {}},
                "http": {"listen": []},
            }
        )
        + "\n"
    )
    for name in ("lock", "home", "cache", "xdg-run", "xdg-state"):
        (root / name).mkdir(mode=0o700)
    env = clean_env(
        HOME=str(root / "home"),
        XDG_CACHE_HOME=str(root / "cache"),
        XDG_RUNTIME_DIR=str(root / "xdg-run"),
        XDG_STATE_HOME=str(root / "xdg-state"),
    )
    venvs = {"editable": VENV_BIN.parent}
    if use_installed:
        venvs["installed"] = installed_venv()
    flock_file = root / "flock.lock"
    flock_file.touch()
    commands: list[tuple[str, str]] = [
        ("true", tool("true")),
        ("flock -n FILE true", f"{tool('flock')} -n {flock_file} {tool('true')}"),
    ]
    true = tool("true")
    for venv_name, venv in venvs.items():
        python = str(venv / "bin" / "python")
        guard_run = str(venv / "bin" / "guard-run")
        if not Path(guard_run).exists():
            raise BenchError(f"{guard_run} not found")
        _compile(python)
        # The floor of any Python program that runs a command as its child and waits
        # (guard-run's shape): it tells guard-run's own cost from that of starting `true`.
        runs_true = f"import os;pid=os.fork();pid or os.execv('{true}',['true']);os.waitpid(pid,0)"
        commands += [
            (f"{venv_name}: python -c pass", f"{python} -c pass"),
            (f"{venv_name}: python running true as its child", f'{python} -c "{runs_true}"'),
            (f"{venv_name}: guard-run -- true (no config)", f"{guard_run} -- {true}"),
            (f"{venv_name}: guard-run --check (no config)", f"{guard_run} --check"),
            (
                f"{venv_name}: guard-run -- true (config, warm cache)",
                f"{guard_run} --config {config} -- {true}",
            ),
            (
                f"{venv_name}: guard-run --check (config, warm cache)",
                f"{guard_run} --config {config} --check",
            ),
        ]
        # Warm the config cache (hyperfine's warm-up would too; this checks it works).
        run_checked([guard_run, "--config", str(config), "--check"], timeout=60, env=env)
    cached = list((root / "cache" / "guardd").glob("run-view-*"))
    if not cached:
        raise BenchError("guard-run wrote no config cache: the warm-cache rows would lie")

    export = root / "hyperfine.json"
    argv = [
        *isolation(),
        tool("taskset"),
        "-c",
        CLIENT_CPU,
        tool("hyperfine"),
        "-N",
        "--style",
        "none",
        "--warmup",
        str(warmup),
        "--runs",
        str(runs),
        "--export-json",
        str(export),
    ]
    for name, command in commands:
        argv += ["-n", name, command]
    run_checked(argv, timeout=120 + runs * len(commands) * 0.5, env=env)
    results = json.loads(export.read_text())["results"]
    rows = {r["command"]: _summary(r["times"]) for r in results}

    ratios = {}
    for venv_name in venvs:
        floor = rows[f"{venv_name}: python -c pass"]
        for what in ("guard-run -- true", "guard-run --check"):
            for config_case in ("no config", "config, warm cache"):
                row = rows[f"{venv_name}: {what} ({config_case})"]
                ratios[f"{venv_name}: {what} ({config_case}) / python -c pass"] = {
                    "median": ratio(row["median_ms"], floor["median_ms"]),
                    "p90": ratio(row["p90_ms"], floor["p90_ms"]),
                }
        child_floor = rows[f"{venv_name}: python running true as its child"]
        for config_case in ("no config", "config, warm cache"):
            row = rows[f"{venv_name}: guard-run -- true ({config_case})"]
            ratios[f"{venv_name}: guard-run -- true ({config_case}) / python running true"] = {
                "median": ratio(row["median_ms"], child_floor["median_ms"]),
                "p90": ratio(row["p90_ms"], child_floor["p90_ms"]),
            }
    return {
        "runs": runs,
        "warmup": warmup,
        "isolated_builtin_dirs": os.geteuid() == 0,
        "venvs": {name: str(path) for name, path in venvs.items()},
        "commands": dict(commands),
        "rows": rows,
        "ratios_to_python": ratios,
    }
