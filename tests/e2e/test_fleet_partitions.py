"""Fleet mode under network partitions: a three-member etcd and three guardd nodes,
each in a network namespace this test creates (and removes), joined by a bridge.

Addresses (10.213.0.0/24) exist only inside those namespaces: nothing here routes
anywhere else. A sampler in the hub namespace asks every node's /healthz and agent
port every 10 ms; each node runs a guard-run job stream; every scenario checks:
never a false "drained" (``on --fleet --wait`` exit 0 while a job runs), nodes
converge after the cut heals within lease_ttl plus backoff, and reports the dark
and hidden time it measured (docs/faults.md, "Fleet under partitions").
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Guardd, command, require_tool, wait_until

pytestmark = pytest.mark.heavy

LEASE_TTL = 2
BACKOFF_MAX = 10.0  # guardd.daemon.fleet_agent.BACKOFF_MAX
CONVERGE_BOUND = LEASE_TTL + BACKOFF_MAX + 3.0  # + slack for a loaded 2-core machine
SUBNET = "10.213.0"
ETCD = {"e0": f"{SUBNET}.1", "e1": f"{SUBNET}.2", "e2": f"{SUBNET}.3"}
NODES = {"n0": f"{SUBNET}.11", "n1": f"{SUBNET}.12", "n2": f"{SUBNET}.13"}
HUB_ADDR = f"{SUBNET}.254"
SAMPLER = Path(__file__).with_name("fleet_sampler.py")
RESULTS: list[dict[str, Any]] = []


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=20, check=check)


class Net:
    """Namespaces hub (bridge), e0-e2 (etcd) and n0-n2 (guardd), one veth each."""

    def __init__(self) -> None:
        self.tag = f"gdp{os.getpid() % 100000}"
        self.roles = [*ETCD, *NODES]
        self.created: list[str] = []

    def ns(self, role: str) -> str:
        return f"{self.tag}{role}"

    def setup(self) -> None:
        hub = self.ns("hub")
        sh("ip", "netns", "add", hub)
        self.created.append(hub)
        sh("ip", "-n", hub, "link", "set", "lo", "up")
        sh("ip", "-n", hub, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", hub, "link", "set", "br0", "up")
        sh("ip", "-n", hub, "addr", "add", f"{HUB_ADDR}/24", "dev", "br0")
        for role in self.roles:
            name = self.ns(role)
            addr = {**ETCD, **NODES}[role]
            sh("ip", "netns", "add", name)
            self.created.append(name)
            sh("ip", "-n", name, "link", "set", "lo", "up")
            sh("ip", "-n", hub, "link", "add", f"v{role}", "type", "veth", "peer", "eth0")
            sh("ip", "-n", hub, "link", "set", "eth0", "netns", name)
            sh("ip", "-n", hub, "link", "set", f"v{role}", "master", "br0", "up")
            sh("ip", "-n", name, "addr", "add", f"{addr}/24", "dev", "eth0")
            sh("ip", "-n", name, "link", "set", "eth0", "up")

    def teardown(self) -> None:
        for name in reversed(self.created):
            sh("ip", "netns", "del", name, check=False)

    def exec(self, role: str, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns(role), *argv]

    def cut(self, role: str, peers: list[str]) -> None:
        """Drop every packet between ``role`` and ``peers`` (inside role's namespace)."""
        addrs = ", ".join({**ETCD, **NODES}[p] for p in peers)
        rules = (
            "table inet gdcut {\n"
            f"  chain in {{ type filter hook input priority 0; ip saddr {{ {addrs} }} drop; }}\n"
            f"  chain out {{ type filter hook output priority 0; ip daddr {{ {addrs} }} drop; }}\n"
            "}\n"
        )
        subprocess.run(
            self.exec(role, "nft", "-f", "-"), input=rules, text=True, check=True, timeout=10
        )

    def heal(self, role: str) -> None:
        sh(*self.exec(role, "nft", "delete", "table", "inet", "gdcut"), check=False)

    def degrade(self, role: str, delay_ms: int, loss_percent: int) -> str:
        """Delay and loss on ``role``'s link: tc netem where the kernel has it; else
        (CONFIG_NET_SCH_NETEM unset, as on this project's machines) loss alone on its
        traffic with etcd, with nft's random numbers (the sampler's probes are spared).
        Returns what was applied."""
        netem = sh(
            *self.exec(role, "tc", "qdisc", "replace", "dev", "eth0", "root", "netem"),
            *("delay", f"{delay_ms}ms", "loss", f"{loss_percent}%"),
            check=False,
        )
        if netem.returncode == 0:
            return f"netem {delay_ms} ms delay, {loss_percent}% loss"
        etcd = ", ".join(ETCD.values())
        rules = (
            "table inet gdloss {\n"
            "  chain in { type filter hook input priority 0;"
            f" ip saddr {{ {etcd} }} numgen random mod 100 < {loss_percent} drop; }}\n"
            "  chain out { type filter hook output priority 0;"
            f" ip daddr {{ {etcd} }} numgen random mod 100 < {loss_percent} drop; }}\n"
            "}\n"
        )
        subprocess.run(
            self.exec(role, "nft", "-f", "-"), input=rules, text=True, check=True, timeout=10
        )
        return f"{loss_percent}% loss to and from etcd (nft; this kernel has no netem: no delay)"

    def clear_degrade(self, role: str) -> None:
        sh(*self.exec(role, "tc", "qdisc", "del", "dev", "eth0", "root"), check=False)
        sh(*self.exec(role, "nft", "delete", "table", "inet", "gdloss"), check=False)

    def hub_python(self, code: str, timeout: float = 10) -> str:
        result = subprocess.run(
            self.exec("hub", sys.executable, "-c", code),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        return result.stdout


class Etcd3:
    """Three etcd members, one per namespace."""

    def __init__(self, net: Net, root: Path) -> None:
        self.binary = require_tool("etcd")
        self.net = net
        self.root = root
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, role: str, *, fresh: bool) -> None:
        addr = ETCD[role]
        data = self.root / f"etcd-{role}"
        cluster = ",".join(f"{r}=http://{a}:2380" for r, a in ETCD.items())
        with open(self.root / f"etcd-{role}.log", "ab") as log:
            self.processes[role] = subprocess.Popen(
                self.net.exec(
                    role,
                    self.binary,
                    "--name",
                    role,
                    "--data-dir",
                    str(data),
                    "--listen-client-urls",
                    f"http://{addr}:2379",
                    "--advertise-client-urls",
                    f"http://{addr}:2379",
                    "--listen-peer-urls",
                    f"http://{addr}:2380",
                    "--initial-advertise-peer-urls",
                    f"http://{addr}:2380",
                    "--initial-cluster",
                    cluster,
                    "--initial-cluster-state",
                    "new" if fresh else "existing",
                    "--initial-cluster-token",
                    self.net.tag,
                    "--heartbeat-interval",
                    "50",
                    "--election-timeout",
                    "500",
                ),
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )

    def kill(self, role: str) -> None:
        process = self.processes.pop(role, None)
        if process is not None:
            process.kill()
            process.wait()

    def wait_healthy(self, timeout: float = 30.0) -> None:
        code = (
            "import urllib.request,sys\n"
            "ok=0\n"
            f"for a in {list(ETCD.values())!r}:\n"
            "  try:\n"
            "    ok+=b'\"true\"' in urllib.request.urlopen(f'http://{a}:2379/health',"
            "timeout=1).read()\n"
            "  except Exception: pass\n"
            "print(ok)\n"
        )
        wait_until(
            lambda: self.net.hub_python(code).strip() == str(len(self.processes)),
            timeout=timeout,
            what="etcd members healthy",
        )

    def leader(self) -> str:
        """The role of the current leader (asked through the JSON gateway)."""
        code = (
            "import urllib.request,json\n"
            f"for r,a in {ETCD!r}.items():\n"
            "  try:\n"
            "    s=json.loads(urllib.request.urlopen(urllib.request.Request("
            "f'http://{a}:2379/v3/maintenance/status',data=b'{}'),timeout=1).read())\n"
            "  except Exception: continue\n"
            "  if s.get('leader')==s['header']['member_id']: print(r)\n"
        )
        found = self.net.hub_python(code).split()
        assert found, "no etcd leader"
        return found[0]

    def close(self) -> None:
        for role in list(self.processes):
            self.kill(role)


class NsGuardd(Guardd):
    """A guardd started inside a namespace (its control socket is a path: reachable)."""

    def __init__(self, root: Path, settings: dict[str, Any], netns: list[str]) -> None:
        super().__init__(root, settings)
        self.netns = netns

    def start(self, *, wait_ready: bool = True) -> NsGuardd:
        seen = len(self.notify.collect())
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [*self.netns, command("guardd"), "--config", str(self.config_path)],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        if wait_ready:
            self.notify.wait_for("READY=1", timeout=30, after=seen)
        return self


@dataclass
class Fleet:
    net: Net
    etcd: Etcd3
    nodes: dict[str, NsGuardd]
    root: Path
    ctl_config: Path
    jobs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.net.exec("hub", command("guardctl"), *args),
            env={**os.environ, "GUARDD_CONFIG": str(self.ctl_config)},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def state(self, role: str) -> str:
        try:
            return str(self.nodes[role].request({"op": "status"})["scopes"]["shop"]["state"])
        except (OSError, KeyError, ValueError):
            return "?"

    def start_jobs(self, tag: str) -> dict[str, Path]:
        """A guard-run job stream per node (0.25 s jobs, back to back, bounded)."""
        logs = {}
        for role, daemon in self.nodes.items():
            log = self.root / f"jobs-{tag}-{role}.log"
            log.write_text("")
            script = (
                f"for i in $(seq 1 400); do {command('guard-run')} --scope shop --when-on skip"
                f" -- sh -c 'echo S $(date +%s.%N) >> {log}; sleep 0.25;"
                f" echo E $(date +%s.%N) >> {log}'; sleep 0.02; done"
            )
            self.jobs[role] = subprocess.Popen(
                ["sh", "-c", script],
                env={**os.environ, "GUARDD_CONFIG": str(daemon.config_path)},
                start_new_session=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            logs[role] = log
        return logs

    def stop_jobs(self) -> None:
        for process in self.jobs.values():
            with_suppressed_kill(process)
        self.jobs.clear()

    def converge(self, want: str, roles: list[str] | None = None) -> float:
        """Seconds until every node (or ``roles``) reports ``want`` for shop."""
        started = time.monotonic()
        targets = roles or list(self.nodes)
        accepted = {"on"} if want == "on" else {want}
        wait_until(
            lambda: all(self.state(r) in accepted for r in targets),
            timeout=CONVERGE_BOUND * 2,
            what=f"nodes {targets} {want}",
        )
        return time.monotonic() - started


def with_suppressed_kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait()


def job_intervals(logs: dict[str, Path]) -> list[tuple[str, float, float]]:
    """(node, start, end) of every job; a job still running ends at +inf."""
    out = []
    for role, log in logs.items():
        start: float | None = None
        for line in log.read_text().splitlines():
            kind, _, stamp = line.partition(" ")
            if kind == "S":
                start = float(stamp)
            elif kind == "E" and start is not None:
                out.append((role, start, float(stamp)))
                start = None
        if start is not None:
            out.append((role, start, float("inf")))
    return out


def false_drains(logs: dict[str, Path], drained_at: float, until: float) -> list[Any]:
    """Jobs running at the moment a wait said drained, or started after it while the
    flag stayed on (until ``until``)."""
    return [(role, s, e) for role, s, e in job_intervals(logs) if e > drained_at and s < until]


def analyse(samples: Path, start: float, end: float) -> dict[str, Any]:
    """What the sampler saw between ``start`` and ``end``: dark ms (no node answers 200
    though every node answered), unanswered ms (no 200 because some node did not
    answer within 0.5 s: an overloaded machine, not a decision), hidden ms (a node in
    maintenance answers 200 while another in service answers 200), the longest dark
    stretch and its first ticks."""
    ticks = []
    for line in samples.read_text().splitlines():
        try:
            tick = json.loads(line)
        except ValueError:
            continue
        if start <= tick["t"] <= end:
            ticks.append(tick)
    dark = unanswered = hidden = longest = run = 0.0
    dark_ticks = []
    for here, after in itertools.pairwise(ticks):
        span = (after["t"] - here["t"]) * 1000
        answers = [here[r] for r in NODES]
        serving = [a for a in answers if a[0] == 200]
        if serving:
            run = 0.0
        elif all(a[0] for a in answers):
            dark_ticks.append(here)
            dark += span
            run += span
            longest = max(longest, run)
        else:
            unanswered += span
        if any(a[1] for a in serving) and any(a[1] is False for a in serving):
            hidden += span
    return {
        "dark_ms": round(dark),
        "longest_dark_ms": round(longest),
        "unanswered_ms": round(unanswered),
        "hidden_ms": round(hidden),
        "dark_ticks": dark_ticks[:5],
        "samples": len(ticks),
    }


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """The namespaces, etcd cluster, three nodes and the sampler, for every scenario."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    for tool in ("ip", "nft", "tc", "etcd"):
        require_tool(tool)
    root = Path(
        subprocess.run(
            ["mktemp", "-d", "/tmp/gdp-XXXXXX"], capture_output=True, text=True, check=True
        ).stdout.strip()
    )
    net = Net()
    etcd = Etcd3(net, root)
    nodes: dict[str, NsGuardd] = {}
    sampler: subprocess.Popen[bytes] | None = None
    try:
        net.setup()
        for role in ETCD:
            etcd.start(role, fresh=True)
        etcd.wait_healthy()
        endpoints = [f"http://{a}:2379" for a in ETCD.values()]
        for i, (role, addr) in enumerate(NODES.items()):
            (root / role).mkdir()
            daemon = NsGuardd(
                root / role,
                {
                    "node": role,
                    "scopes": {"shop": None},
                    "http": {"listen": [f"{addr}:8080"], "policy": "fleet", "scope": "shop"},
                    "agent": {"listen": [f"{addr}:8090"], "scope": "shop"},
                    "fleet": {
                        "endpoints": endpoints[i:] + endpoints[:i],  # node i prefers e<i>
                        "lease_ttl": LEASE_TTL,
                        "prefix": "/p",
                    },
                },
                net.exec(role),
            )
            nodes[role] = daemon.start()
        ctl_config = root / "ctl.yaml"
        ctl_config.write_text(
            json.dumps(
                {
                    "fleet": {"endpoints": endpoints, "prefix": "/p"},
                    "scopes": ["shop"],
                    "lock_dir": str(root / "ctl-lock"),
                    "runtime_dir": str(root / "ctl-run"),
                }
            )
        )
        result = Fleet(net, etcd, nodes, root, ctl_config)
        wait_until(
            lambda: len(json.loads(result.ctl("status", "--fleet", "--json").stdout)["nodes"]) == 3,
            timeout=30,
            what="three nodes registered",
        )
        samples = root / "samples.jsonl"
        sampler = subprocess.Popen(
            net.exec(
                "hub",
                sys.executable,
                str(SAMPLER),
                str(samples),
                *(f"{r}={a}" for r, a in NODES.items()),
                "--seconds",
                "400",
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: samples.exists() and samples.stat().st_size > 0, what="sampling")
        yield result
    finally:
        if sampler is not None:
            sampler.terminate()
            try:
                sampler.wait(timeout=5)
            except subprocess.TimeoutExpired:
                sampler.kill()
                sampler.wait()
        for daemon in nodes.values():
            daemon.close()
        etcd.close()
        net.teardown()
        out = os.environ.get("GUARDD_PARTITION_RESULTS")
        if out:
            Path(out).write_text(json.dumps(RESULTS, indent=1))
        subprocess.run(["rm", "-rf", str(root)], check=False)


def record(fleet: Fleet, name: str, start: float, **fields: Any) -> None:
    """Keep the scenario's figures; no dark tick is allowed (never dark)."""
    seen = analyse(fleet.root / "samples.jsonl", start, time.time())
    RESULTS.append({"scenario": name, **fields, **seen})
    print(RESULTS[-1])
    assert seen["samples"] > 50, "the sampler stopped sampling"
    assert not seen["dark_ticks"], f"every node withdrew at once: {seen['dark_ticks']}"


def reset(fleet: Fleet) -> None:
    """Back to: no flag, every link healed, every node off."""
    for role in [*ETCD, *NODES]:
        fleet.net.heal(role)
        fleet.net.clear_degrade(role)
    fleet.stop_jobs()
    assert fleet.ctl("off", "shop", "--fleet").returncode == 0
    fleet.converge("off")
    wait_until(  # every node registered again, so the next scenario starts whole
        lambda: (
            set(json.loads(fleet.ctl("status", "--fleet", "--json").stdout)["nodes"]) == set(NODES)
        ),
        timeout=CONVERGE_BOUND * 2,
        what="every node registered",
    )


def wait_in_background(fleet: Fleet, timeout: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        fleet.net.exec(
            "hub", command("guardctl"), "on", "shop", "--fleet", "--wait", "--timeout", str(timeout)
        ),
        env={**os.environ, "GUARDD_CONFIG": str(fleet.ctl_config)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish_wait(
    fleet: Fleet, waiter: subprocess.Popen[str], logs: dict[str, Path], hold: float = 1.0
) -> tuple[int, str, list[Any]]:
    """The waiter's exit code and output, and, when it said drained (0), the jobs that
    ran then or started within ``hold`` s after (the flag still on): false drains."""
    out, err = waiter.communicate(timeout=60)
    done = time.time()
    time.sleep(hold)
    if waiter.returncode != 0:
        return waiter.returncode, out + err, []  # no "drained" claimed
    return 0, out + err, false_drains(logs, done, time.time())


def test_one_node_cut_off_from_etcd(fleet: Fleet) -> None:
    """n2 cut off from every etcd member: the wait names it lost (exit 3), never 0 while
    its jobs run; after healing n2 takes the flag within lease_ttl + backoff."""
    start = time.time()
    logs = fleet.start_jobs("cut1")
    fleet.net.cut("n2", list(ETCD))
    time.sleep(0.5)
    code, out, wrong = finish_wait(fleet, wait_in_background(fleet, 15), logs)
    assert not wrong, f"false drain: {wrong}\n{out}"
    assert code == 3 and "n2" in out, out
    fleet.converge("on", ["n0", "n1"])
    assert fleet.state("n2") == "off"  # cut off: it cannot know
    healed = time.monotonic()
    fleet.net.heal("n2")
    fleet.converge("on", ["n2"])
    convergence = time.monotonic() - healed
    assert convergence <= CONVERGE_BOUND
    record(fleet, "one node cut off from etcd", start, wait_exit=code, converge_s=convergence)
    reset(fleet)


def test_etcd_minority_cut_off_with_a_node(fleet: Fleet) -> None:
    """e2 and n2 (which prefers e2) cut off from the rest: the majority flips, the wait
    names n2 lost; after healing everything converges."""
    start = time.time()
    logs = fleet.start_jobs("minority")
    fleet.net.cut("e2", ["e0", "e1", "n0", "n1"])
    fleet.net.cut("n2", ["e0", "e1"])
    time.sleep(0.5)
    code, out, wrong = finish_wait(fleet, wait_in_background(fleet, 15), logs)
    assert not wrong, f"false drain: {wrong}\n{out}"
    assert code == 3 and "n2" in out, out
    fleet.converge("on", ["n0", "n1"])
    healed = time.monotonic()
    fleet.net.heal("e2")
    fleet.net.heal("n2")
    fleet.converge("on")
    convergence = time.monotonic() - healed
    assert convergence <= CONVERGE_BOUND
    record(
        fleet, "etcd minority cut off with a node", start, wait_exit=code, converge_s=convergence
    )
    reset(fleet)


def test_cut_during_fleet_wait(fleet: Fleet) -> None:
    """n1 cut off while `on --fleet --wait` runs: never 0 while a job runs anywhere."""
    start = time.time()
    logs = fleet.start_jobs("during")
    waiter = wait_in_background(fleet, 15)
    time.sleep(0.1)
    fleet.net.cut("n1", list(ETCD))
    code, out, wrong = finish_wait(fleet, waiter, logs)
    assert not wrong, f"false drain: {wrong}\n{out}"
    assert code in (0, 3), out
    healed = time.monotonic()
    fleet.net.heal("n1")
    fleet.converge("on")
    convergence = time.monotonic() - healed
    assert convergence <= CONVERGE_BOUND
    record(fleet, "cut during on --fleet --wait", start, wait_exit=code, converge_s=convergence)
    reset(fleet)


def test_cut_heals_after_the_flag_went_off(fleet: Fleet) -> None:
    """n0 cut off, flag on then off meanwhile: after healing n0 ends off (nothing lost)."""
    start = time.time()
    assert fleet.ctl("on", "shop", "--fleet").returncode == 0
    fleet.converge("on")
    fleet.net.cut("n0", list(ETCD))
    time.sleep(0.3)
    assert fleet.ctl("off", "shop", "--fleet").returncode == 0
    fleet.converge("off", ["n1", "n2"])
    time.sleep(LEASE_TTL + 1)  # n0's lease expires meanwhile
    assert fleet.state("n0") == "on"  # frozen: the last view it had
    healed = time.monotonic()
    fleet.net.heal("n0")
    fleet.converge("off")
    convergence = time.monotonic() - healed
    assert convergence <= CONVERGE_BOUND
    record(fleet, "a cut healing (flag went off meanwhile)", start, converge_s=convergence)
    reset(fleet)


def test_etcd_leader_loss_during_a_flip(fleet: Fleet) -> None:
    """The etcd leader killed right after the flag is written: every node flips, the
    wait returns 0 (after a new election), and no job runs past it."""
    start = time.time()
    logs = fleet.start_jobs("leader")
    leader = fleet.etcd.leader()
    waiter = wait_in_background(fleet, 20)
    time.sleep(0.05)
    fleet.etcd.kill(leader)
    code, out, wrong = finish_wait(fleet, waiter, logs)
    assert not wrong, f"false drain: {wrong}\n{out}"
    flipped = fleet.converge("on")
    fleet.etcd.start(leader, fresh=False)
    fleet.etcd.wait_healthy()
    record(
        fleet,
        f"etcd leader ({leader}) lost during a flip",
        start,
        wait_exit=code,
        converge_s=flipped,
    )
    assert code in (0, 3), out
    reset(fleet)


def test_slow_lossy_links_during_a_flip(fleet: Fleet) -> None:
    """100 ms delay (where netem exists) and 5% loss on every node's link: the flip
    completes, the wait returns 0, no false drain."""
    start = time.time()
    logs = fleet.start_jobs("lossy")
    applied = ""
    for role in NODES:
        applied = fleet.net.degrade(role, 100, 5)
    began = time.monotonic()
    code, out, wrong = finish_wait(fleet, wait_in_background(fleet, 20), logs)
    assert not wrong, f"false drain: {wrong}\n{out}"
    fleet.converge("on")
    took = time.monotonic() - began
    record(fleet, applied + " on every node", start, wait_exit=code, converge_s=took)
    assert code == 0, out
    reset(fleet)
