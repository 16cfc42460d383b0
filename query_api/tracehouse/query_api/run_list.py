"""Keeping the run list current: the runs that moved, folded again every few seconds.

`run_list` holds one narrow row per run, which lists page through and count
(sql.py). A `RunList` keeps it in the background of the query API: every
`interval` it folds again, from `runs`, the runs whose traces moved since
its last complete refresh began (less the store's margin), writes their new
rows and deletes the rows they replace. A list never waits for it: what
moved since the last refresh is read fresh.

One refresher per ClickHouse: two, each deleting after its own insert,
can leave a run two rows for a while (`run_list_refresh_s = 0` turns it
off on the other query API processes). A refresher that died half way
leaves rows the next one deletes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import TracebackType

from tracehouse.query_api.store import Store

log = logging.getLogger(__name__)

# How often (in refreshes) and how far back the rows that missed a change
# are looked for: a minute apart at the default interval (3 s), over an hour.
# As often, the deletes since are written into the run list's parts.
RECHECK_EVERY = 20
RECHECK_WINDOW_NS = 3_600 * 10**9


class RunList:
    def __init__(self, store: Store, interval_s: float) -> None:
        self._store = store
        self._interval = interval_s
        self._since: int | None = None  # runs that moved after this are folded next
        self._refreshes = 0
        # Whether rows were deleted since they were last written into the parts
        # (at first unknown: a process before this one may have left some).
        self._deleted = True
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> RunList:
        self._task = asyncio.create_task(self._run(), name="run-list")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # A refresh under way finishes (its thread cannot be cancelled) before
        # the caller closes the client it uses.
        self._stop.set()
        if self._task:
            await self._task

    async def _run(self) -> None:
        failing = False
        while not self._stop.is_set():
            try:
                await asyncio.to_thread(self.refresh)
                failing = False
            except Exception as exc:  # the loop must outlive any one failure
                # Logged once a failing streak: lists stay right meanwhile
                # (more of their runs are read fresh), only slower.
                if not failing:
                    log.warning("run list refresh failed, retrying: %s", exc)
                failing = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self._interval)

    def refresh(self) -> int:
        """Fold the runs that moved into the run list; how many there were."""
        mark = self._store.now_ns()
        margin = self._store.run_list_margin_ns
        if self._since is None:
            self._since = max(0, self._store.run_list_mark() - margin)
        # At first, and every so often, rows that missed a change are looked
        # for over the last hour (see sql.STALE_SQL).
        due = self._refreshes % RECHECK_EVERY == 0
        recheck = self._since - RECHECK_WINDOW_NS if due else None
        self._refreshes += 1
        folded = self._store.refresh_run_list(self._since, mark, recheck)
        if folded:
            self._since = max(0, mark - margin)
            self._deleted = True
        if due and self._deleted:
            self._store.apply_run_list_deletes()
            self._deleted = False
        return folded
