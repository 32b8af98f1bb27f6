"""Shared parts of the bench: the processes it owns, tools, guardd, /proc readings, stats.

Every process the bench starts is registered with ``Processes`` in its own process
group and killed when the bench ends, however it ends.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
# The bench's load generators and clients run here; servers on SERVER_CPU.
SERVER_CPU = "0"
CLIENT_CPU = "1"
READY_TIMEOUT = 20.0
# Debian package that provides each tool, for the one-line "missing" message.
TOOL_PACKAGES = {
    "wrk": "wrk",
    "nginx": "nginx-light",
    "hyperfine": "hyperfine",
    "flock": "util-linux",
    "taskset": "util-linux",
    "unshare": "util-linux",
    "true": "coreutils",
    "sleep": "coreutils",
}


class BenchError(Exception):
    """Something the bench needs is missing or broken: one line, exit 2."""


def tool(name: str) -> str:
    """Absolute path of a system tool; BenchError naming the package when missing."""
    found = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/sbin/{name}") if os.path.exists(p)), None
    )
    if found is None:
        package = TOOL_PACKAGES.get(name, name)
        raise BenchError(f"{name} not found (apt-get install {package})")
    return found


def venv_command(name: str) -> str:
    """A console script of the venv the bench runs in (guardd, guardctl, guard-run)."""
    path = VENV_BIN / name
    if not path.exists():
        raise BenchError(
            f"{path} not found: run the bench with the project's venv "
            "(.venv/bin/python bench/run.py) after `pip install -e .`"
        )
    return str(path)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for measured programs: no systemd or guardd variables, and
    bytecode caching on (as on a real host; this sandbox sets PYTHONDONTWRITEBYTECODE)."""
    env = dict(os.environ)
    for name in (
        "PYTHONDONTWRITEBYTECODE",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        "JOURNAL_STREAM",
        "NOTIFY_SOCKET",
        "GUARDD_CONFIG",
        "GUARD_SCOPE",
        "GUARDD_POLL_ONLY",
        "GUARDD_DEBUG",
    ):
        env.pop(name, None)
    env.update(extra)
    return env


