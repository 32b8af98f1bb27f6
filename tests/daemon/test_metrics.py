"""/metrics: Prometheus text exposition from a real guardd, checked by the real promtool,
only for metrics.allow; and a real Prometheus scraping it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from guardd.answers.http.replies import peer_allowed
from guardd.core.durations import format_time
from tests.helpers import Guardd, free_port, require_tool, stop_process, wait_until
from tests.httpclient import Connection, build_request, get, wait_listening, write_flag

MakeGuardd = Callable[..., Guardd]


def parse_samples(text: str) -> dict[str, float]:
    """``name{labels} value`` lines (comments left out) as a mapping."""
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def serve(make_guardd: MakeGuardd, **settings: Any) -> tuple[Guardd, int]:
    port = free_port()
    daemon = make_guardd(
        {
            "scopes": {"shop": None, "blog": None, "api": None},
            "http": {"listen": [f"127.0.0.1:{port}"], "scope": "shop"},
            **settings,
        }
    ).start()
    wait_listening(port)
    return daemon, port


def scrape(port: int) -> str:
    response = get(port, "/metrics")
    assert response.status == 200, response.text
    assert response.header("content-type") == "text/plain; version=0.0.4; charset=utf-8"
    text: str = response.text
    return text


def test_peer_allowed() -> None:
    """metrics.allow matching: IPv4, IPv6, IPv4-mapped IPv6, junk and no peer."""
    import ipaddress

    loopback = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
    assert peer_allowed("127.0.0.1", loopback) and peer_allowed("::1", loopback)
    assert peer_allowed("::ffff:127.0.0.2", loopback)
    assert not peer_allowed("10.1.2.3", loopback) and not peer_allowed("::2", loopback)
    assert not peer_allowed(None, loopback) and not peer_allowed("nonsense", loopback)


def test_metrics_series_values_and_promtool(make_guardd: MakeGuardd, tmp_short: Path) -> None:
    """Every SPEC series is there with the right values for an overdue scope, a draining
    one, one on via default... and the real `promtool check metrics` accepts the text."""
    promtool = require_tool("promtool")
    daemon, port = serve(make_guardd)
    past = format_time(datetime.now(UTC) - timedelta(minutes=5))
    write_flag(daemon.flag("shop"), {"reason": "upgrade", "until": past})
    lock = daemon.runtime_dir / "api.run"
    job = subprocess.Popen(["flock", "-s", str(lock), "sleep", "30"], start_new_session=True)
    write_flag(daemon.flag("api"), {"reason": "x"})
    try:
        for _ in range(3):
            get(port, "/healthz")
        wait_until(
            lambda: (
                parse_samples(scrape(port)).get('guardd_scope_state{scope="api",state="draining"}')
                == 1.0
            ),
            what="api draining in /metrics",
        )
        text = scrape(port)
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    samples = parse_samples(text)
    assert samples['guardd_scope_maintenance{scope="shop"}'] == 1.0
    assert samples['guardd_scope_maintenance{scope="blog"}'] == 0.0
    assert samples['guardd_scope_state{scope="shop",state="on"}'] == 1.0
    assert samples['guardd_scope_state{scope="shop",state="off"}'] == 0.0
    assert samples['guardd_scope_state{scope="blog",state="off"}'] == 1.0
    assert samples['guardd_scope_mode{mode="full",scope="shop"}'] == 1.0
    assert samples['guardd_scope_jobs{scope="api"}'] == 1.0
    assert samples['guardd_scope_overdue{scope="shop"}'] == 1.0
    assert samples['guardd_scope_overdue{scope="api"}'] == 0.0
    since = samples['guardd_scope_since_timestamp_seconds{scope="shop"}']
    assert abs(since - time.time()) < 60
    assert 'guardd_scope_since_timestamp_seconds{scope="blog"}' not in samples
    assert samples['guardd_scope_transitions_total{scope="shop",to="on"}'] == 1.0
    assert samples['guardd_scope_transitions_total{scope="api",to="draining"}'] == 1.0
    assert samples['guardd_http_requests_total{answer="health"}'] == 3.0
    assert samples["guardd_fleet_connected"] == 0.0
    assert samples['guardd_build_info{version="0.1.0"}'] == 1.0
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds"):
        assert samples[name] > 0
    assert "# TYPE guardd_scope_transitions_total counter" in text


def test_metrics_name_the_mode_in_force(make_guardd: MakeGuardd) -> None:
    """A scope in a partial mode: guardd_scope_mode{mode="read-only"} 1 and full 0;
    a scope in full maintenance: full 1; a scope off: full 0 and no other mode."""
    daemon, port = serve(make_guardd)
    write_flag(daemon.flag("shop"), {"reason": "checkout paused", "mode": "read-only"})
    write_flag(daemon.flag("blog"), {"reason": "theme"})
    wait_until(
        lambda: (
            parse_samples(scrape(port)).get('guardd_scope_mode{mode="read-only",scope="shop"}')
            == 1.0
        ),
        what="shop's mode in /metrics",
    )
    samples = parse_samples(scrape(port))
    assert samples['guardd_scope_mode{mode="full",scope="shop"}'] == 0.0
    assert samples['guardd_scope_mode{mode="full",scope="blog"}'] == 1.0
    assert samples['guardd_scope_mode{mode="full",scope="api"}'] == 0.0
    assert not any('scope="api"' in key and "read-only" in key for key in samples)


def test_metrics_counts_each_answer_kind(make_guardd: MakeGuardd) -> None:
    """guardd_http_requests_total counts answers per kind: page, JSON, health, 404."""
    _daemon, port = serve(make_guardd)
    before = parse_samples(scrape(port))
    get(port, "/")
    get(port, "/api/orders")
    get(port, "/maintenance.json")
    get(port, "/.guardd/nothing")
    after = parse_samples(scrape(port))
    for label in ("page", "page_json", "maintenance_json", "not_found"):
        key = f'guardd_http_requests_total{{answer="{label}"}}'
        assert after[key] - before[key] == 1.0, label
    assert after['guardd_http_requests_total{answer="metrics"}'] == 2.0


def test_metrics_pipelined_keeps_order_and_the_connection(make_guardd: MakeGuardd) -> None:
    """/metrics (rendered off the loop) in the middle of pipelined requests: every
    answer comes in request order, HEAD has no body, a POST body after it is skipped,
    and the connection stays usable; Connection: close closes after the metrics."""
    _daemon, port = serve(make_guardd)
    with Connection(port) as conn:
        conn.send(
            build_request("/healthz")
            + build_request("/metrics")
            + build_request("/metrics", method="HEAD")
            + build_request("/metrics", method="POST", body=b"x" * 5000)
            + build_request("/maintenance.json")
        )
        assert conn.read_response().json()["status"] == "pass"
        full = conn.read_response()
        assert full.status == 200 and b"guardd_scope_maintenance" in full.body
        head = conn.read_response(head_only=True)
        assert head.status == 200 and int(head.header("content-length") or 0) > 0
        posted = conn.read_response()
        assert posted.status == 200 and b"guardd_build_info" in posted.body
        assert conn.read_response().json()["state"] == "off"
        assert conn.request("/healthz").status == 200
        conn.send(build_request("/metrics", headers={"Connection": "close"}))
        last = conn.read_response()
        assert last.status == 200 and last.header("connection") == "close"
        assert conn.wait_closed() == b""


def test_metrics_only_for_allowed_addresses(make_guardd: MakeGuardd) -> None:
    """A client outside metrics.allow gets the ordinary answer for /metrics (here the
    maintenance page), never the metrics."""
    daemon, port = serve(make_guardd, metrics={"allow": ["10.0.0.0/8"]})
    write_flag(daemon.flag("shop"), {"reason": "upgrade"})
    wait_until(lambda: get(port, "/healthz").status == 503, what="shop on")
    response = get(port, "/metrics")
    assert response.status == 503 and response.header("guard-maintenance") == "shop"
    assert "guardd_" not in response.text and "Down for maintenance" in response.text


def test_metrics_over_ipv6_loopback(make_guardd: MakeGuardd) -> None:
    """The default metrics.allow covers ::1 too."""
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    port = free_port("::1")
    make_guardd({"http": {"listen": [f"[::1]:{port}"]}}).start()
    wait_until(lambda: _v6_get(port).startswith(b"HTTP/1.1 200"), what="/metrics over ::1")
    assert b"guardd_scope_maintenance" in _v6_get(port)


def _v6_get(port: int) -> bytes:
    try:
        with socket.create_connection(("::1", port), timeout=5) as conn:
            conn.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
            return data
    except OSError:
        return b""


def test_real_prometheus_scrapes_guardd(make_guardd: MakeGuardd, tmp_short: Path) -> None:
    """A real Prometheus (loopback, temp config and storage) scrapes /metrics and its
    query API returns guardd's series: shop in maintenance, default not."""
    binary = require_tool("prometheus")
    daemon, port = serve(make_guardd)
    write_flag(daemon.flag("shop"), {"reason": "upgrade"})
    web = free_port()
    config = tmp_short / "prometheus.yml"
    config.write_text(
        json.dumps(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [
                    {"job_name": "guardd", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
                ],
            }
        )
    )
    with open(tmp_short / "prometheus.log", "wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_short / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{web}",
            ],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
    try:

        def query(expr: str) -> list[Any]:
            url = f"http://127.0.0.1:{web}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
            try:
                with urllib.request.urlopen(url, timeout=5) as reply:
                    result: list[Any] = json.load(reply)["data"]["result"]
                    return result
            except OSError:
                return []

        found = wait_until(
            lambda: query('guardd_scope_maintenance{scope="shop"}'),
            timeout=20,
            interval=0.5,
            what="Prometheus to scrape guardd",
        )
        assert found[0]["value"][1] == "1"
        assert query('guardd_scope_maintenance{scope="default"}')[0]["value"][1] == "0"
        assert query('up{job="guardd"}')[0]["value"][1] == "1"
    finally:
        stop_process(process)
