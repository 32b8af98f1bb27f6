"""Sample every node's /healthz and agent port every 10 ms; one JSON line per tick.

Run inside the partition test's hub namespace (the only place that reaches every
node's address): ``python fleet_sampler.py OUT NAME=ADDR ...``. Stops by itself
after ``--seconds`` or on SIGTERM. Bounded: one tick every 10 ms at most, each
request with a 0.5 s timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import time

HTTP_PORT = 8080
AGENT_PORT = 8090
TIMEOUT = 0.5


async def health(addr: str) -> tuple[int, bool | None]:
    """(status code, maintenance) of GET /healthz; (0, None) when it does not answer."""
    try:
        async with asyncio.timeout(TIMEOUT):
            reader, writer = await asyncio.open_connection(addr, HTTP_PORT)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = await reader.read()
            writer.close()
    except (OSError, TimeoutError):
        return 0, None
    head, _, body = data.partition(b"\r\n\r\n")
    try:
        code = int(head.split(b" ", 2)[1])
        maintenance = bool(json.loads(body)["maintenance"])
    except (IndexError, ValueError, KeyError):
        return 0, None
    return code, maintenance


async def agent(addr: str) -> str:
    """The agent line's first word ('' when it does not answer)."""
    try:
        async with asyncio.timeout(TIMEOUT):
            reader, writer = await asyncio.open_connection(addr, AGENT_PORT)
            line = await reader.readline()
            writer.close()
    except (OSError, TimeoutError):
        return ""
    return line.decode(errors="replace").split(" ", 1)[0].strip()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("nodes", nargs="+")
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--interval", type=float, default=0.01)
    args = parser.parse_args()
    nodes = dict(item.split("=", 1) for item in args.nodes)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    deadline = time.monotonic() + args.seconds
    with open(args.out, "w", buffering=1) as out:
        while not stop.is_set() and time.monotonic() < deadline:
            started = time.monotonic()
            wall = time.time()
            names = list(nodes)
            healths, agents = await asyncio.gather(
                asyncio.gather(*(health(nodes[n]) for n in names)),
                asyncio.gather(*(agent(nodes[n]) for n in names)),
            )
            tick: dict[str, object] = {"t": wall}
            for name, (code, maintenance), line in zip(names, healths, agents, strict=True):
                tick[name] = [code, maintenance, line]
            out.write(json.dumps(tick) + "\n")
            pause = args.interval - (time.monotonic() - started)
            if pause > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), pause)


if __name__ == "__main__":
    asyncio.run(main())
