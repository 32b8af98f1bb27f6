"""Fixtures shared by every test: real daemons on short temporary paths."""

from __future__ import annotations

import os
import shutil
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.etcd_helpers import EtcdCluster
from tests.helpers import Guardd, short_tmp


@pytest.fixture(scope="session", autouse=True)
def syslog_sink() -> Iterator[str]:
    """A stand-in syslogd for every guard-run the tests start: skips log one line each,
    and with no /dev/log here they would fall back to stderr. Not under systemd either,
    whatever started the tests. Tests of the trace itself set their own sockets."""
    directory = short_tmp()
    path = str(directory / "log")
    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sink.bind(path)
    sink.settimeout(0.2)
    stop = threading.Event()

    def drain() -> None:
        while not stop.is_set():
            try:
                sink.recv(65536)
            except (TimeoutError, OSError):
                continue

    reader = threading.Thread(target=drain, name="syslog-sink", daemon=True)
    reader.start()
    saved = {name: os.environ.pop(name, None) for name in ("JOURNAL_STREAM", "INVOCATION_ID")}
    os.environ["_GUARDD_SYSLOG_SOCKET"] = path
    yield path
    os.environ.pop("_GUARDD_SYSLOG_SOCKET", None)
    os.environ.update({name: value for name, value in saved.items() if value is not None})
    stop.set()
    reader.join()
    sink.close()
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def tmp_short() -> Iterator[Path]:
    """A short temporary directory (AF_UNIX paths are limited to ~107 bytes)."""
    path = short_tmp()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def make_guardd(tmp_short: Path) -> Iterator[Callable[..., Guardd]]:
    """Build (not start) a guardd on its own directories; every one is killed after."""
    made: list[Guardd] = []

    def factory(settings: dict[str, Any] | None = None, **kwargs: Any) -> Guardd:
        root = tmp_short / f"d{len(made)}"
        root.mkdir()
        daemon = Guardd(root, settings, **kwargs)
        made.append(daemon)
        return daemon

    yield factory
    for daemon in made:
        daemon.close()


@pytest.fixture
def guardd(make_guardd: Callable[..., Guardd]) -> Guardd:
    """A started guardd with the default scope only and no HTTP listener."""
    return make_guardd().start()


@pytest.fixture
def etcd(tmp_short: Path) -> Iterator[EtcdCluster]:
    """A single-member etcd on free loopback ports."""
    cluster = EtcdCluster(tmp_short)
    cluster.start()
    yield cluster
    cluster.close()
