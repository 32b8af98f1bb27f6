"""The docs say what the programs do: README's sample lines and commands, and
config.example.yaml's comments, checked against a real guardd."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

from tests.helpers import Guardd, free_port

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()
EXAMPLE = (ROOT / "config.example.yaml").read_text()


def test_config_example_tells_the_truth_about_fleet() -> None:
    """config.example.yaml no longer says fleet mode is unavailable, and its
    http.policy comment names all three policies (fleet included)."""
    assert "not available in this version" not in EXAMPLE
    policy = EXAMPLE[EXAMPLE.index("  policy:") : EXAMPLE.index("  health_path:")]
    for name in ("withdraw:", "stay:", "fleet:"):
        assert name in policy, name
    assert "metrics:" in EXAMPLE and '"127.0.0.0/8"' in EXAMPLE


def test_readme_ready_line_is_the_real_one(make_guardd: Callable[..., Guardd]) -> None:
    """README's sample ready line has the shape of the line a real guardd logs (node,
    paths, port and timestamp aside)."""
    sample = re.search(r"^\S+ \S+ INFO guardd: guardd .* ready .*$", README, re.MULTILINE)
    assert sample is not None, "README has no sample ready line"
    port = free_port()
    daemon = make_guardd({"http": {"listen": [f"127.0.0.1:{port}"]}}).start()
    real = next(line for line in daemon.log().splitlines() if " ready (" in line)

    def shape(line: str) -> str:
        line = re.sub(r"^\S+ \S+ ", "TIME ", line)
        line = re.sub(r"\(node [^,]+, [^)]+\)", "(node N, SOURCE)", line)
        line = re.sub(r"/\S+?(?=[,;]|$)", "PATH", line)
        return re.sub(r"127\.0\.0\.1:\d+", "ADDRESS", line)

    assert shape(sample.group(0)) == shape(real)


def test_readme_socket_one_liner_works(make_guardd: Callable[..., Guardd]) -> None:
    """The Python one-liner README gives instead of socat gets the status reply."""
    daemon = make_guardd().start()
    line = next(
        line for line in README.splitlines() if line.startswith("python3 -c 'import socket")
    )
    script = line[len("python3 -c '") : -1].replace("/run/guardd/guardd.sock", daemon.socket_path)
    result = subprocess.run(
        ["python3", "-c", script], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert reply["ok"] is True and "default" in reply["scopes"]
    assert "socat -" not in README and "UNIX-CONNECT" not in README
