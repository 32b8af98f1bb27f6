"""Flip latency: from the flag's rename (on) or unlink (off) to the control socket's
``watch`` event, and to the first changed /healthz answer.

One thread does both: after each flip it keeps asking /healthz on a keep-alive
connection and waits on both sockets with select(), so neither clock waits for the
other. guardd runs on the server core, the bench on the client core.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import time

from common import (
    CLIENT_CPU,
    BenchError,
    ControlClient,
    Guardd,
    HttpReader,
    Processes,
    make_tmp,
    pinned,
    summary_ms,
)

FLIP_TIMEOUT = 2.0
# Pause between flips, so that guardd's job recount after a flag change is done.
SETTLE = 0.02
HEALTH_REQUEST = b"GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n"


def run(procs: Processes, *, flips: int) -> dict:
    """``flips`` flips, alternately on and off; p50/p99 of both latencies."""
    root = make_tmp("gdb-flip-")
    daemon = Guardd(procs, root / "guardd")
    try:
        daemon.start()
        with pinned(CLIENT_CPU):
            return _measure(daemon, flips)
    finally:
        daemon.stop()
        shutil.rmtree(root, ignore_errors=True)


def _measure(
    daemon: Guardd, flips: int, *, scope: str = "default", health_path: str = "/healthz"
) -> dict:
    """Flip ``scope``'s flag; time the watch event and the change of ``health_path``."""
    flag = daemon.flag(scope)
    temp = flag.with_name(f".{scope}.lock.bench-tmp")
    request = f"GET {health_path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    watch = ControlClient(daemon.socket_path)
    http = socket.create_connection(("127.0.0.1", daemon.port), timeout=5)
    http.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    reader = HttpReader(http)
    latencies: dict[str, dict[str, list[float]]] = {
        "on": {"watch": [], "http": []},
        "off": {"watch": [], "http": []},
    }
    timeouts = 0
    try:
        watch.send({"op": "watch"})
        first = watch.read_line()
        if first.get("ok") is not True:
            raise BenchError(f"watch refused: {first}")
        for index in range(flips):
            turning_on = index % 2 == 0
            want_state, want_status = ("on", 503) if turning_on else ("off", 200)
            if turning_on:
                # Written and flushed before the clock starts; the rename is the flip.
                with open(temp, "w", encoding="utf-8") as stream:
                    stream.write(json.dumps({"reason": f"flip {index}"}) + "\n")
                    stream.flush()
                    os.fsync(stream.fileno())
            start = time.perf_counter()
            if turning_on:
                os.rename(temp, flag)
            else:
                os.unlink(flag)
            seen = _observe(
                watch,
                reader,
                http,
                start,
                want_state=want_state,
                want_status=want_status,
                scope=scope,
                request=request,
            )
            if seen is None:
                timeouts += 1
            else:
                direction = "on" if turning_on else "off"
                latencies[direction]["watch"].append(seen[0])
                latencies[direction]["http"].append(seen[1])
            time.sleep(SETTLE)
    finally:
        watch.sock.close()
        http.close()
    every = {kind: latencies["on"][kind] + latencies["off"][kind] for kind in ("watch", "http")}
    return {
        "flips": flips,
        "timeouts": timeouts,
        "watch_event": summary_ms(every["watch"]),
        "healthz_changed": summary_ms(every["http"]),
        "by_direction": {
            direction: {kind: summary_ms(values) for kind, values in kinds.items()}
            for direction, kinds in latencies.items()
        },
    }


def _observe(
    watch: ControlClient,
    reader: HttpReader,
    http: socket.socket,
    start: float,
    *,
    want_state: str,
    want_status: int,
    scope: str = "default",
    request: bytes = HEALTH_REQUEST,
) -> tuple[float, float] | None:
    """Seconds from ``start`` to the watch event and to the changed /healthz answer."""
    watch_at = http_at = None
    deadline = start + FLIP_TIMEOUT
    http.sendall(request)
    while watch_at is None or http_at is None:
        left = deadline - time.perf_counter()
        if left <= 0:
            return None
        buffered = b"\n" in watch.buffer
        readable, _, _ = select.select([watch.sock, http], [], [], 0 if buffered else left)
        now = time.perf_counter()
        if buffered or watch.sock in readable:
            event = watch.read_line()
            if (
                watch_at is None
                and event.get("scope") == scope
                and event.get("state") == want_state
            ):
                watch_at = now - start
        if http in readable:
            answer = reader.read_answer()
            if answer.status == want_status:
                if http_at is None:
                    http_at = now - start
            else:
                http.sendall(request)
    return watch_at, http_at
