"""guardd: watch the flags, keep every scope's state in memory, publish it.

One event loop. ``serve()`` is three steps: startup (dirs, state, watcher,
listeners, READY), the main loop (wait for a signal flag), shutdown (STOPPING,
close everything, exit 0). Signal handlers only set flags.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import os
import signal
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from guardd import __version__
from guardd.config.load import load_config, resolve_secrets
from guardd.config.model import Config
from guardd.core.flag import FlagInfo, read_flag, read_scope
from guardd.core.jobs import Job, describe_jobs, find_holders
from guardd.core.paths import (
    DEFAULT_SCOPE,
    LOCK_DIR_MODE,
    group_id,
    make_dir,
    run_lock_path,
)
from guardd.core.runlock import ensure_run_locks
from guardd.core.schedule import (
    Window,
    next_wakeup,
    schedule_path,
    upcoming,
)
from guardd.core.state import (
    ScopeStatus,
    Snapshot,
    all_statuses,
    busy_summary,
    next_overdue,
    scope_status,
)
from guardd.core.switch import in_force, mirror_file, own_files
from guardd.daemon.control import ControlServer
from guardd.daemon.fleet_agent import FleetAgent
from guardd.daemon.hooks import HookRunner, transitions
from guardd.daemon.listeners import StateListener, make_listeners
from guardd.daemon.metrics import Metrics, MetricsSource, new_counts
from guardd.daemon.notify import Notifier, watchdog_interval
from guardd.daemon.scheduler import run_schedule
from guardd.daemon.watch import RESCAN, Watcher
from guardd.errors import ConfigError, GuardError
from guardd.fleet.etcd import require_client
from guardd.protocol import status_reply

log = logging.getLogger("guardd")
T = TypeVar("T")

# While a scope drains, jobs are recounted this often: a job's end has no file
# event we can count on (a lock inherited by a child outlives the parent's close).
DRAIN_RECOUNT_INTERVAL = 0.25
# The longest the schedule sleeps while a window is pending: a window whose start
# came early through a forward step of the wall clock starts at most this late.
SCHEDULE_RECHECK = 30.0
# Delay between a run lock's open/close event and the recount it triggers.
JOB_EVENT_DELAY = 0.05
# A publish that changes more scopes than this (a flip of ``default``) tells the
# responders "any scope may have changed": they drop every answer at once.
CHANGED_LIMIT = 64
CLAIM_CONNECT_WAIT = (
    3.0  # at start: how long etcd may take to answer before guardd starts without it
)


# A read done off the loop: its number (see Daemon.read_number), the config it was
# read for, and what was read.
FlagRead = tuple[int, Config, dict[str, FlagInfo | None]]
JobsRead = tuple[int, Config, dict[str, set[int]]]  # run-lock holders per scope


class Daemon:
    """The daemon's shared state and its parts, wired on one event loop."""

    def __init__(self, *, config: Config, config_path: str | None) -> None:
        self.config = config
        self.unknown_modes_seen: set[tuple[str, str]] = set()
        self.config_path = config_path
        self.notifier = Notifier()
        # Current knowledge, kept in memory so that no answer touches the disk.
        self.flags: dict[str, FlagInfo | None] = {}
        self.published_flags: dict[str, FlagInfo | None] = {}  # as of the last publish
        # Per flag path: the last successful read, and what stands in for a flag whose
        # existence cannot be known (kept stable until it can be read again).
        self.last_read: dict[str, FlagInfo | None] = {}
        self.unknown_flags: dict[str, FlagInfo] = {}
        self.windows: dict[str, list[Window]] = {}
        self.jobs: dict[str, int] = {}
        # Reads of flags and job counts run off the loop and may overlap (a refresh
        # while a reload reads). Each is numbered when it starts, and only a read
        # started later than what is held replaces it: a slow read never undoes a
        # change a quicker one already took in.
        self.read_number = 0
        self.flag_read: dict[str, int] = {}  # scope -> number of the read it holds
        self.jobs_read = 0
        self.count_failing = False  # logged once until counting works again
        # The fleet flag revisions applied when each job count started, by read number:
        # a node confirms a fleet flag only with a count taken after it saw the flag.
        self.count_revisions: dict[int, dict[str, int]] = {}
        self.jobs_revisions: dict[str, int] = {}  # those of the count in self.jobs
        # The pids holding each scope's run lock (jobs' counts are their sizes).
        self.holders: dict[str, set[int]] = {}
        self.statuses: dict[str, ScopeStatus] = {}
        # The scopes in maintenance, kept apart so that a flip costs the same with
        # 1 or 10,000 scopes (the STATUS= line, the drain timer).
        self.busy: dict[str, ScopeStatus] = {}
        # For /metrics: state changes per (scope, new state) since start.
        self.transitions: dict[tuple[str, str], int] = {}
        # Signal flags, set by handlers and acted on by the main loop.
        self.stop_requested = False
        self.reload_requested = False
        self.wake = asyncio.Event()
        # Refresh bookkeeping: what must be re-read, coalesced across bursts.
        self.dirty_scopes: set[str] = set()
        self.jobs_dirty = False  # count every scope's jobs
        self.job_scopes: set[str] = set()  # count these scopes' jobs
        self.schedule_dirty = False
        self.schedule_timer: asyncio.TimerHandle | None = None
        self.refresh_wanted = asyncio.Event()
        self.refresher: asyncio.Task[None] | None = None
        self.jobs_wanted = asyncio.Event()
        self.counter: asyncio.Task[None] | None = None
        # Threads, by kind of work, so that none waits behind another: flag and
        # schedule reads (quick, on every change), job counts for the state, and job
        # listings for ``jobs`` requests (any local user may ask in a loop).
        self.flag_pool = ThreadPoolExecutor(1, thread_name_prefix="guardd-flags")
        self.count_pool = ThreadPoolExecutor(1, thread_name_prefix="guardd-count")
        self.listing_pool = ThreadPoolExecutor(1, thread_name_prefix="guardd-jobs")
        self.listing = Coalesced(self._list_jobs, self.listing_pool)
        self.drain_timer: asyncio.TimerHandle | None = None
        self.recount_timer: asyncio.TimerHandle | None = None
        self.overdue_timer: asyncio.TimerHandle | None = None
        self.watchdog_timer: asyncio.TimerHandle | None = None
        self.watcher: Watcher | None = None
        self.indexed_config: Config | None = None
        self.flag_scopes: dict[str, list[str]] = {}
        self.mirror_scopes: dict[str, list[str]] = {}
        self.control: ControlServer | None = None
        self.listeners: list[StateListener] = []
        self.hooks = HookRunner(config.hooks)
        self.fleet: FleetAgent | None = None
        self.http_counts = new_counts()
        self.metrics = Metrics(
            MetricsSource(
                statuses=lambda: self.statuses,
                # Copies: the scrape runs in a worker thread while the loop goes on
                # (a dict copy is one step under the GIL; statuses are replaced whole).
                transitions=self.transitions.copy,
                fleet=lambda: self.fleet.view if self.fleet is not None else None,
                http_counts=self.http_counts,
            )
        )

    # ------------------------------------------------------------------ serve

    async def serve(self) -> None:
        """Startup, main loop, shutdown."""
        loop = asyncio.get_running_loop()
        try:
            await self.startup(loop)
            await self.main_loop()
        finally:
            await self.shutdown(loop)

    async def startup(self, loop: asyncio.AbstractEventLoop) -> None:
        """Read the state, start watching, bind the listeners, then say READY."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._request_stop)
        loop.add_signal_handler(signal.SIGHUP, self._request_reload)
        self._prepare_dirs(self.config)
        self.watcher = self._make_watcher(self.config, self._on_change)
        self.watcher.start(loop)
        await self._read_everything()
        self.refresher = loop.create_task(self._refresh_loop())
        self.counter = loop.create_task(self._jobs_loop())
        self.schedule_dirty = True  # a start missed while guardd was down happens now
        self.refresh_wanted.set()
        self.control = ControlServer(
            path=self.config.control.socket,
            mode=self.config.control.mode,
            group=self.config.control.group,
            status_reply=self._status_reply,
            jobs_reply=self._jobs_reply,
        )
        await self.control.start()
        self._start_fleet()
        await self._fleet_claimed()
        self.listeners = make_listeners(
            self.config, counts=self.http_counts, render_metrics=self.metrics.render
        )
        for listener in self.listeners:
            await listener.start()
            listener.update(self.snapshot())
        self._start_watchdog(loop)
        line = busy_summary(self.busy.values(), len(self.statuses))
        # What start-up built (the config, every scope's state: at 10,000 scopes some
        # half a million objects) lives as long as guardd: keep the collector from
        # walking it on every full collection, which would stall a flip now and then.
        gc.collect()
        gc.freeze()
        self.notifier.ready(line)
        where = [f"control socket {self.config.control.socket}"]
        where += [listener.describe() for listener in self.listeners]
        log.info(
            "guardd %s ready (node %s, %s): %s; flags in %s; %s",
            __version__,
            self.config.node,
            self.config.source or "built-in defaults",
            ", ".join(where),
            self.config.lock_dir,
            line,
        )

    async def main_loop(self) -> None:
        """Sleep until a signal flag is set; act on it."""
        while not self.stop_requested:
            await self.wake.wait()
            self.wake.clear()
            if self.reload_requested and not self.stop_requested:
                self.reload_requested = False
                await self.reload()

    async def shutdown(self, loop: asyncio.AbstractEventLoop) -> None:
        """STOPPING=1, then close everything in reverse order of startup."""
        self.notifier.stopping()
        log.info("stopping")
        for timer in (
            self.watchdog_timer,
            self.drain_timer,
            self.recount_timer,
            self.schedule_timer,
            self.overdue_timer,
        ):
            if timer is not None:
                timer.cancel()
        if self.fleet is not None:
            await self.fleet.close()  # revokes the lease: the node leaves the fleet at once
        for listener in self.listeners:
            await listener.close()
        if self.control is not None:
            await self.control.close()
        if self.watcher is not None:
            self.watcher.close()
        tasks = [t for t in (self.refresher, self.counter) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for pool in (self.flag_pool, self.count_pool, self.listing_pool):
            pool.shutdown(wait=False, cancel_futures=True)
        await self.hooks.close()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)

    # ------------------------------------------------------------------ signals

    def _request_stop(self) -> None:
        self.stop_requested = True
        self.wake.set()

    def _request_reload(self) -> None:
        self.reload_requested = True
        self.wake.set()

    # ------------------------------------------------------------------ reload

    async def reload(self) -> None:
        """SIGHUP: load the config again; keep the old one if the new one is invalid."""
        self.notifier.reloading()
        try:
            new = await asyncio.to_thread(lambda: resolve_secrets(load_config(self.config_path)))
            await self._apply_config(new)
            log.info("configuration reloaded from %s", new.source or "built-in defaults")
        except GuardError as err:
            log.error("reload failed, keeping the running configuration: %s", err.message)
        finally:
            self.notifier.reloaded()

    async def _apply_config(self, new: Config) -> None:
        """Build everything the new config answers from, then swap it in at once.

        Until the swap every answer comes from the old config and its state; from it,
        from the new config and the state read for it (no scope it adds is "off"
        because it was not read yet). A change seen while the reload read is re-read
        after the swap: it wins over what the reload read.
        """
        old = self.config
        if new.fleet.endpoints:
            require_client()  # fleet mode added without the etcd client: refused
        self._prepare_dirs(new)
        if new.control.socket != old.control.socket:
            raise ConfigError("control.socket cannot change on reload; restart guardd")
        assert self.control is not None
        self.control.apply_permissions(mode=new.control.mode, group=new.control.group)
        # Watch the new paths before reading them; what they report before the swap
        # is kept and replayed after it (the old watcher serves the old config).
        seen: set[str] = set()

        def on_change(paths: set[str]) -> None:
            if self.config is new:
                self._on_change(paths)
            else:
                seen.update(paths)

        watcher = self._make_watcher(new, on_change)
        watcher.start(asyncio.get_running_loop())
        try:
            for listener in self.listeners:
                await listener.prepare(new)
            # Jobs first, flags last: the flags taken in at the swap are the freshest.
            jobs = await self._count_jobs(new)
            flags = await self._read_flags(new, list(new.scopes))
        except BaseException:
            watcher.close()
            raise
        # ---- the swap: no await from here to the listeners' apply
        if self.watcher is not None:
            self.watcher.close()
        self.watcher = watcher
        self.config = new
        self.hooks.reconfigure(new.hooks)
        number, _, read = flags
        self.flags = read
        self.flag_read = dict.fromkeys(read, number)
        if jobs is not None:
            self.jobs_read = jobs[0]
            self._take_holders(jobs[2])
            self._jobs_taken(jobs[0])
        else:  # not countable now: the last counts of the scopes that stay
            self.holders = {s: pids for s, pids in self.holders.items() if s in new.scopes}
            self.jobs = {scope: n for scope, n in self.jobs.items() if scope in new.scopes}
        old_fleet = None
        if new.fleet != old.fleet or new.node != old.node or new.scopes != old.scopes:
            old_fleet, self.fleet = self.fleet, None
        self._publish()
        snapshot = self.snapshot()
        for listener in self.listeners:
            listener.apply(snapshot)
        # ---- swapped
        self.schedule_dirty = True
        self.jobs_dirty = True
        self.dirty_scopes.update(new.scopes)  # anything that changed while reading
        if seen:
            self._on_change(seen)
        self.refresh_wanted.set()
        for listener in self.listeners:
            await listener.rebind()
        if old_fleet is not None:
            await old_fleet.close()
        if self.fleet is None:
            self._start_fleet()

    # ------------------------------------------------------------------ state

    def _prepare_dirs(self, config: Config) -> None:
        gid = group_id(config.control.group)
        try:
            make_dir(config.lock_dir, LOCK_DIR_MODE, gid=gid)
            ensure_run_locks(config.runtime_dir, config.scopes, gid=gid)
        except OSError as err:
            raise GuardError(
                f"cannot prepare {err.filename or config.runtime_dir}: {err.strerror}"
            ) from None

    def _run_locks(self) -> dict[str, str]:
        return {
            scope: run_lock_path(self.config.runtime_dir, scope) for scope in self.config.scopes
        }

    def _next_read(self) -> int:
        self.read_number += 1
        return self.read_number

    async def _read_flags(self, config: Config, scopes: Sequence[str]) -> FlagRead:
        """Read scopes' flags off the loop, numbered for ``_take_flags``."""
        number = self._next_read()
        loop = asyncio.get_running_loop()
        read = await loop.run_in_executor(self.flag_pool, self._read_flag_files, config, scopes)
        return number, config, read

    def _read_flag_files(self, config: Config, scopes: Sequence[str]) -> dict[str, FlagInfo | None]:
        """What each scope's own files say (switch.own_files: flag, fleet mirror)."""
        view = config.run_view()
        return {
            scope: read_scope(view, scope, self._probe)
            for scope in scopes
            if scope in config.scopes  # not one a reload dropped since it was marked
        }

    def _take_flags(self, read: FlagRead) -> None:
        """Take in flags read off the loop, unless a reload replaced the config they
        were read for, or a read started later is already in."""
        number, config, flags = read
        if config is not self.config:
            return
        for scope, flag in flags.items():
            if number > self.flag_read.get(scope, 0):
                self.flags[scope] = flag
                self.flag_read[scope] = number

    async def _count_jobs(
        self, config: Config, scopes: Collection[str] | None = None
    ) -> JobsRead | None:
        """Find the jobs of ``scopes`` (None: every scope) off the loop, numbered for
        ``_take_jobs``; None when they cannot be counted now (no descriptor left): the
        last counts stay, since a count of 0 would show a draining scope as on."""
        number = self._next_read()
        self.count_revisions[number] = dict(self.fleet.applied) if self.fleet is not None else {}
        wanted = config.scopes if scopes is None else [s for s in scopes if s in config.scopes]
        locks = {scope: run_lock_path(config.runtime_dir, scope) for scope in wanted}
        loop = asyncio.get_running_loop()
        try:
            holders = await loop.run_in_executor(self.count_pool, find_holders, locks)
        except OSError as err:
            if not self.count_failing:
                self.count_failing = True
                log.error(
                    "cannot count jobs (%s): keeping the last counts until it works again",
                    err.strerror or err,
                )
            return None
        if self.count_failing:
            self.count_failing = False
            log.info("jobs can be counted again")
        return number, config, holders

    def _jobs_taken(self, number: int) -> None:
        """The count numbered ``number`` is now the one in ``self.jobs``: its fleet
        revisions go with it (older pending ones are dropped)."""
        self.jobs_revisions = self.count_revisions.get(number, {})
        for key in [k for k in self.count_revisions if k <= number]:
            del self.count_revisions[key]

    def _take_jobs(self, read: JobsRead | None, *, partial: bool = False) -> None:
        """Take in a count; ``partial``: of some scopes only (the others' stay)."""
        if read is None:
            return
        number, config, holders = read
        if config is not self.config or number <= self.jobs_read:
            return
        if partial:
            self._take_holders({**self.holders, **holders}, only=holders.keys())
        else:
            self._take_holders(holders)
            self.jobs_read = number
            self._jobs_taken(number)

    def _probe(self, path: str) -> FlagInfo | None:
        """One flag file (worker thread). Where guardd cannot tell whether it exists
        (its directory unreadable, an I/O error) it counts as present (switch.probe),
        as for guard-run and guardctl: never off on a guess. What was known of the
        flag (since, reason) is kept meanwhile; with nothing known, both are null."""
        flag = read_flag(path)
        if flag is not None and flag.doubt is not None:
            unknown = self.unknown_flags.get(path)
            if unknown is None:
                unknown = self.last_read.get(path) or flag
                self.unknown_flags[path] = unknown
                log.error(
                    "cannot read flag %s (%s): counting it as present",
                    path,
                    flag.doubt,
                )
            return unknown
        if self.unknown_flags.pop(path, None) is not None:
            log.info("flag %s can be read again", path)
        self.last_read[path] = flag
        return flag

    # ------------------------------------------------------------------ fleet

    def _start_fleet(self) -> None:
        if not self.config.fleet.endpoints:
            return
        self.fleet = FleetAgent(
            config=self.config,
            statuses=lambda: self.statuses,
            counted_revisions=lambda: self.jobs_revisions,
            mirror_written=self._mirror_written,
            view_changed=self._fleet_view_changed,
        )
        self.fleet.start()

    async def _fleet_claimed(self) -> None:
        """At start: exit 1 when another live guardd holds this node's name.

        Waits for the first etcd session to claim the name: at most
        CLAIM_CONNECT_WAIT for etcd to answer at all (an etcd that does not lets
        guardd start without it, as before), then at most one lease_ttl (plus a
        few seconds) for a dead holder's lease to expire.
        """
        if self.fleet is None or self.fleet.first_outcome is None:
            return
        outcome: asyncio.Future[str | None] = asyncio.shield(self.fleet.first_outcome)
        connected: asyncio.Future[Any] = asyncio.ensure_future(self.fleet.connected_once.wait())
        waiting: list[asyncio.Future[Any]] = [outcome, connected]
        try:
            await asyncio.wait(waiting, timeout=CLAIM_CONNECT_WAIT)
        finally:
            connected.cancel()
        if not outcome.done():
            if not self.fleet.connected_once.is_set():
                log.warning(
                    "etcd did not answer within %ss: starting without it", CLAIM_CONNECT_WAIT
                )
                return
            try:
                await asyncio.wait_for(outcome, self.config.fleet.lease_ttl + 5.0)
            except TimeoutError:
                return
        holder = outcome.result()
        if holder is not None:
            raise GuardError(
                f"node {self.config.node} is held by another live guardd, {holder}: "
                "refusing fleet mode (give this host its own node name)"
            )

    async def _mirror_written(self, scope: str) -> None:
        """The fleet agent updated a mirror file: take it in, then count the jobs.

        The count starts after the mirror is on disk, so a guard-run that has not
        taken its run lock by then reads the flag and does not start; the node's
        record shows the flag's revision only with this count (``jobs_revisions``).
        """
        self._take_flags(await self._read_flags(self.config, [scope]))
        self._publish(scopes=(scope,))
        self._take_jobs(await self._count_jobs(self.config))
        self._publish()

    def _fleet_view_changed(self) -> None:
        self._update_listeners()

    async def _read_everything(self) -> None:
        """Startup: every scope's flag and jobs, before anything is answered."""
        jobs = await self._count_jobs(self.config)
        flags = await self._read_flags(self.config, list(self.config.scopes))
        if jobs is not None:
            self.jobs_read, _, self.holders = jobs
            self.jobs = {scope: len(pids) for scope, pids in self.holders.items()}
            self._jobs_taken(self.jobs_read)
        self._take_flags(flags)
        self.statuses = all_statuses(self.flags, self.jobs, self.known_modes, now=time.time())
        self.busy = {s: status for s, status in self.statuses.items() if status.in_maintenance}
        self.published_flags = dict(self.flags)
        self._schedule_drain_recount()
        self._arm_overdue_timer()

    def _index_paths(self) -> None:
        """Absolute flag and mirror path -> the scopes they drive (for _on_change)."""
        self.indexed_config = self.config
        self.flag_scopes = {}
        self.mirror_scopes = {}
        view = self.config.run_view()
        for scope in self.config.scopes:
            for path in own_files(view, scope):  # its flag, and its mirror in fleet mode
                self.flag_scopes.setdefault(os.path.abspath(path), []).append(scope)
            mirror = mirror_file(view, scope)
            if mirror is not None:
                self.mirror_scopes.setdefault(os.path.abspath(mirror), []).append(scope)

    def _make_watcher(self, config: Config, on_change: Callable[[set[str]], None]) -> Watcher:
        view = config.run_view()
        flag_paths = {path for scope in config.scopes for path in own_files(view, scope)}
        flag_paths |= {schedule_path(config.lock_dir, scope) for scope in config.scopes}
        return Watcher(
            files=flag_paths,
            run_dir=config.runtime_dir,
            poll_interval=config.poll_interval,
            on_change=on_change,
        )

    def _on_change(self, paths: set[str]) -> None:
        """From the watcher: mark what must be re-read and wake the refresher."""
        if RESCAN in paths:
            self.dirty_scopes.update(self.config.scopes)
            self.jobs_dirty = True
        else:
            run_dir = os.path.abspath(self.config.runtime_dir)
            if self.indexed_config is not self.config:
                self._index_paths()  # a reload swapped the config in
            # One dict lookup per changed path, whatever the number of scopes.
            for path in paths:
                for scope in self.flag_scopes.get(path, ()):
                    self.dirty_scopes.add(scope)
                for scope in self.mirror_scopes.get(path, ()):
                    if self.fleet is not None:
                        self.fleet.mirror_touched(scope)  # restore it if deleted by hand
            if any(os.path.dirname(p) == run_dir and p.endswith(".run") for p in paths):
                self._schedule_job_recount()
            if any(p.endswith(".schedule.json") for p in paths):
                self.schedule_dirty = True
        if RESCAN in paths:
            self.schedule_dirty = True
        if self.dirty_scopes or self.jobs_dirty or self.schedule_dirty:
            self.refresh_wanted.set()

    def _schedule_job_recount(self) -> None:
        """Recount jobs shortly after run-lock activity, not at once.

        guard-run skipping a job during maintenance holds its locks for about a
        millisecond; counting at once would report a blip of "draining". A short
        delay also folds a burst of cron starts into one recount.
        """
        if self.recount_timer is None:
            loop = asyncio.get_running_loop()
            self.recount_timer = loop.call_later(JOB_EVENT_DELAY, self._recount_now)

    def _recount_now(self) -> None:
        self.recount_timer = None
        self.jobs_dirty = True
        self.refresh_wanted.set()

    async def _refresh_loop(self) -> None:
        """Re-read changed flags and the schedule, off the loop, then publish. Bursts
        coalesce. Job counts run in a loop of their own (``_jobs_loop``): a slow count
        never holds up the next flag change."""
        while True:
            await self.refresh_wanted.wait()
            self.refresh_wanted.clear()
            scopes, self.dirty_scopes = sorted(self.dirty_scopes), set()
            schedule_dirty, self.schedule_dirty = self.schedule_dirty, False
            try:
                if schedule_dirty:
                    await self._refresh_schedule()
                if scopes:
                    self._take_flags(await self._read_flags(self.config, scopes))
                    self._publish(scopes=scopes)
                    # A new flag may start a drain: count the jobs of the scopes it
                    # covers (default's covers all; a full count of 10,000 run locks
                    # after every flip would compete with the next one).
                    self._want_jobs(scopes)
            except Exception:
                log.exception("refreshing the state failed; retrying on the next change")
            if self.jobs_dirty or self.job_scopes:
                self.jobs_wanted.set()

    def _want_jobs(self, scopes: Collection[str]) -> None:
        """Ask for these scopes' jobs to be counted (every scope's with ``default``, and
        in fleet mode, where a node's record carries the revisions a full count saw)."""
        if DEFAULT_SCOPE in scopes or self.fleet is not None:
            self.jobs_dirty = True
        else:
            self.job_scopes.update(scopes)

    async def _jobs_loop(self) -> None:
        """Recount jobs when asked (run-lock events, drains, new flags); coalesced."""
        while True:
            await self.jobs_wanted.wait()
            self.jobs_wanted.clear()
            full, self.jobs_dirty = self.jobs_dirty, False
            some, self.job_scopes = self.job_scopes, set()
            if not full and not some:
                continue
            try:
                old_jobs = self.jobs
                if full:
                    self._take_jobs(await self._count_jobs(self.config))
                else:
                    read = await self._count_jobs(self.config, some)
                    self._take_jobs(read, partial=True)
                self._publish(
                    scopes=[
                        scope
                        for scope in self.jobs.keys() | old_jobs.keys()
                        if self.jobs.get(scope, 0) != old_jobs.get(scope, 0)
                    ]
                )
            except Exception:
                log.exception("counting jobs failed; retrying on the next change")

    async def _refresh_schedule(self) -> None:
        """Carry out due windows; a schedule that cannot be read (an unreadable lock
        directory, say) is logged and never holds up the flags read after it."""
        try:
            loop = asyncio.get_running_loop()
            self.windows, acted = await loop.run_in_executor(
                self.flag_pool, run_schedule, self.config
            )
        except OSError as err:
            log.error(
                "cannot read the schedule in %s: %s", self.config.lock_dir, err.strerror or err
            )
            return
        self._arm_schedule_timer()
        if acted:
            # Flags it wrote or removed: read them now, not when a file event (which a
            # polled directory never sends) comes.
            self.dirty_scopes.update(acted)
            self.refresh_wanted.set()
        self._publish(force=True, scopes=())

    def _take_holders(
        self, holders: dict[str, set[int]], *, only: Collection[str] | None = None
    ) -> None:
        """New run-lock holders: log each job that started or ended, update the counts.
        ``only``: the scopes counted (never ``default``); the others are unchanged."""
        if only is None:
            counts = {scope: len(pids) for scope, pids in holders.items()}
            changes = job_changes(self.holders, holders)
        else:
            counts = {**self.jobs, **{scope: len(holders[scope]) for scope in only}}
            changes = job_changes(
                {scope: self.holders.get(scope, set()) for scope in only},
                {scope: holders[scope] for scope in only},
            )
        for verb, pid, scope in changes:
            log.info(
                "job %s: pid %d, scope %s, jobs now %d", verb, pid, scope, counts.get(scope, 0)
            )
        self.holders = holders
        self.jobs = counts

    @property
    def known_modes(self) -> dict[str, tuple[str, ...]]:
        """Every scope's mode names, from the config in force."""
        return self.config.known_modes()

    def _log_unknown_modes(self, scopes: Collection[str] | None = None) -> None:
        """A flag naming a mode its scope lacks is full maintenance: say so, once.
        ``scopes``: only these scopes' flags changed (None: look at every flag)."""
        flags = self.flags
        for scope in flags if scopes is None else scopes:
            flag = flags.get(scope)
            if flag is None or flag.mode is None:
                continue
            settings = self.config.scopes.get(scope)
            key = (scope, flag.mode)
            if settings is None or flag.mode in settings.modes or key in self.unknown_modes_seen:
                continue
            self.unknown_modes_seen.add(key)
            log.warning(
                "scope %s: the flag names mode %r, which is not configured (known: %s); "
                "treating it as full maintenance",
                scope,
                flag.mode,
                ", ".join(sorted(settings.modes)),
            )

    def _publish(self, *, force: bool = False, scopes: Collection[str] | None = None) -> None:
        """Recompute statuses; tell watchers, listeners, hooks and systemd what changed.

        ``scopes``: the only scopes whose flag or job count may have changed (None:
        any), so that a flip costs the same with 1 or 10,000 scopes. ``force``
        updates the listeners even without a state change (the upcoming windows
        they show changed).
        """
        old_statuses = self.statuses
        now = time.time()
        if scopes is None or DEFAULT_SCOPE in scopes:
            new = all_statuses(self.flags, self.jobs, self.known_modes, now=now)
            self._log_unknown_modes()
            changed = {
                scope: status for scope, status in new.items() if old_statuses.get(scope) != status
            }
            calls = transitions(old_statuses, new, self.published_flags, self.flags)
        else:
            self._log_unknown_modes(scopes)
            changed = {}
            for scope in scopes:
                settings = self.config.scopes.get(scope)
                if scope not in self.flags or settings is None:
                    continue  # dropped by a reload
                status = scope_status(
                    scope,
                    flags=in_force(self.flags, scope),  # the one rule: its own, then default's
                    jobs=self.jobs.get(scope, 0),
                    known_modes=tuple(settings.modes),
                    now=now,
                )
                if old_statuses.get(scope) != status:
                    changed[scope] = status
            new = {**old_statuses, **changed} if changed else old_statuses
            calls = transitions(
                {scope: old_statuses[scope] for scope in changed if scope in old_statuses},
                changed,
                self.published_flags,
                self.flags,
            )
        self.statuses = new
        if scopes is None or DEFAULT_SCOPE in scopes:
            self.busy = {scope: status for scope, status in new.items() if status.in_maintenance}
        else:
            for scope, status in changed.items():
                if status.in_maintenance:
                    self.busy[scope] = status
                else:
                    self.busy.pop(scope, None)
        if scopes is None:
            self.published_flags = dict(self.flags)
        else:
            for scope in scopes:
                if scope in self.flags:
                    self.published_flags[scope] = self.flags[scope]
        self._schedule_drain_recount()
        self._arm_overdue_timer()
        self.hooks.fire(calls)
        if self.fleet is not None:
            self.fleet.local_changed()  # a count may confirm a revision without a change
        if not changed:
            if force:
                self._update_listeners(frozenset())
            return
        for status in changed.values():
            old = old_statuses.get(status.scope)
            if old is not None and old.state != status.state:
                key = (status.scope, status.state)
                self.transitions[key] = self.transitions.get(key, 0) + 1
            # A job count alone is not a state change: _take_holders logged the job.
            if old is None or dataclasses.replace(old, jobs=status.jobs) != status:
                log.info("scope %s: %s", status.scope, describe_change(status))
        if self.control is not None:
            self.control.broadcast(changed)
        self._update_listeners(None if len(changed) > CHANGED_LIMIT else frozenset(changed))
        self.notifier.status(busy_summary(self.busy.values(), len(self.statuses)))

    def _schedule_drain_recount(self) -> None:
        """Recount jobs on a timer only while a scope drains: no idle wake-ups."""
        draining = any(s.state == "draining" for s in self.busy.values())
        if draining and self.drain_timer is None:
            loop = asyncio.get_running_loop()
            self.drain_timer = loop.call_later(DRAIN_RECOUNT_INTERVAL, self._drain_tick)

    def _arm_overdue_timer(self) -> None:
        """Publish again when the next scope's ``until`` passes (it turns overdue)."""
        if self.overdue_timer is not None:
            self.overdue_timer.cancel()
            self.overdue_timer = None
        now = time.time()
        end = next_overdue(self.busy, now)  # only scopes in maintenance can turn overdue
        if end is None:
            return
        # At most an hour ahead: the wall clock may be stepped meanwhile.
        delay = min(end - now + 0.01, 3600.0)
        self.overdue_timer = asyncio.get_running_loop().call_later(delay, self._overdue_tick)

    def _overdue_tick(self) -> None:
        self.overdue_timer = None
        self._publish()

    def _drain_tick(self) -> None:
        # Only a draining scope waits for a job's end that no file event reports.
        self.drain_timer = None
        self._want_jobs([s.scope for s in self.busy.values() if s.state == "draining"])
        self.refresh_wanted.set()

    # ------------------------------------------------------------------ schedule

    def _arm_schedule_timer(self) -> None:
        """Wake up at the next notice, start or end, and at least every SCHEDULE_RECHECK
        meanwhile: the timer runs on the monotonic clock, and the wall clock may be
        stepped forward under it (a VM resumed, NTP catching up)."""
        if self.schedule_timer is not None:
            self.schedule_timer.cancel()
            self.schedule_timer = None
        all_windows = [w for windows in self.windows.values() for w in windows]
        wakeup = next_wakeup(all_windows, datetime.now(UTC))
        if wakeup is None:
            return
        delay = min(max(wakeup.timestamp() - time.time(), 0.0) + 0.01, SCHEDULE_RECHECK)
        self.schedule_timer = asyncio.get_running_loop().call_later(delay, self._schedule_tick)

    def _schedule_tick(self) -> None:
        self.schedule_timer = None
        self.schedule_dirty = True
        self.refresh_wanted.set()

    def _update_listeners(self, changed: frozenset[str] | None = None) -> None:
        """Hand the responders what they answer from (one snapshot for all of them);
        ``changed``: the scopes whose status changed (None: any may have)."""
        snapshot = self.snapshot(changed)
        for listener in self.listeners:
            listener.update(snapshot)

    def snapshot(self, changed: frozenset[str] | None = None) -> Snapshot:
        """What the responders answer from: statuses, upcoming windows, the fleet view."""
        others: dict[str, bool] | None = None
        degraded = False
        if self.fleet is not None:
            view = self.fleet.view
            degraded = not view.connected
            if view.ever_connected:
                others = {
                    scope: bool(
                        view.others_serving(scope, self.config.node, self.fleet.flipping(scope))
                    )
                    for scope in self.config.scopes
                }
        return Snapshot(
            statuses=self.statuses,
            upcoming=tuple(self.upcoming()),
            others_serving=others,
            fleet_degraded=degraded,
            changed=changed,
        )

    def upcoming(self) -> list[dict[str, object]]:
        """Windows within their notice period (for the status reply and the page)."""
        all_windows = [w for windows in self.windows.values() for w in windows]
        return [w.upcoming_obj() for w in upcoming(all_windows, datetime.now(UTC))]

    # ------------------------------------------------------------------ watchdog

    def _start_watchdog(self, loop: asyncio.AbstractEventLoop) -> None:
        interval = watchdog_interval()
        if interval is None:
            return

        def ping() -> None:
            self.notifier.watchdog()
            self.watchdog_timer = loop.call_later(interval, ping)

        ping()

    # ------------------------------------------------------------------ replies

    def _status_reply(self) -> dict[str, object]:
        reply = status_reply(node=self.config.node, version=__version__, statuses=self.statuses)
        reply["upcoming"] = self.upcoming()
        return reply

    async def _jobs_reply(self, scope: str | None) -> dict[str, object]:
        if scope is not None and scope not in self.config.scopes:
            known = ", ".join(sorted(self.config.scopes))
            return {
                "ok": False,
                "error": {"code": "bad_request", "message": f"unknown scope {scope!r} ({known})"},
            }
        jobs = await self.listing.get()
        if scope is not None and scope != DEFAULT_SCOPE:
            jobs = [job for job in jobs if job.scope == scope]
        return {"ok": True, "jobs": [job.to_json_obj() for job in jobs]}

    def _list_jobs(self) -> list[Job]:
        """Every scope's jobs, described (a worker thread of the listing pool)."""
        return describe_jobs(find_holders(self._run_locks()))


