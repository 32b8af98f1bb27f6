"""Transition hooks: commands run when a scope's own flag turns it on or off.

Each scope has its own queue, so its hooks run in order while other scopes' hooks
and every answer go on. A hook is bounded by ``hooks.timeout``; failures are
logged and never hold up a transition.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from guardd.config.model import HooksConfig
from guardd.core.flag import FlagInfo
from guardd.core.state import ScopeStatus

log = logging.getLogger(__name__)
Kind = Literal["on_enter", "on_exit"]
OUTPUT_LIMIT = 2000  # characters of a failing hook's output kept for the log
# Bytes of output kept while a hook runs (the rest is read and dropped as it comes):
# enough for OUTPUT_LIMIT characters of UTF-8, whatever the hook prints.
OUTPUT_KEPT = 4 * OUTPUT_LIMIT
# After a hook exits, how long what it printed last may take to arrive. Only a
# process it left in the background holds the pipe open longer; it is not waited for.
OUTPUT_GRACE = 0.2


@dataclass(frozen=True)
class HookCall:
    """One transition's hooks to run."""

    kind: Kind
    status: ScopeStatus


def transitions(
    old: Mapping[str, ScopeStatus],
    new: Mapping[str, ScopeStatus],
    old_flags: Mapping[str, FlagInfo | None],
    new_flags: Mapping[str, FlagInfo | None],
) -> list[HookCall]:
    """Which hooks a state change fires. Pure.

    ``on_enter``: the scope went from off to draining/on and its own flag is present
    (it was turned on by its own flag, not by ``default``). ``on_exit``: it went to
    off and its own flag was present before (its own flag's removal turned it off).
    """
    calls = []
    for scope, status in new.items():
        before = old.get(scope)
        if before is None:
            continue  # new scope (start or reload): states found fire nothing
        if before.state == "off" and status.state != "off" and new_flags.get(scope) is not None:
            calls.append(HookCall("on_enter", status))
        elif before.state != "off" and status.state == "off" and old_flags.get(scope) is not None:
            calls.append(HookCall("on_exit", status))
    return calls


class HookRunner:
    """Runs hooks per scope, in order, off the event loop's critical path."""

    def __init__(self, config: HooksConfig) -> None:
        self.config = config
        self.queues: dict[str, asyncio.Queue[HookCall]] = {}
        self.workers: dict[str, asyncio.Task[None]] = {}

    def reconfigure(self, config: HooksConfig) -> None:
        """New hooks apply to transitions from now on."""
        self.config = config

    def fire(self, calls: list[HookCall]) -> None:
        """Queue the hooks of each transition (returns at once)."""
        for call in calls:
            commands = getattr(self.config, call.kind)
            if not commands:
                continue
            scope = call.status.scope
            if scope not in self.queues:
                self.queues[scope] = asyncio.Queue()
                self.workers[scope] = asyncio.get_running_loop().create_task(
                    self._worker(self.queues[scope])
                )
            self.queues[scope].put_nowait(call)

    async def close(self) -> None:
        """Stop the workers; a hook still running is killed."""
        for task in self.workers.values():
            task.cancel()
        await asyncio.gather(*self.workers.values(), return_exceptions=True)

    async def _worker(self, queue: asyncio.Queue[HookCall]) -> None:
        while True:
            call = await queue.get()
            for argv in getattr(self.config, call.kind):
                await self._run(argv, call)

    async def _run(self, argv: tuple[str, ...], call: HookCall) -> None:
        status = call.status
        env = dict(os.environ)
        env.update(
            {
                "GUARD_SCOPE": status.scope,
                "GUARD_STATE": status.state,
                "GUARD_REASON": status.reason or "",
                "GUARD_UNTIL": status.until or "",
                # Internal: who switched it and the operators' note (hooks are the
                # operators' own commands, e.g. a message to the team's chat).
                "GUARD_BY": status.by or "",
                "GUARD_NOTE": status.note or "",
            }
        )
        name = f"{call.kind} hook {argv[0]!r} for {status.scope}"
        # Our own pipe, not asyncio's: the hook's output is read only until the hook
        # itself has exited (plus a moment for what it printed last). A process it
        # left in the background keeps the write end open; waiting for EOF would
        # wait for that process, and call a hook that exited 0 "timed out".
        read_end, write_end = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=write_end,
                stderr=write_end,
                start_new_session=True,  # its own group: a timeout kills its children too
            )
        except OSError as err:
            os.close(read_end)
            log.error("%s could not start: %s", name, err.strerror or err)
            return
        finally:
            os.close(write_end)
        tail = _Tail(read_end, OUTPUT_KEPT)
        try:
            await asyncio.wait_for(process.wait(), self.config.timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
            tail.close()
            log.error("%s timed out after %ss and was killed", name, self.config.timeout)
            return
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            tail.close()
            raise
        output = await tail.finish(OUTPUT_GRACE)
        text = output.decode(errors="replace").strip()[-OUTPUT_LIMIT:]
        if process.returncode != 0:
            log.error(
                "%s failed with exit status %s%s",
                name,
                process.returncode,
                f": {text}" if text else "",
            )
        else:
            log.info("%s done%s", name, f": {text}" if text else "")


class _Tail:
    """Read a hook's output pipe as it comes, keeping only its last ``keep`` bytes: a
    hook that prints without end must not grow guardd's memory."""

    def __init__(self, fd: int, keep: int) -> None:
        self.fd = fd
        self.keep = keep
        self.data = b""
        self.loop = asyncio.get_running_loop()
        self.eof = asyncio.Event()
        self.loop.add_reader(fd, self._readable)

    def _readable(self) -> None:
        try:
            for _ in range(16):  # then let the loop breathe: a hook may print without end
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    break
                self.data = (self.data + chunk)[-self.keep :]
            else:
                return
        except BlockingIOError:
            return
        except OSError:
            pass
        self.eof.set()  # EOF (or a broken pipe): nothing more will come
        self.loop.remove_reader(self.fd)

    async def finish(self, grace: float) -> bytes:
        """What was printed, waiting at most ``grace`` for the rest; the pipe is closed
        after (a background process still writing to it gets EPIPE)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.eof.wait(), grace)
        self._readable()
        self.close()
        return self.data

    def close(self) -> None:
        if self.fd < 0:
            return
        self.loop.remove_reader(self.fd)
        os.close(self.fd)
        self.fd = -1
