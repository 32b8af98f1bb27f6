"""Packaging: the sdist carries what it should, the wheel built from it installs into a
fresh venv, and the three commands work there, guard-run without re or asyncio."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

import guardd

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.heavy, pytest.mark.timeout(900)]  # builds and installs: minutes


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``python -m build``: the sdist, and the wheel built from that sdist."""
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return out


@pytest.fixture(scope="module")
def installed(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel installed (its dependencies from the index)."""
    env_dir = tmp_path_factory.mktemp("venv")
    venv.create(env_dir, with_pip=True)
    [wheel] = dist.glob("*.whl")
    subprocess.run(
        [str(env_dir / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return env_dir / "bin"


def test_version_is_written_once(dist: Path) -> None:
    """The built files carry guardd.__version__ (pyproject reads it from there)."""
    assert (dist / f"guardd-{guardd.__version__}.tar.gz").exists()
    assert list(dist.glob(f"guardd-{guardd.__version__}-py3-none-any.whl"))


def test_sdist_carries_tests_docs_units_examples_and_bench(dist: Path) -> None:
    """The sdist has the tests, docs, systemd units, examples, bench, sample config and
    the license, and no compiled files."""
    [sdist] = dist.glob("*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    for wanted in (
        "LICENSE",
        "config.example.yaml",
        "tests/core/test_flag.py",
        "tests/e2e/test_drain.py",
        "docs/guard-run.md",
        "systemd/guardd.service",
        "examples/haproxy.cfg",
        "bench/run.py",
        "bin/guard-run",
        "guardd/answers/assets/page.js",
    ):
        assert wanted in names, wanted
    assert not [n for n in names if n.endswith(".pyc") or "__pycache__" in n]


def test_wheel_has_the_page_assets_license_and_guard_run(dist: Path) -> None:
    """Package data (the page's HTML/CSS/JS, py.typed), the license and the plain
    guard-run script are in the wheel; the license metadata is the SPDX expression."""
    [wheel] = dist.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read(f"guardd-{guardd.__version__}.dist-info/METADATA").decode()
    for asset in ("document.html", "maintenance.html", "outage.html", "page.css", "page.js"):
        assert f"guardd/answers/assets/{asset}" in names
    assert "guardd/py.typed" in names
    assert f"guardd-{guardd.__version__}.data/scripts/guard-run" in names
    assert f"guardd-{guardd.__version__}.dist-info/licenses/LICENSE" in names
    assert "License-Expression: MIT" in metadata.splitlines()


def test_installed_commands_work(installed: Path, tmp_path: Path) -> None:
    """guardd --check-config, guardctl --help and guard-run --check run from the wheel,
    and the installed page renders from its packaged assets."""
    config = tmp_path / "config.yaml"
    config.write_text(f"lock_dir: {tmp_path}/lock\nruntime_dir: {tmp_path}/run\n")
    check = subprocess.run(
        [str(installed / "guardd"), "--check-config", "--config", str(config)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stderr
    assert str(config) in check.stdout
    ctl = subprocess.run(
        [str(installed / "guardctl"), "--help"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ctl.returncode == 0 and "usage: guardctl" in ctl.stdout
    run = subprocess.run(
        [str(installed / "guard-run"), "--check", "--config", str(config)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    page = subprocess.run(
        [
            str(installed / "python"),
            "-c",
            "from guardd.answers.page import maintenance_page as m;"
            "print(m(reason='r', until=None, retry_after=1).html)",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert page.returncode == 0 and "prefers-color-scheme" in page.stdout


def test_installed_guard_run_imports_no_re_or_asyncio(installed: Path, tmp_path: Path) -> None:
    """guard-run's start, as installed, loads neither re nor asyncio (python -X importtime)."""
    config = tmp_path / "config.yaml"
    config.write_text(f"lock_dir: {tmp_path}/lock\nruntime_dir: {tmp_path}/run\n")
    command = [str(installed / "guard-run"), "--check", "--config", str(config)]
    subprocess.run(command, check=True, capture_output=True, timeout=60)  # warm the cache
    result = subprocess.run(
        [str(installed / "python"), "-X", "importtime", *command],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    modules = {
        line.rsplit("|", 1)[1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    }
    assert "guardd.cli.run" in modules  # the measurement saw guard-run's own imports
    assert "re" not in modules
    assert not [m for m in modules if m == "asyncio" or m.startswith("asyncio.")]
