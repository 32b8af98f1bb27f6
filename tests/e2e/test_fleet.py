"""Fleet mode against a real etcd: one switch for several guardd nodes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.etcd_helpers import EtcdCluster
from tests.helpers import Guardd, command, free_port, wait_until
from tests.httpclient import get

MakeGuardd = Callable[..., Guardd]
LEASE_TTL = 2


@pytest.fixture
def etcd(tmp_short: Path) -> Iterator[EtcdCluster]:
    """A single-member etcd on free loopback ports."""
    cluster = EtcdCluster(tmp_short)
    cluster.start()
    yield cluster
    cluster.close()


def node(make_guardd: MakeGuardd, cluster: EtcdCluster, name: str, **extra: Any) -> Guardd:
    settings = {
        "node": name,
        "scopes": {"shop": None},
        "fleet": {"endpoints": cluster.endpoints, "lease_ttl": LEASE_TTL, "prefix": "/t"},
        **extra,
    }
    return make_guardd(settings)


def ctl(daemon: Guardd, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GUARDD_CONFIG": str(daemon.config_path)}
    return subprocess.run(
        [command("guardctl"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


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
    assert state(daemon) == "on"


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
