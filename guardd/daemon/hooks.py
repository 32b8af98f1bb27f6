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
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # its own group: a timeout kills its children too
            )
        except OSError as err:
            log.error("%s could not start: %s", name, err.strerror or err)
            return
        assert process.stdout is not None
        try:
            output, _ = await asyncio.wait_for(
                asyncio.gather(_tail(process.stdout, OUTPUT_KEPT), process.wait()),
                self.config.timeout,
            )
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
            log.error("%s timed out after %ss and was killed", name, self.config.timeout)
            return
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            raise
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


async def _tail(stream: asyncio.StreamReader, keep: int) -> bytes:
    """Read ``stream`` to its end, keeping only its last ``keep`` bytes: a hook that
    prints without end must not grow guardd's memory (communicate() keeps it all)."""
    tail = b""
    while chunk := await stream.read(65536):
        tail = (tail + chunk)[-keep:]
    return tail