def raise_nofile(wanted: int = 65536) -> int:
    """Raise RLIMIT_NOFILE as far as allowed (children inherit it); returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))  # root only
            return wanted
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return max(soft, target)


# --------------------------------------------------------------------------- processes


class Processes:
    """Every process the bench started, each leading its own process group."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(
        self,
        argv: list[str],
        *,
        cpu: str | None = None,
        env: dict[str, str] | None = None,
        stdout: int | object = subprocess.DEVNULL,
        stderr: int | object = subprocess.DEVNULL,
        stdin: int | object = subprocess.DEVNULL,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` in a new session, pinned to ``cpu`` when given (taskset execs)."""
        if cpu is not None:
            argv = [tool("taskset"), "-c", cpu, *argv]
        proc = subprocess.Popen(
            argv,
            env=env if env is not None else clean_env(),
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], *, grace: float = 5.0) -> int | None:
        """SIGTERM its group, SIGKILL after ``grace``; returns its exit status."""
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        _signal_group(proc.pid, signal.SIGKILL)  # leftovers of its group
        with contextlib.suppress(ValueError):
            self.procs.remove(proc)
        return proc.returncode

    def kill_all(self, procs: list[subprocess.Popen[bytes]]) -> None:
        """SIGKILL many at once (jobs), then reap them."""
        for proc in procs:
            _signal_group(proc.pid, signal.SIGKILL)
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        wanted = {id(p) for p in procs}
        self.procs = [p for p in self.procs if id(p) not in wanted]

    def close(self) -> None:
        """Stop everything still running: TERM first (servers clean up), then KILL."""
        alive = [p for p in self.procs if p.poll() is None]
        for proc in alive:
            _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 3.0
        for proc in alive:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(deadline - time.monotonic(), 0.01))
        for proc in self.procs:
            _signal_group(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        self.procs.clear()


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def kill_group(pgid: int) -> None:
    """SIGKILL one process group the bench started (no reaping)."""
    _signal_group(pgid, signal.SIGKILL)


def run_checked(argv: list[str], *, timeout: float, env: dict[str, str] | None = None) -> str:
    """Run a short command to completion; its stdout, or BenchError with its stderr."""
    try:
        result = subprocess.run(
            argv,
            env=env if env is not None else clean_env(),
            capture_output=True,
            timeout=timeout,
            check=False,
            start_new_session=True,
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"{' '.join(argv[:3])} ... took more than {timeout:g}s") from None
    if result.returncode != 0:
        tail = result.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["?"]
        raise BenchError(f"{' '.join(argv[:3])} ... failed ({result.returncode}): {tail[0]}")
    return result.stdout.decode(errors="replace")


def make_tmp(prefix: str) -> Path:
    """A short, world-searchable temp dir (AF_UNIX paths; nginx workers run unprivileged)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --------------------------------------------------------------------------- guardd


class Guardd:
    """A guardd of the bench's own: temp dirs, a config, a NOTIFY_SOCKET for READY=1."""

    def __init__(
        self,
        procs: Processes,
        root: Path,
        *,
        http: dict[str, object] | None = None,
        scopes: tuple[str, ...] = (),
        executable: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.procs = procs
        self.root = root
        self.lock_dir = root / "lock"
        self.runtime_dir = root / "run"
        self.config_path = root / "config.yaml"
        self.socket_path = str(self.runtime_dir / "guardd.sock")
        self.port = free_port()
        self.http: dict[str, object] = {"listen": [f"127.0.0.1:{self.port}"], **(http or {})}
        self.scopes = scopes
        self.executable = executable or venv_command("guardd")
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = root / "guardd.log"
        root.mkdir(mode=0o755, parents=True, exist_ok=True)
        self.lock_dir.mkdir(exist_ok=True)
        self.write_config()

    def write_config(self) -> None:
        """The config as JSON (a subset of YAML)."""
        settings = {
            "lock_dir": str(self.lock_dir),
            "runtime_dir": str(self.runtime_dir),
            "node": "bench",
            "scopes": {scope: {} for scope in self.scopes},
            "http": self.http,
        }
        self.config_path.write_text(json.dumps(settings, indent=2) + "\n")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def flag(self, scope: str = "default") -> Path:
        return self.lock_dir / f"{scope}.lock"

    def start(self, *, cpu: str | None = SERVER_CPU) -> Guardd:
        """Start guardd and wait for READY=1."""
        notify_path = str(self.root / "notify.sock")
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(notify_path)
        try:
            env = clean_env(NOTIFY_SOCKET=notify_path, **(self.env or {}))
            with open(self.log_path, "ab") as log:
                self.proc = self.procs.start(
                    [self.executable, "--config", str(self.config_path)],
                    cpu=cpu,
                    env=env,
                    stdout=log,
                    stderr=log,
                )
            deadline = time.monotonic() + READY_TIMEOUT
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    tail = self.log_path.read_text(errors="replace").strip().splitlines()[-3:]
                    raise BenchError(f"guardd did not become ready: {' | '.join(tail)}")
                notify.settimeout(min(left, 0.2))
                try:
                    message = notify.recv(65536).decode(errors="replace")
                except TimeoutError:
                    continue
                if "READY=1" in message:
                    break
        finally:
            notify.close()
        return self

    def stop(self) -> None:
        if self.proc is not None:
            code = self.procs.stop(self.proc)
            self.proc = None
            if code not in (0, None):
                tail = self.log_path.read_text(errors="replace").strip().splitlines()[-2:]
                print(f"bench: note: guardd exited {code}: {' | '.join(tail)}", file=sys.stderr)

    def request(self, obj: dict[str, object], *, timeout: float = 10.0) -> dict[str, object]:
        """One control-socket request and its reply."""
        with ControlClient(self.socket_path, timeout=timeout) as client:
            return client.request(obj)


class ControlClient:
    """A newline-delimited JSON client of guardd's control socket."""

    def __init__(self, path: str, *, timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buffer = b""

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, obj: dict[str, object]) -> None:
        self.sock.sendall(json.dumps(obj).encode() + b"\n")

    def read_line(self) -> dict[str, object]:
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise BenchError("guardd closed the control connection")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        reply: dict[str, object] = json.loads(line)
        return reply

    def request(self, obj: dict[str, object]) -> dict[str, object]:
        self.send(obj)
        return self.read_line()


def write_flag_atomically(path: Path, reason: str) -> None:
    """Write a flag the way guardctl does (temp file, fsync, rename)."""
    temp = path.with_name(f".{path.name}.bench-tmp")
    temp.write_text(json.dumps({"reason": reason}) + "\n")
    temp.rename(path)


# --------------------------------------------------------------------------- HTTP


class HttpAnswer:
    """One HTTP response as received: status, headers in order, body."""

    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


def http_get(port: int, path: str, *, timeout: float = 5.0) -> HttpAnswer:
    """GET ``path`` the way wrk does (HTTP/1.1, Host only), on a new connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        reader = HttpReader(sock)
        return reader.read_answer()


class HttpReader:
    """Reads Content-Length framed responses off a keep-alive socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise BenchError("the server closed the connection mid-answer")
        self.buffer += chunk

    def read_answer(self) -> HttpAnswer:
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = [(k, v.strip()) for k, _, v in (line.partition(":") for line in lines[1:])]
        length = int(next((v for k, v in headers if k.lower() == "content-length"), "0"))
        while len(self.buffer) < length:
            self._fill()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return HttpAnswer(status, headers, body)


# --------------------------------------------------------------------------- /proc


def cpu_reading(pid: int) -> dict[str, float]:
    """CPU time of every thread of ``pid``: clock ticks (utime+stime) and schedstat ns,
    and the number of context switches (each is a wake-up or a preemption)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stream:
        fields = stream.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    run_ns = 0
    switches = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/task/{task}/schedstat", encoding="ascii") as stream:
                run_ns += int(stream.read().split()[0])
            with open(f"/proc/{pid}/task/{task}/status", encoding="ascii") as stream:
                for line in stream:
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        switches += int(line.split()[1])
    return {
        "cpu_s_ticks": ticks / os.sysconf("SC_CLK_TCK"),
        "cpu_s_schedstat": run_ns / 1e9,
        "switches": float(switches),
    }


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {key: after[key] - before[key] for key in before}


def memory_kb(pid: int) -> dict[str, int]:
    """RSS and the process's private memory (USS) in KiB, and its thread count."""
    found: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as stream:
        for line in stream:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads"):
                found[key] = int(value.split()[0])
    private = 0
    with (
        contextlib.suppress(OSError),
        open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as stream,
    ):
        for line in stream:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                private += int(line.split()[1])
    return {
        "rss_kb": found.get("VmRSS", 0),
        "peak_rss_kb": found.get("VmHWM", 0),
        "uss_kb": private,
        "threads": found.get("Threads", 0),
    }


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# --------------------------------------------------------------------------- stats


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def median(values: list[float]) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def summary_ms(seconds: list[float]) -> dict[str, float]:
    """p50, p90, p99, max and count of durations given in seconds, in milliseconds."""
    return {
        "n": len(seconds),
        "p50_ms": round(median(seconds) * 1000, 3),
        "p90_ms": round(percentile(seconds, 90) * 1000, 3),
        "p99_ms": round(percentile(seconds, 99) * 1000, 3),
        "max_ms": round(max(seconds) * 1000, 3) if seconds else math.nan,
    }


def ratio(numerator: float, denominator: float) -> float:
    if not denominator or math.isnan(numerator) or math.isnan(denominator):
        return math.nan
    return round(numerator / denominator, 3)


@contextlib.contextmanager
def pinned(cpu: str):
    """Run the bench process itself on ``cpu`` for a while (clients of a latency test)."""
    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {int(cpu)})
    except OSError:
        yield
        return
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)