class Coalesced(Generic[T]):
    """``fn`` run in ``executor`` for every caller, at most one run at a time: callers
    arriving while a run is under way share the next one (which starts after they
    asked, so none gets an answer older than its request)."""

    def __init__(self, fn: Callable[[], T], executor: Executor) -> None:
        self.fn = fn
        self.executor = executor
        self.current: asyncio.Future[T] | None = None  # the run under way
        self.pending: asyncio.Future[T] | None = None  # the next run, shared

    async def get(self) -> T:
        """The result of a run that started after this call."""
        if self.pending is None:
            self.pending = asyncio.ensure_future(self._run(self.current))
            # Its error is every caller's; retrieved here too, for when all hung up.
            self.pending.add_done_callback(lambda run: run.cancelled() or run.exception())
        return await asyncio.shield(self.pending)

    async def _run(self, before: asyncio.Future[T] | None) -> T:
        if before is not None:
            await asyncio.wait([before])
        me, self.pending = self.pending, None  # later callers wait for the next run
        self.current = me
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, self.fn)
        finally:
            if self.current is me:
                self.current = None


def job_changes(
    old: Mapping[str, set[int]], new: Mapping[str, set[int]]
) -> list[tuple[str, int, str]]:
    """(started|ended, pid, scope) for each job that came or went between two sets of
    run-lock holders. Every job holds ``default.run`` too: it is named by its own
    scope, once; only a job of ``default`` itself is named ``default``."""
    changes = []
    for verb, before, after in (("started", old, new), ("ended", new, old)):
        named = set().union(*(pids for scope, pids in after.items() if scope != DEFAULT_SCOPE))
        for scope in sorted(after):
            pids = after[scope] - before.get(scope, set())
            if scope == DEFAULT_SCOPE:
                pids -= named
            changes += [(verb, pid, scope) for pid in sorted(pids)]
    return changes


def describe_change(status: ScopeStatus) -> str:
    """The log line's text for a scope's new state: state, then what the flag says."""
    if not status.in_maintenance:
        return status.state
    details = []
    if status.mode is not None:
        details.append(f"mode {status.mode}")
    if status.via is not None:
        details.append(f"via {status.via}")
    if status.reason:
        details.append(f"reason: {status.reason}")
    if status.until:
        details.append(f"until {status.until}" + (", overdue" if status.overdue else ""))
    if status.by:
        details.append(f"by {status.by}")
    if status.note:
        details.append(f"note: {status.note}")
    if status.jobs:
        details.append(f"jobs {status.jobs}")
    return status.state + (f" ({'; '.join(details)})" if details else "")
