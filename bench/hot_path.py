"""CPU per request of guardd's HTTP request path, in process (no sockets, no wrk):
64 pipelined requests fed to one connection, 100 times per round, the best of 40
rounds in the thread's CPU time, the cases alternating round after round. A shared,
loaded machine moves wrk's figures by 2x from one run to the next; this one moves
by a few percent, so it compares two trees of the code:

    .venv/bin/python bench/hot_path.py 0 10000                   # this tree
    PYTHONPATH=/path/to/other/tree .venv/bin/python bench/hot_path.py 0   # another

Arguments: numbers of scopes (each sN claiming sN.example.com; 0: no scopes).
Works against trees from before per-scope answers too (only the 0 case).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from typing import cast

from guardd.answers.http.connection import HttpConnection
from guardd.config.load import load_config
from guardd.core.state import Snapshot
from guardd.daemon.listeners import HttpListener

FEEDS = 100
ROUNDS = 40


class _Sink:
    def write(self, data: bytes) -> None:
        pass

    def get_extra_info(self, name: str) -> object:
        return ("127.0.0.1", 40000)


def _connection(scopes: int, loop: asyncio.AbstractEventLoop, root: str) -> HttpConnection:
    path = os.path.join(root, f"config-{scopes}.json")
    settings = {
        "lock_dir": root,
        "runtime_dir": root,
        "scopes": {f"s{i}": {"hosts": [f"s{i}.example.com"]} for i in range(scopes)},
    }
    with open(path, "w", encoding="utf-8") as stream:
        json.dump(settings, stream)
    listener = HttpListener(load_config(path))
    listener.update(Snapshot(statuses={}))
    connection = HttpConnection(listener.shared, loop)
    connection.transport = cast(asyncio.Transport, _Sink())
    return connection


async def _measure(counts: list[int]) -> None:
    loop = asyncio.get_running_loop()
    cases = []
    with tempfile.TemporaryDirectory() as root:
        for count in counts:
            connection = _connection(count, loop, root)
            host = "s1.example.com" if count else "localhost"
            paths = ["/healthz", "/"] + (["/healthz/s1"] if count else [])
            for path in paths:
                head = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: */*\r\n\r\n"
                cases.append((f"{count} scopes, {path}", connection, head.encode() * 64))
        best = {name: float("inf") for name, _, _ in cases}
        for _ in range(ROUNDS):
            for name, connection, batch in cases:
                started = time.thread_time()
                for _ in range(FEEDS):
                    connection._feed(batch)
                best[name] = min(best[name], (time.thread_time() - started) / (FEEDS * 64))
    for name, seconds in best.items():
        print(f"{name:28} {seconds * 1e6:6.3f} us/request")


if __name__ == "__main__":
    asyncio.run(_measure([int(arg) for arg in sys.argv[1:]] or [0]))
