"""guardd's entry point: command line, logging, event loop choice, exit codes."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import ClassVar

from guardd import __version__
from guardd.config.load import load_config, resolve_secrets
from guardd.config.model import Config
from guardd.config.show import describe
from guardd.core.runlock import ensure_run_locks
from guardd.daemon.app import Daemon
from guardd.errors import GuardError, run_cli


class _JournalFormatter(logging.Formatter):
    """``<N>message``: journald reads the priority from the prefix."""

    PRIORITIES: ClassVar[dict[int, int]] = {
        logging.CRITICAL: 2,
        logging.ERROR: 3,
        logging.WARNING: 4,
        logging.INFO: 6,
        logging.DEBUG: 7,
    }

    def format(self, record: logging.LogRecord) -> str:
        priority = self.PRIORITIES.get(record.levelno, 6)
        text = super().format(record)
        return "\n".join(f"<{priority}>{line}" for line in text.splitlines())


def setup_logging() -> None:
    """Log to stderr; with journald's priority prefixes when under systemd."""
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(_JournalFormatter("%(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if os.environ.get("GUARDD_DEBUG") else logging.INFO)


def raise_open_files_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit: every connection is a descriptor, and
    the 1,024 a shell or cron hands down is soon reached (systemd's unit sets its own)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard
    if hard == resource.RLIM_INFINITY:
        try:
            with open("/proc/sys/fs/nr_open", encoding="ascii") as stream:
                wanted = int(stream.read())
        except (OSError, ValueError):
            wanted = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError) as err:
            logging.getLogger("guardd").warning(
                "cannot raise the open-files limit from %d to %d: %s", soft, wanted, err
            )


# --------------------------------------------------------------------------- CLI

HELP_EPILOG = """\
examples:
  guardd --check-config                    validate /etc/guardd/config.yaml, print it
  guardd --config ./guardd.yaml            run in the foreground (Ctrl-C stops it)
  systemctl reload guardd                  reload the config (SIGHUP)

signals: SIGHUP reloads the config (an invalid one is logged, the old one kept);
SIGTERM or SIGINT stop it cleanly (exit 0).

exit status:
  0    stopped cleanly, or --check-config found the config valid
  1    failure at start (a listen address in use, a directory it cannot create, ...)
  2    config error (the message names the key), or bad option
"""


def run(*, config_path: str | None, check_config: bool, prepare_runtime: bool = False) -> int:
    """Load the config, then either print it (--check-config), create the run locks
    (--prepare-runtime), or serve until stopped."""
    if prepare_runtime:
        prepare_runtime_dir(load_config(config_path))
        return 0
    config = resolve_secrets(load_config(config_path))
    if config.fleet.endpoints:
        from guardd.fleet.etcd import require_client

        require_client()
    if check_config:
        import yaml

        sys.stdout.write(yaml.safe_dump(describe(config), sort_keys=False))
        return 0
    setup_logging()
    raise_open_files_limit()
    daemon = Daemon(config=config, config_path=config_path)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(daemon.serve())
    return 0


def prepare_runtime_dir(config: Config) -> None:
    """Create the runtime directory and the run locks of every configured scope.

    Run at boot by guardd-runtime.service (before cron and timers start), so that a
    non-root guarded job finds its scope's run lock before guardd has started once.
    """
    try:
        ensure_run_locks(config.runtime_dir, config.scopes)
    except OSError as err:
        raise GuardError(
            f"cannot prepare {err.filename or config.runtime_dir}: {err.strerror}"
        ) from None


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed (a default dependency on Linux): its
    C transports carry the HTTP responder's per-request cost that asyncio's pure-Python
    selector loop spends (bench/RESULTS.md). asyncio's own loop otherwise, or with
    ``GUARDD_LOOP=asyncio``."""
    if os.environ.get("GUARDD_LOOP") == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point."""
    parser = argparse.ArgumentParser(
        prog="guardd",
        description=(
            "Maintenance-mode guard daemon (runs in the foreground; systemd Type=notify). "
            "Watches the flag files and answers load balancers (HTTP health, the "
            "maintenance page, /metrics, HAProxy agent-check) and guardctl (control socket)."
        ),
        epilog=HELP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="YAML config (default: $GUARDD_CONFIG, /etc/guardd/config.yaml, "
        "else built-in defaults)",
    )
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="validate and print the effective config, then exit 0 or 2",
    )
    parser.add_argument(
        "--prepare-runtime",
        action="store_true",
        help="create the runtime directory and the configured scopes' run locks, then exit "
        "(run at boot, before cron, by guardd-runtime.service)",
    )
    parser.add_argument("--version", action="version", version=f"guardd {__version__}")
    args = parser.parse_args(argv)
    return run_cli(
        "guardd",
        lambda: run(
            config_path=args.config,
            check_config=args.check_config,
            prepare_runtime=args.prepare_runtime,
        ),
    )


if __name__ == "__main__":
    sys.exit(main())
