"""A real etcd (Debian's etcd-server) on loopback ports, for the fleet tests."""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

from tests.helpers import free_port, require_tool


class EtcdCluster:
    """One or more etcd members on 127.0.0.1, each in its own data directory."""

    def __init__(self, root: Path, members: int = 1) -> None:
        self.binary = require_tool("etcd")
        self.root = root
        self.names = [f"m{i}" for i in range(members)]
        self.client_ports = {name: free_port() for name in self.names}
        self.peer_ports = {name: free_port() for name in self.names}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.initial_cluster = ",".join(
            f"{name}=http://127.0.0.1:{self.peer_ports[name]}" for name in self.names
        )

    @property
    def endpoints(self) -> list[str]:
        return [f"http://127.0.0.1:{self.client_ports[name]}" for name in self.names]

    def start(self, name: str | None = None, *, fresh: bool = True) -> None:
        """Start every member (or one, keeping its data when ``fresh`` is False)."""
        for member in [name] if name else self.names:
            data = self.root / f"etcd-{member}"
            if fresh and member not in self.processes:
                shutil.rmtree(data, ignore_errors=True)
            client = f"http://127.0.0.1:{self.client_ports[member]}"
            peer = f"http://127.0.0.1:{self.peer_ports[member]}"
            with open(self.root / f"etcd-{member}.log", "ab") as log:
                self.processes[member] = subprocess.Popen(
                    [
                        self.binary,
                        "--name",
                        member,
                        "--data-dir",
                        str(data),
                        "--listen-client-urls",
                        client,
                        "--advertise-client-urls",
                        client,
                        "--listen-peer-urls",
                        peer,
                        "--initial-advertise-peer-urls",
                        peer,
                        "--initial-cluster",
                        self.initial_cluster,
                        "--initial-cluster-state",
                        "new",
                        "--initial-cluster-token",
                        "guardd-test",
                        "--heartbeat-interval",
                        "50",
                        "--election-timeout",
                        "500",
                    ],
                    stdout=log,
                    stderr=log,
                    stdin=subprocess.DEVNULL,
                )
        self.wait_healthy(name)

    def wait_healthy(self, name: str | None = None, timeout: float = 30.0) -> None:
        """Until each (or one) member answers /health with a leader."""
        deadline = time.monotonic() + timeout
        for member in [name] if name else self.names:
            url = f"http://127.0.0.1:{self.client_ports[member]}/health"
            while True:
                if _healthy(url):
                    break
                if time.monotonic() > deadline:
                    raise AssertionError(f"etcd member {member} never became healthy")
                time.sleep(0.1)

    def stop(self, name: str | None = None) -> None:
        """Kill every member (or one)."""
        for member in [name] if name else list(self.processes):
            process = self.processes.pop(member, None)
            if process is not None:
                process.kill()
                process.wait()

    def close(self) -> None:
        self.stop()


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return b'"true"' in response.read()
    except (OSError, ValueError):
        return False
