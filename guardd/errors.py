"""Typed errors that carry their exit code, turned into one stderr line in one place."""

import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (guard-run's start)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import TextIO

# Exit codes from the SPEC, named once.
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_DRAIN_TIMEOUT = 3
EXIT_UNREACHABLE = 4
EXIT_TEMPFAIL = 75
EXIT_NOT_EXECUTABLE = 126
EXIT_NOT_FOUND = 127


class GuardError(Exception):
    """Base of every error guardd's tools show to a user: message plus exit code."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if exit_code is not None:
            self.exit_code = exit_code

    def show(self, prog: str, file: "TextIO | None" = None) -> None:
        """Write the one-line message, prefixed with the program name."""
        stream = file if file is not None else sys.stderr
        try:
            stream.write(f"{prog}: {self.message}\n")
            stream.flush()
        except (BrokenPipeError, OSError):
            # Nowhere left to report to; the exit code still tells.
            pass


class UsageError(GuardError):
    """Bad command line: wrong option, unknown scope, conflicting flags."""

    exit_code = EXIT_USAGE


class ConfigError(GuardError):
    """Invalid configuration; the message names the key path."""

    exit_code = EXIT_USAGE


class Unreachable(GuardError):
    """guardd (or etcd with --fleet) is needed and cannot be reached."""

    exit_code = EXIT_UNREACHABLE


class DrainTimeout(GuardError):
    """Jobs were still running when `guardctl on --wait` ran out of time."""

    exit_code = EXIT_DRAIN_TIMEOUT


def run_cli(prog: str, body: "Callable[[], int | None]") -> int:
    """Call ``body()`` and turn any GuardError (or Ctrl-C, EPIPE) into an exit status.

    The single place where errors become messages, so every tool behaves alike.
    """
    try:
        result = body()
        return int(result) if result is not None else EXIT_OK
    except GuardError as err:
        err.show(prog)
        return err.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `guardctl status | head`: the reader left; not an error worth a traceback.
        _silence_stdout()
        return EXIT_FAILURE
    except OSError as err:
        # One the code did not expect (output to a full disk, an I/O error): one line
        # that names it, never a traceback.
        where = f": {err.filename}" if err.filename else ""
        sys.stderr.write(f"{prog}: {err.strerror or err}{where}\n")
        return EXIT_FAILURE


def _silence_stdout() -> None:
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass
