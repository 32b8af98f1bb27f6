"""Fleet mode against a real etcd: one switch for several guardd nodes."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.etcd_helpers import EtcdCluster
from tests.helpers import Guardd, command, free_port, run_guardctl, wait_until
from tests.httpclient import get

MakeGuardd = Callable[..., Guardd]
LEASE_TTL = 2


def node(make_guardd: MakeGuardd, cluster: EtcdCluster, name: str, **extra: Any) -> Guardd:
    settings = {
        "node": name,
        "scopes": {"shop": None},
        "fleet": {"endpoints": cluster.endpoints, "lease_ttl": LEASE_TTL, "prefix": "/t"},
        **extra,
    }
    return make_guardd(settings)


def ctl(daemon: Guardd, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return run_guardctl(daemon.config_path, *args, timeout=timeout)


def guard_run_check(daemon: Guardd) -> int:
    env = {**os.environ, "GUARDD_CONFIG": str(daemon.config_path)}
    return subprocess.run(
        [command("guard-run"), "--check", "--scope", "shop"],
        env=env,
        capture_output=True,
        timeout=30,
        check=False,
    ).returncode


def state(daemon: Guardd, scope: str = "shop") -> str:
    return str(daemon.request({"op": "status"})["scopes"][scope]["state"])


def fleet_nodes(daemon: Guardd) -> dict[str, Any]:
    result = ctl(daemon, "status", "--fleet", "--json")
    assert result.returncode == 0, result.stderr
    nodes: dict[str, Any] = json.loads(result.stdout)["nodes"]
    return nodes


def test_one_switch_flips_every_node(make_guardd: MakeGuardd, etcd: EtcdCluster) -> None:
    """guardctl on/off --fleet flips every node, via the mirror file guard-run can read."""
    nodes = [node(make_guardd, etcd, f"web-{i}").start() for i in range(3)]
    wait_until(lambda: len(fleet_nodes(nodes[0])) == 3, what="three nodes registered")
    result = ctl(nodes[0], "on", "shop", "--fleet", "--reason", "fleet-wide migration")
    assert result.returncode == 0, result.stderr
    for daemon in nodes:
        wait_until(lambda d=daemon: state(d) == "on", what="node in maintenance")
        mirror = json.loads((daemon.lock_dir / "shop.fleet.lock").read_text())
        assert mirror["reason"] == "fleet-wide migration"
        assert (
            daemon.request({"op": "status"})["scopes"]["shop"]["reason"] == "fleet-wide migration"
        )
        assert guard_run_check(daemon) == 1  # guard-run sees it, file-only
    assert ctl(nodes[1], "off", "shop", "--fleet").returncode == 0
    for daemon in nodes:
        wait_until(lambda d=daemon: state(d) == "off", what="node back in service")
        assert not (daemon.lock_dir / "shop.fleet.lock").exists()
        assert guard_run_check(daemon) == 0


def test_fleet_wait_waits_for_every_node_to_drain(
    make_guardd: MakeGuardd, etcd: EtcdCluster
) -> None:
    """on --fleet --wait: exit 3 naming a node whose job still runs; 0 once it has drained."""
    a = node(make_guardd, etcd, "web-a").start()
    b = node(make_guardd, etcd, "web-b").start()
    wait_until(lambda: len(fleet_nodes(a)) == 2, what="two nodes registered")
    job = subprocess.Popen(
        ["flock", "-s", str(b.runtime_dir / "shop.run"), "sleep", "60"], start_new_session=True
    )
    try:
        wait_until(
            lambda: b.request({"op": "status"})["scopes"]["shop"]["jobs"] == 1,
            what="job counted on b",
        )
        result = ctl(a, "on", "shop", "--fleet", "--wait", "--timeout", "2")
        assert result.returncode == 3
        assert "still draining: web-b" in result.stdout
        assert state(a) == "on"
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()
        result = ctl(a, "on", "shop", "--fleet", "--wait", "--timeout", "20")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "every live node reports it drained" in result.stdout
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()


def test_fleet_usage_and_unreachable_errors(
    make_guardd: MakeGuardd, etcd: EtcdCluster, tmp_short: Path
) -> None:
    """--then with --fleet is exit 2; etcd unreachable is exit 4; no daemon is needed."""
    daemon = node(make_guardd, etcd, "web-a")  # never started: guardctl needs no daemon
    result = ctl(daemon, "on", "shop", "--fleet", "--wait", "--then", "term")
    assert result.returncode == 2 and "do not go with --fleet" in result.stderr
    assert ctl(daemon, "on", "shop", "--fleet").returncode == 0
    assert ctl(daemon, "on", "shop", "--fleet", "--wait").returncode == 0  # no live node
    etcd.stop()
    result = ctl(daemon, "off", "shop", "--fleet")
    assert result.returncode == 4
    assert "etcd is not reachable" in result.stderr and result.stderr.count("\n") == 1
    plain = make_guardd({"scopes": {"shop": None}})
    result = ctl(plain, "on", "shop", "--fleet")
    assert result.returncode == 2 and "fleet.endpoints" in result.stderr


def test_local_off_leaves_the_fleet_flag(make_guardd: MakeGuardd, etcd: EtcdCluster) -> None:
    """guardctl off S without --fleet leaves the fleet flag alone and says so."""
    daemon = node(make_guardd, etcd, "web-a").start()
    assert ctl(daemon, "on", "shop", "--fleet").returncode == 0
    wait_until(lambda: state(daemon) == "on", what="on via the fleet")
    result = ctl(daemon, "off", "shop")
    assert result.returncode == 0
    assert "fleet flag of shop is still on" in result.stdout
    assert state(daemon) == "on"


def test_mirror_deleted_by_hand_is_restored(make_guardd: MakeGuardd, etcd: EtcdCluster) -> None:
    """rm of the mirror file while the fleet flag is on: guardd writes it back."""
    daemon = node(make_guardd, etcd, "web-a").start()
    assert ctl(daemon, "on", "shop", "--fleet", "--reason", "keep").returncode == 0
    mirror = daemon.lock_dir / "shop.fleet.lock"
    wait_until(mirror.exists, what="mirror written")
    mirror.unlink()
    wait_until(mirror.exists, what="mirror restored")
    assert json.loads(mirror.read_text())["reason"] == "keep"
    # guardd saw the file go (off for a moment) and sees its own rewrite come back.
    wait_until(lambda: state(daemon) == "on", what="on again")


def test_clean_stop_leaves_at_once_and_a_killed_node_expires(
    make_guardd: MakeGuardd, etcd: EtcdCluster
) -> None:
    """A stopped node's key is deleted at once; a SIGKILLed one's expires with its lease."""
    a = node(make_guardd, etcd, "web-a").start()
    b = node(make_guardd, etcd, "web-b").start()
    c = node(make_guardd, etcd, "web-c").start()
    wait_until(lambda: len(fleet_nodes(a)) == 3, what="three nodes registered")
    code, _ = b.stop()
    assert code == 0
    assert "web-b" not in fleet_nodes(a)  # gone at once, no lease wait
    assert c.process is not None
    c.process.kill()
    c.process.wait()
    assert "web-c" in fleet_nodes(a)
    wait_until(
        lambda: "web-c" not in fleet_nodes(a),
        timeout=LEASE_TTL * 5,
        what="killed node's lease to expire",
    )


def test_etcd_outage_keeps_state_and_converges(make_guardd: MakeGuardd, etcd: EtcdCluster) -> None:
    """etcd stopped mid-test: no crash, flags kept, local flags work; restarted: converges."""
    daemon = node(make_guardd, etcd, "web-a").start()
    assert ctl(daemon, "on", "shop", "--fleet", "--reason", "before outage").returncode == 0
    wait_until(lambda: state(daemon) == "on", what="on via the fleet")
    etcd.stop()
    # Local flags keep working while etcd is down, and the fleet flag's mirror stays.
    daemon.flag().touch()
    wait_until(lambda: state(daemon, "default") == "on", what="local flag during outage")
    assert (daemon.lock_dir / "shop.fleet.lock").exists()
    assert state(daemon) == "on"
    etcd.start(fresh=False)
    wait_until(lambda: "web-a" in fleet_nodes(daemon), timeout=30, what="node re-registered")
    assert ctl(daemon, "off", "shop", "--fleet").returncode == 0
    wait_until(
        lambda: not (daemon.lock_dir / "shop.fleet.lock").exists(),
        timeout=30,
        what="fleet off reached after the outage",
    )
    assert daemon.process is not None and daemon.process.poll() is None
    _, err = daemon.stop()
    assert err.count("etcd unreachable") == 1  # logged once per outage
    assert "etcd reachable again" in err


@pytest.mark.heavy
@pytest.mark.timeout(900)
def test_three_member_cluster_losing_one_member(make_guardd: MakeGuardd, tmp_short: Path) -> None:
    """With three etcd members, losing one (even the one a node talks to) keeps working."""
    cluster = EtcdCluster(tmp_short, members=3)
    cluster.start()
    try:
        a = node(make_guardd, cluster, "web-a").start()
        b = node(make_guardd, cluster, "web-b").start()
        wait_until(lambda: len(fleet_nodes(a)) == 2, what="two nodes registered")
        cluster.stop("m0")  # the first endpoint, which every client tried first
        assert ctl(a, "on", "shop", "--fleet").returncode == 0
        for daemon in (a, b):
            wait_until(
                lambda d=daemon: state(d) == "on",
                timeout=30,
                what="fleet flag after losing a member",
            )
        assert set(fleet_nodes(a)) == {"web-a", "web-b"}
    finally:
        cluster.close()


def agent_line(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        return conn.makefile("rb").read().decode()


def health(port: int) -> tuple[int, str]:
    response = get(port, "/healthz")
    return response.status, str(response.json()["status"])


def test_fleet_policy_withdraws_while_another_node_serves(
    make_guardd: MakeGuardd, etcd: EtcdCluster
) -> None:
    """fleet policy: 503 on a node in maintenance while another serves; 200 once none does."""
    ports = [free_port(), free_port()]
    agent_ports = [free_port(), free_port()]
    a, b = (
        node(
            make_guardd,
            etcd,
            name,
            http={"listen": [f"127.0.0.1:{port}"], "policy": "fleet", "scope": "shop"},
            agent={"listen": [f"127.0.0.1:{agent}"]},
        ).start()
        for name, port, agent in zip(("web-a", "web-b"), ports, agent_ports, strict=True)
    )
    wait_until(lambda: len(fleet_nodes(a)) == 2, what="two nodes registered")
    a.flag("shop").touch()  # a alone goes into maintenance: b still serves
    wait_until(lambda: health(ports[0]) == (503, "fail"), what="a withdrawn")
    assert health(ports[1]) == (200, "pass")
    assert agent_line(agent_ports[0]).startswith("maint")
    b.flag("shop").touch()  # now no node serves: both stay in the pool with the page
    wait_until(lambda: health(ports[0]) == (200, "warn"), what="a back in the pool")
    wait_until(lambda: health(ports[1]) == (200, "warn"), what="b in the pool")
    assert agent_line(agent_ports[0]) == "up ready 100%\n"
    page = get(ports[0], "/")
    assert page.status == 503 and page.header("Guard-Maintenance") == "shop"
    b.flag("shop").unlink()
    wait_until(lambda: health(ports[0]) == (503, "fail"), what="a withdrawn again")


def test_etcd_outage_turns_pass_into_warn(make_guardd: MakeGuardd, etcd: EtcdCluster) -> None:
    """With etcd unreachable the health answer says warn where it would say pass."""
    port = free_port()
    daemon = node(
        make_guardd, etcd, "web-a", http={"listen": [f"127.0.0.1:{port}"], "policy": "fleet"}
    ).start()
    wait_until(lambda: health(port) == (200, "pass"), what="pass with etcd up")
    etcd.stop()
    wait_until(lambda: health(port) == (200, "warn"), timeout=30, what="warn during outage")
    daemon.flag().touch()  # local flags still work; no other node known: stays in pool
    wait_until(
        lambda: get(port, "/maintenance.json").json()["state"] == "on",
        what="local flag during outage",
    )


def test_fleet_policy_without_any_fleet_view_acts_as_withdraw(
    make_guardd: MakeGuardd, tmp_short: Path
) -> None:
    """etcd unreachable since start: the fleet policy answers as withdraw."""
    port = free_port()
    daemon = make_guardd(
        {
            "scopes": {"shop": None},
            "http": {"listen": [f"127.0.0.1:{port}"], "policy": "fleet"},
            "fleet": {"endpoints": [f"http://127.0.0.1:{free_port()}"], "lease_ttl": 2},
        }
    ).start()
    daemon.flag().touch()
    wait_until(lambda: health(port) == (503, "fail"), what="withdrawn without a fleet view")


def node_records_after(cluster: EtcdCluster, revision: int, seconds: float) -> list[Any]:
    """Every put to a node key from ``revision`` on, for ``seconds`` (a real etcd watch)."""
    import aetcd

    async def collect() -> list[Any]:
        host, port = cluster.endpoints[0].removeprefix("http://").rsplit(":", 1)
        records: list[Any] = []
        async with aetcd.Client(host=host, port=int(port)) as client:
            watch = await client.watch_prefix(b"/t/nodes/", start_revision=revision)

            async def drain() -> None:
                async for event in watch:
                    records.append(json.loads(bytes(event.kv.value) or b"null"))

            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(drain(), seconds)
        return records

    return asyncio.run(collect())


def test_fleet_wait_needs_a_job_count_taken_after_the_flag(
    make_guardd: MakeGuardd, etcd: EtcdCluster
) -> None:
    """A job whose flock raised no event yet is counted after the fleet flag: never `on`."""
    daemon = node(make_guardd, etcd, "web-a").start()
    wait_until(lambda: len(fleet_nodes(daemon)) == 1, what="node registered")
    for _ in range(5):
        # Open the run lock early (the open is the only event the daemon sees), let the
        # recount it triggers find nothing, then take the lock: guardd's count is stale.
        fd = os.open(daemon.runtime_dir / "shop.run", os.O_RDONLY)
        try:
            time.sleep(0.3)
            fcntl.flock(fd, fcntl.LOCK_SH)
            assert daemon.request({"op": "status"})["scopes"]["shop"]["jobs"] == 0  # stale
            result = ctl(daemon, "on", "shop", "--fleet")
            assert result.returncode == 0, result.stderr
            revision = int(result.stdout.rsplit("revision ", 1)[1].split(")")[0])
            records = node_records_after(etcd, revision, 1.0)
            claims = [
                r["scopes"]["shop"]
                for r in records
                if r
                and r["scopes"]["shop"]["state"] == "on"
                and (r["scopes"]["shop"]["revision"] or 0) >= revision
            ]
            assert not claims, f"drained claimed while a job holds the lock: {claims}"
            wait_until(lambda: state(daemon) == "draining", what="job counted")
        finally:
            os.close(fd)
        assert ctl(daemon, "on", "shop", "--fleet", "--wait", "--timeout", "20").returncode == 0
        assert ctl(daemon, "off", "shop", "--fleet").returncode == 0
        wait_until(lambda: state(daemon) == "off", what="back in service")


def test_fleet_wait_names_a_node_whose_lease_expired_as_lost(
    make_guardd: MakeGuardd, etcd: EtcdCluster
) -> None:
    """A draining node killed mid-wait (lease expires): exit 3 naming it lost; a clean
    stop mid-wait counts as a clean leave: 0."""
    a = node(make_guardd, etcd, "web-a").start()
    b = node(make_guardd, etcd, "web-b").start()
    wait_until(lambda: len(fleet_nodes(a)) == 2, what="two nodes registered")
    job = subprocess.Popen(
        ["flock", "-s", str(b.runtime_dir / "shop.run"), "sleep", "60"], start_new_session=True
    )
    try:
        wait_until(lambda: b.request({"op": "status"})["scopes"]["shop"]["jobs"] == 1, what="job")
        waiter = subprocess.Popen(
            [command("guardctl"), "on", "shop", "--fleet", "--wait", "--timeout", "30"],
            env={**os.environ, "GUARDD_CONFIG": str(a.config_path)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_until(lambda: state(b) == "draining", what="b draining")
        assert b.process is not None
        b.process.kill()  # cut off as far as etcd can tell: its lease expires
        b.process.wait()
        out, err = waiter.communicate(timeout=LEASE_TTL * 10)
        assert waiter.returncode == 3, out + err
        assert "lost" in out and "web-b" in out.rsplit("lost", 1)[1]
        # Now a clean stop while draining: it leaves cleanly, the wait returns 0.
        assert ctl(a, "off", "shop", "--fleet").returncode == 0
        assert ctl(a, "forget", "web-b").returncode == 0  # b is dead for good
        c = node(make_guardd, etcd, "web-c").start()
        c_job = subprocess.Popen(
            ["flock", "-s", str(c.runtime_dir / "shop.run"), "sleep", "60"],
            start_new_session=True,
        )
        try:
            wait_until(lambda: "web-c" in fleet_nodes(a), what="c registered")
            wait_until(
                lambda: c.request({"op": "status"})["scopes"]["shop"]["jobs"] == 1, what="c job"
            )
            waiter = subprocess.Popen(
                [command("guardctl"), "on", "shop", "--fleet", "--wait", "--timeout", "30"],
                env={**os.environ, "GUARDD_CONFIG": str(a.config_path)},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            wait_until(lambda: state(c) == "draining", what="c draining")
            code, _ = c.stop()
            assert code == 0
            out, err = waiter.communicate(timeout=20)
            assert waiter.returncode == 0, out + err
        finally:
            os.killpg(c_job.pid, signal.SIGKILL)
            c_job.wait()
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()


def test_duplicate_node_name_is_refused_and_a_quick_restart_is_not(
    make_guardd: MakeGuardd, etcd: EtcdCluster
) -> None:
    """A second live guardd with the same node: exit 1 naming the holder; the first
    keeps the name; the same node SIGKILLed and restarted at once takes it back."""
    a = node(make_guardd, etcd, "web-a").start()
    wait_until(lambda: "web-a" in fleet_nodes(a), what="a registered")
    twin = node(make_guardd, etcd, "web-a").start(wait_ready=False)
    assert twin.process is not None
    assert twin.process.wait(timeout=LEASE_TTL * 5 + 15) == 1
    log = twin.log()
    assert "node web-a is held by another live guardd" in log, log
    assert f"pid {a.process.pid if a.process else 0}" in log
    assert "Traceback" not in log
    assert not (twin.lock_dir / "shop.fleet.lock").exists()
    assert ctl(a, "on", "shop", "--fleet").returncode == 0
    wait_until(lambda: state(a) == "on", what="a still follows the fleet")
    assert ctl(a, "off", "shop", "--fleet").returncode == 0
    wait_until(lambda: state(a) == "off", what="a back in service")
    assert "held by" not in a.log()  # the twin never disturbed a's key
    # A quick restart after SIGKILL (the old lease still alive): takes the name back
    # at once, because the holder is this host's guardd and its pid is gone.
    assert a.process is not None
    a.process.kill()
    a.process.wait()
    started = time.monotonic()
    a.start()
    assert time.monotonic() - started < LEASE_TTL
    assert "taking the name over" in a.log()
    wait_until(lambda: "web-a" in fleet_nodes(a), what="a registered again")


def test_name_held_by_a_dead_holder_elsewhere_is_taken_once_its_lease_expires(
    make_guardd: MakeGuardd, etcd: EtcdCluster
) -> None:
    """A node key left by a guardd on another host whose lease is not renewed: the new
    guardd waits for the lease to expire (at most lease_ttl), then takes the name."""
    import aetcd

    async def plant() -> None:
        host, port = etcd.endpoints[0].removeprefix("http://").rsplit(":", 1)
        async with aetcd.Client(host=host, port=int(port)) as client:
            lease = await client.lease(LEASE_TTL)
            value = json.dumps({"scopes": {}, "instance": "x", "host": "elsewhere", "pid": 1})
            await client.put(b"/t/nodes/web-a", value.encode(), lease=lease)

    asyncio.run(plant())
    started = time.monotonic()
    a = node(make_guardd, etcd, "web-a").start()
    assert time.monotonic() - started > 0.5  # it waited for the lease
    assert "held by pid 1 on elsewhere" in a.log()
    wait_until(lambda: fleet_nodes(a).get("web-a", {}).get("shop"), what="a registered")


def test_fleet_wait_counts_a_member_whose_lease_expired_before_the_flag_as_lost(
    make_guardd: MakeGuardd, etcd: EtcdCluster
) -> None:
    """A node cut off (here killed) before the flag is written is still a member: the
    wait names it lost (exit 3) instead of 0; `guardctl forget` drops a dead node."""
    a = node(make_guardd, etcd, "web-a").start()
    b = node(make_guardd, etcd, "web-b").start()
    wait_until(lambda: len(fleet_nodes(a)) == 2, what="two nodes registered")
    assert b.process is not None
    b.process.kill()
    b.process.wait()
    wait_until(lambda: "web-b" not in fleet_nodes(a), timeout=LEASE_TTL * 5, what="b expired")
    result = ctl(a, "status", "--fleet")
    assert "lost" in result.stdout and "web-b" in result.stdout, result.stdout
    result = ctl(a, "on", "shop", "--fleet", "--wait", "--timeout", "20")
    assert result.returncode == 3, result.stdout + result.stderr
    assert "lost" in result.stdout and "web-b" in result.stdout.rsplit("lost", 1)[1]
    result = ctl(a, "forget", "web-a")
    assert result.returncode == 1 and "is live" in result.stderr
    assert ctl(a, "forget", "web-b").returncode == 0
    result = ctl(a, "on", "shop", "--fleet", "--wait", "--timeout", "20")
    assert result.returncode == 0, result.stdout + result.stderr
    code, _ = a.stop()  # a clean stop leaves the membership too
    assert code == 0
    assert ctl(a, "on", "shop", "--fleet", "--wait", "--timeout", "5").returncode == 0


def test_fleet_metrics(make_guardd: MakeGuardd, etcd: EtcdCluster) -> None:
    """/metrics in fleet mode: guardd_fleet_connected 1, and guardd_fleet_nodes counts
    the live nodes per scope and state (one node on, one off); 0 once etcd is gone."""
    port = free_port()
    a = node(make_guardd, etcd, "web-a", http={"listen": [f"127.0.0.1:{port}"]}).start()
    b = node(make_guardd, etcd, "web-b").start()
    wait_until(lambda: len(fleet_nodes(a)) == 2, what="two nodes registered")
    b.flag("shop").touch()

    def samples() -> dict[str, float]:
        text = get(port, "/metrics").text
        return {
            name: float(value)
            for line in text.splitlines()
            if line and not line.startswith("#")
            for name, _, value in [line.rpartition(" ")]
        }

    wait_until(
        lambda: samples().get('guardd_fleet_nodes{scope="shop",state="on"}') == 1.0,
        what="web-b counted on",
    )
    current = samples()
    assert current["guardd_fleet_connected"] == 1.0
    assert current['guardd_fleet_nodes{scope="shop",state="off"}'] == 1.0
    assert current['guardd_fleet_nodes{scope="default",state="off"}'] == 2.0
    etcd.stop()
    wait_until(lambda: samples()["guardd_fleet_connected"] == 0.0, what="etcd seen gone")
