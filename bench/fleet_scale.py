"""Fleet mode at scale: 10, 50, 100 guardd nodes against one etcd on loopback.

    .venv/bin/python bench/fleet_scale.py                 # 10, 50, 100 nodes
    .venv/bin/python bench/fleet_scale.py --nodes 10,20 --flips 3

Each node is a full guardd (one scope, no HTTP listener, `http.policy` withdraw,
then fleet) with its own directories.
Per node count it measures: the time from the fleet flag's write (the same put
`guardctl on --fleet` makes, done in-process so Python's start is not counted) to
each node's flip (the mtime of the node's mirror file, which guardd reads within a
millisecond) and to each node's confirmation (its record `on` at the flag's
revision, seen on an etcd watch); the wall time of `guardctl on --fleet --wait`
with idle nodes (a whole process start included, and without it: from its first
output line to its exit); and the CPU etcd and all nodes used during a flip.
Not a test: it measures and prints a table, and writes bench/fleet_results.json.
It needs etcd (Debian's etcd-server) and the fleet extra (aetcd).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aetcd
from common import (
    BenchError,
    Processes,
    clean_env,
    cpu_reading,
    free_port,
    make_tmp,
    raise_nofile,
    summary_ms,
    tool,
    venv_command,
)

BENCH = Path(__file__).resolve().parent
PREFIX = "/bench"
LEASE_TTL = 10


def start_etcd(procs: Processes, root: Path) -> tuple[subprocess.Popen[bytes], int]:
    client, peer = free_port(), free_port()
    proc = procs.start(
        [
            tool("etcd"),
            "--name",
            "b0",
            "--data-dir",
            str(root / "etcd"),
            "--listen-client-urls",
            f"http://127.0.0.1:{client}",
            "--advertise-client-urls",
            f"http://127.0.0.1:{client}",
            "--listen-peer-urls",
            f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls",
            f"http://127.0.0.1:{peer}",
            "--initial-cluster",
            f"b0=http://127.0.0.1:{peer}",
        ],
        stderr=open(root / "etcd.log", "wb"),  # noqa: SIM115 - the process owns it
    )
    return proc, client


def node_config(root: Path, name: str, port: int, policy: str) -> Path:
    (root / "lock").mkdir(parents=True)
    config = root / "config.yaml"
    config.write_text(
        json.dumps(
            {
                "node": name,
                "lock_dir": str(root / "lock"),
                "runtime_dir": str(root / "run"),
                "scopes": {"shop": None},
                "http": {"listen": [], "policy": policy},
                "control": {"socket": str(root / "run" / "guardd.sock")},
                "fleet": {
                    "endpoints": [f"http://127.0.0.1:{port}"],
                    "lease_ttl": LEASE_TTL,
                    "prefix": PREFIX,
                },
            }
        )
    )
    return config


async def count_nodes(client: aetcd.Client) -> int:
    result = await client.get_prefix(f"{PREFIX}/nodes/".encode())
    return sum(1 for kv in result if b'"left"' not in kv.value)


async def flip_once(
    client: aetcd.Client, mirrors: list[Path], pids: list[int], etcd_pid: int
) -> dict[str, Any]:
    """One fleet flag on: per node, flip (mirror mtime) and confirmation times."""
    confirmed: dict[str, float] = {}
    key = f"{PREFIX}/scopes/shop".encode()
    before_cpu = [cpu_reading(pid)["cpu_s_schedstat"] for pid in pids]
    before_etcd = cpu_reading(etcd_pid)["cpu_s_schedstat"]
    current = await client.get_prefix(b"/")
    watch = await client.watch_prefix(
        f"{PREFIX}/nodes/".encode(), start_revision=int(current.header.revision) + 1
    )
    t0 = time.time()
    put = await client.put(key, b'{"reason":"bench"}')
    revision = int(put.header.revision)

    async def follow() -> None:
        async for event in watch:
            record = json.loads(bytes(event.kv.value) or b"{}")
            shop = record.get("scopes", {}).get("shop", {})
            if shop.get("state") == "on" and (shop.get("revision") or 0) >= revision:
                name = bytes(event.kv.key).decode().rsplit("/", 1)[1]
                confirmed.setdefault(name, time.time() - t0)
                if len(confirmed) == len(mirrors):
                    return

    try:
        await asyncio.wait_for(follow(), 60)
    except TimeoutError:
        pass
    await watch.cancel()
    flips = []
    deadline = time.monotonic() + 30
    for mirror in mirrors:
        while not mirror.exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        if mirror.exists():
            flips.append(mirror.stat().st_mtime_ns / 1e9 - t0)
    await asyncio.sleep(0.5)  # the tail of the flip's work (records seen by every node)
    node_cpu = sum(
        cpu_reading(pid)["cpu_s_schedstat"] - b for pid, b in zip(pids, before_cpu, strict=True)
    )
    etcd_cpu = cpu_reading(etcd_pid)["cpu_s_schedstat"] - before_etcd
    await client.delete(key)
    deadline = time.monotonic() + 30
    while any(m.exists() for m in mirrors) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.5)
    return {
        "flip": flips,
        "confirm": list(confirmed.values()),
        "missed": len(mirrors) - len(flips),
        "unconfirmed": len(mirrors) - len(confirmed),
        "node_cpu_s": node_cpu,
        "etcd_cpu_s": etcd_cpu,
    }


def time_wait(config: Path) -> tuple[float, float, int]:
    """`guardctl on --fleet --wait` wall time, and from its first line to its exit."""
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [venv_command("guardctl"), "on", "shop", "--fleet", "--wait", "--timeout", "30"],
        env=clean_env(GUARDD_CONFIG=str(config)),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    proc.stdout.readline()
    t1 = time.monotonic()
    proc.stdout.read()
    code = proc.wait(timeout=60)
    t2 = time.monotonic()
    subprocess.run(
        [venv_command("guardctl"), "off", "shop", "--fleet"],
        env=clean_env(GUARDD_CONFIG=str(config)),
        capture_output=True,
        timeout=60,
        check=False,
    )
    return t2 - t0, t2 - t1, code


def run_size(
    procs: Processes,
    root: Path,
    port: int,
    etcd_pid: int,
    *,
    count: int,
    flips: int,
    policy: str,
) -> dict[str, Any]:
    nodes = []
    env_base = clean_env()
    started = time.monotonic()
    for i in range(count):
        node_root = root / f"n{count}-{policy}-{i}"
        config = node_config(node_root, f"n{i:03d}", port, policy)
        proc = procs.start(
            [venv_command("guardd"), "--config", str(config)],
            env={**env_base, "GUARDD_CONFIG": str(config)},
            stderr=open(node_root / "guardd.log", "wb"),  # noqa: SIM115
        )
        nodes.append((proc, node_root, config))

    async def registered() -> None:
        async with aetcd.Client(port=port) as client:
            deadline = time.monotonic() + 300
            while await count_nodes(client) < count:
                if time.monotonic() > deadline:
                    raise BenchError(f"only {await count_nodes(client)} of {count} registered")
                await asyncio.sleep(0.2)

    asyncio.run(registered())
    startup = time.monotonic() - started
    time.sleep(2.0)  # let the start's churn settle
    mirrors = [n[1] / "lock" / "shop.fleet.lock" for n in nodes]
    pids = [n[0].pid for n in nodes]

    async def flip_all() -> list[dict[str, Any]]:
        async with aetcd.Client(port=port) as client:
            return [await flip_once(client, mirrors, pids, etcd_pid) for _ in range(flips)]

    rounds = asyncio.run(flip_all())
    waits = [time_wait(nodes[0][2]) for _ in range(flips)]
    idle_before = [cpu_reading(pid)["cpu_s_schedstat"] for pid in pids]
    etcd_idle_before = cpu_reading(etcd_pid)["cpu_s_schedstat"]
    time.sleep(5.0)
    idle_cpu = sum(
        cpu_reading(pid)["cpu_s_schedstat"] - b for pid, b in zip(pids, idle_before, strict=True)
    )
    etcd_idle = cpu_reading(etcd_pid)["cpu_s_schedstat"] - etcd_idle_before
    rss = sum(_rss_kb(pid) for pid in pids)
    for proc, _, _ in nodes:
        with _suppress():
            os.kill(proc.pid, signal.SIGTERM)
    for proc, _, _ in nodes:
        procs.stop(proc, grace=15)
    flip_all_s = [x for r in rounds for x in r["flip"]]
    confirm_all_s = [x for r in rounds for x in r["confirm"]]
    return {
        "nodes": count,
        "policy": policy,
        "startup_s": round(startup, 2),
        "flip": summary_ms(flip_all_s),
        "flip_last_per_round_ms": [round(max(r["flip"] or [0]) * 1000, 1) for r in rounds],
        "confirm": summary_ms(confirm_all_s),
        "missed": sum(r["missed"] for r in rounds),
        "unconfirmed": sum(r["unconfirmed"] for r in rounds),
        "node_cpu_per_flip_s": round(sum(r["node_cpu_s"] for r in rounds) / flips, 3),
        "etcd_cpu_per_flip_s": round(sum(r["etcd_cpu_s"] for r in rounds) / flips, 3),
        "wait_wall": summary_ms([w[0] for w in waits]),
        "wait_after_start": summary_ms([w[1] for w in waits]),
        "wait_codes": [w[2] for w in waits],
        "idle_node_cpu_pct": round(idle_cpu / 5.0 * 100, 2),
        "idle_etcd_cpu_pct": round(etcd_idle / 5.0 * 100, 2),
        "node_rss_mib_each": round(rss / count / 1024, 1),
    }


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return True


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as stream:
            for line in stream:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def render(results: list[dict[str, Any]]) -> str:
    lines = [
        "| nodes | policy | flip p50 / p99 / max ms | confirmed p50 / p99 ms | missed | "
        "`on --fleet --wait` wall p50 (after start) ms | CPU per flip: nodes / etcd s | "
        "idle CPU: nodes / etcd % | start s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        lines.append(
            f"| {r['nodes']} | {r['policy']} | {r['flip']['p50_ms']:.0f} / "
            f"{r['flip']['p99_ms']:.0f} / "
            f"{r['flip']['max_ms']:.0f} | {r['confirm']['p50_ms']:.0f} / "
            f"{r['confirm']['p99_ms']:.0f} | {r['missed']} | {r['wait_wall']['p50_ms']:.0f} "
            f"({r['wait_after_start']['p50_ms']:.0f}) | {r['node_cpu_per_flip_s']} / "
            f"{r['etcd_cpu_per_flip_s']} | {r['idle_node_cpu_pct']} / "
            f"{r['idle_etcd_cpu_pct']} | {r['startup_s']} |"
        )
    return "\n".join(lines)


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", default="10,50,100")
    parser.add_argument("--flips", type=int, default=5)
    parser.add_argument(
        "--policy",
        default="withdraw,fleet",
        help="http.policy of the nodes, one run per value (fleet: every node follows "
        "every other node's record)",
    )
    parser.add_argument("--out", default=str(BENCH / "fleet_results.json"))
    args = parser.parse_args()
    raise_nofile()
    signal.signal(signal.SIGTERM, _terminate)  # so that `finally` stops every node
    procs = Processes()
    root = make_tmp("gdfs-")
    results = []
    try:
        etcd, port = start_etcd(procs, root)

        async def ready() -> None:
            deadline = time.monotonic() + 30
            while True:
                try:
                    async with aetcd.Client(port=port) as client:
                        await client.status()
                        return
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.2)

        asyncio.run(ready())
        for policy in args.policy.split(","):
            for count in (int(x) for x in args.nodes.split(",")):
                result = run_size(
                    procs, root, port, etcd.pid, count=count, flips=args.flips, policy=policy
                )
                results.append(result)
                print(json.dumps(result), flush=True)
    except BenchError as err:
        print(f"fleet_scale: {err}", file=sys.stderr)
        return 2
    finally:
        procs.close()
        subprocess.run(["rm", "-rf", str(root)], check=False)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
