"""Bad configuration and bad command-line values, through the real programs: a valid
config or exit 2 with one line, never a traceback, whatever the file or option holds.

tests/config/test_config.py already fuzzes the parser in-process; here the subprocess
angle: what an operator sees from ``guardd --check-config``, guardctl and guard-run.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.helpers import command
from tests.robust.support import CRASH_MARKERS

# Every section and key of the config, so that generated files reach the checks of
# each key and not only the "unknown key" error.
SECTIONS: dict[str, list[str]] = {
    "control": ["socket", "mode", "group"],
    "http": [
        "listen",
        "scope",
        "policy",
        "health_path",
        "gate_path",
        "page_status",
        "retry_after",
        "page_template",
        "api_prefixes",
        "header_timeout",
    ],
    "agent": ["listen", "scope", "withdraw_as"],
    "run": ["skip_code"],
    "fleet": ["endpoints", "prefix", "lease_ttl"],
    "bypass": [
        "paths",
        "cidrs",
        "trusted_proxies",
        "secret",
        "secret_file",
        "cookie_ttl",
        "insecure_cookie",
    ],
    "hooks": ["on_enter", "on_exit", "timeout"],
}
TOP_SCALARS = ["lock_dir", "runtime_dir", "node", "poll_interval"]

# Values that are almost right, and values that break naive code: non-finite and
# huge numbers, control characters, YAML's own types.
hostile_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=10**300, max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(
        [
            "30s",
            "1h30m",
            "0.01",
            "99999999999999999999999d",
            "0660",
            "0o777",
            "127.0.0.1:0",
            "[::1]:0",
            ":0",
            "[::1]",
            "withdraw",
            "fleet",
            "default",
            "/",
            "/tmp",
            "/api/",
            "http://127.0.0.1:1",
            "a" * 300,
            "\x00\r\n",
            "(unclosed",
            "10.0.0.0/33",
        ]
    ),
)
hostile_values = st.recursive(
    hostile_scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def config_documents(draw: st.DrawFn) -> dict[str, object]:
    """A config mapping: known sections and keys (and a few unknown ones), hostile values."""
    document: dict[str, object] = {}
    for key in draw(st.lists(st.sampled_from(TOP_SCALARS), max_size=2, unique=True)):
        document[key] = draw(hostile_values)
    for section in draw(st.lists(st.sampled_from(sorted(SECTIONS)), max_size=2, unique=True)):
        keys = draw(st.lists(st.sampled_from(SECTIONS[section]), max_size=3, unique=True))
        document[section] = {key: draw(hostile_values) for key in keys}
    if draw(st.booleans()):
        document["scopes"] = draw(hostile_values)
    if draw(st.integers(0, 9)) == 0:
        document[draw(st.text(max_size=10))] = draw(hostile_values)
    return document


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    """``guardd --check-config --config path``, as an operator runs it."""
    return subprocess.run(
        [command("guardd"), "--check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=30,
        check=False,
    )


def assert_valid_or_one_line(result: subprocess.CompletedProcess[str]) -> None:
    """Exit 0 with the effective config as YAML, or exit 2 with one ``guardd:`` line."""
    for marker in CRASH_MARKERS:
        assert marker not in result.stderr, result.stderr
    if result.returncode == 0:
        assert result.stderr == ""
        assert isinstance(yaml.safe_load(result.stdout), dict)
        return
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert result.stdout == ""
    assert result.stderr.startswith("guardd: ") and result.stderr.count("\n") == 1, result.stderr


FUZZ = settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@FUZZ
@given(document=config_documents())
def test_generated_configs_are_valid_or_exit_2_with_one_line(
    tmp_path: Path, document: dict[str, object]
) -> None:
    """guardd --check-config on generated YAML: the effective config, or exit 2 and one line."""
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(document, allow_unicode=True))
    assert_valid_or_one_line(check_config(path))


@FUZZ
@given(raw=st.binary(max_size=300))
@example(raw=b"\xff\xfe\x00garbage")
@example(raw=b"\x00\x00\x00")
def test_non_yaml_files_are_exit_2_with_one_line(tmp_path: Path, raw: bytes) -> None:
    """guardd --check-config on arbitrary bytes: exit 0 or 2 with one line, never a traceback."""
    path = tmp_path / "config.yaml"
    path.write_bytes(raw)
    assert_valid_or_one_line(check_config(path))


NESTED = "[" * 3000 + "]" * 3000


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("poll_interval: .nan\n", "poll_interval"),
        ("poll_interval: .inf\n", "poll_interval"),
        ("http: {header_timeout: .inf}\n", "http.header_timeout"),
        ("fleet: {lease_ttl: -.inf}\n", "fleet.lease_ttl"),
        ("bypass: {cookie_ttl: .inf}\n", "bypass.cookie_ttl"),
        (f"hooks: {{timeout: {10**400}}}\n", "hooks.timeout"),
        ("hooks: {timeout: 99999999999999999999999d}\n", "hooks.timeout"),
        (f"{NESTED}\n", "nested"),
        (f"http: {{listen: {NESTED}}}\n", "nested"),
        ("a: " + "{b: " * 2000 + "c" + "}" * 2000 + "\n", "nested"),
        ("!!python/object/apply:os.system ['true']\n", "invalid YAML"),
        ("---\na: 1\n---\nb: 2\n", "invalid YAML"),
    ],
)
def test_hostile_config_is_exit_2_with_one_line(tmp_path: Path, text: str, needle: str) -> None:
    """Non-finite or huge durations and deeply nested YAML: exit 2, one line naming the key."""
    path = tmp_path / "config.yaml"
    path.write_text(text)
    result = check_config(path)
    assert_valid_or_one_line(result)
    assert result.returncode == 2
    assert needle in result.stderr
