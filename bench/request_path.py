"""Per-request cost of the HTTP responder's request path, in process, no sockets.

Feeds pipelined /healthz requests to one HttpConnection with a stand-in transport and
times them: the parse cache, routing, counting and the prebuilt answer. Run it with
two source trees to compare (the load of a shared machine spoils wrk A/B runs):

    PYTHONPATH=/work/main .venv/bin/python bench/request_path.py
    PYTHONPATH=. .venv/bin/python bench/request_path.py
"""

from __future__ import annotations

import asyncio
import statistics
import time

from guardd.answers.http.connection import HttpConnection
from guardd.answers.http.replies import HttpSettings, HttpShared
from guardd.config.load import build_config
from guardd.core.state import Snapshot

REQUESTS_PER_FEED = 64
FEEDS = 2000
ROUNDS = 15


class Transport:
    """Takes writes and forgets them."""

    def write(self, data: bytes) -> None:
        pass

    def get_extra_info(self, name: str) -> object:
        return ("127.0.0.1", 40000) if name == "peername" else None

    def is_closing(self) -> bool:
        return False


def main() -> None:
    loop = asyncio.new_event_loop()
    config = build_config({"lock_dir": "/tmp/x", "runtime_dir": "/tmp/y"}, source=None)
    settings = HttpSettings.from_config(config, None)
    shared = HttpShared(settings, Snapshot(statuses={}).view("default"))
    connection = HttpConnection(shared, loop)
    connection.transport = Transport()  # type: ignore[assignment]
    batch = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * REQUESTS_PER_FEED
    per_request = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for _ in range(FEEDS):
            connection._feed(batch)
        elapsed = time.perf_counter() - start
        per_request.append(elapsed / (FEEDS * REQUESTS_PER_FEED) * 1e9)
    print(
        f"ns per request: min {min(per_request):.0f}, "
        f"median {statistics.median(per_request):.0f} ({ROUNDS} rounds of "
        f"{FEEDS * REQUESTS_PER_FEED} pipelined /healthz)"
    )
    loop.close()


if __name__ == "__main__":
    main()
