"""The queue of reconciles: serial per stack, coalescing bursts, retrying with backoff,
resyncing. It runs what the reconcile (``controller``) is given; kopf's handlers feed it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

from aistack.controller import ReconcileError, Result, StackKey, StackView
from aistack.kube import KubeError
from aistack.limits import DEFAULT_RESYNC, DEFAULT_WORKERS

log = logging.getLogger(__name__)


#: Longest wait between reconciles of a stack while the API server does not answer.
UNREACHABLE_RETRY = 5.0


class StackQueue:
    """Runs reconciles: serial per stack, coalescing bursts, retrying with backoff, and
    again every ``resync`` seconds (jittered) when nothing else asked."""

    def __init__(
        self,
        reconcile: Callable[[StackKey, StackView], Result | None],
        snapshot: Callable[[StackKey], StackView],
        *,
        debounce: float = 0.2,
        max_backoff: float = 60.0,
        workers: int = DEFAULT_WORKERS,
        resync: float | None = DEFAULT_RESYNC,
        jitter: Callable[[], float] = lambda: random.uniform(0.9, 1.1),
    ) -> None:
        self._reconcile = reconcile
        self._snapshot = snapshot
        self._debounce = debounce
        # Reconciles spend most of their time waiting for the API server's answers: more
        # of them in flight than asyncio's default pool (CPUs + 4) keeps it busy when
        # hundreds of stacks are created at once. The webhook keeps the default pool.
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="reconcile")
        # A snapshot is taken only when a thread is free to reconcile it (see _run_once).
        self._slots = asyncio.Semaphore(workers)
        self._max_backoff = max_backoff
        self._resync = resync if resync and resync > 0 else None
        self._jitter = jitter
        self._wake: dict[StackKey, asyncio.Event] = {}
        self._tasks: dict[StackKey, asyncio.Task[None]] = {}
        #: Stacks whose spec changed since their last failure: retried at once.
        self._fresh: set[StackKey] = set()
        #: Stacks asked for a reconcile that has not started yet (``depth``).
        self._waiting: set[StackKey] = set()

    def request(self, key: StackKey, *, spec_changed: bool = False) -> None:
        """Queue a reconcile. After a failure it waits out the backoff, however many
        watch events come meanwhile, unless the stack's own spec changed (the user's fix
        deserves an answer now)."""
        if spec_changed:
            self._fresh.add(key)
        wake = self._wake.get(key)
        if wake is None:
            wake = self._wake[key] = asyncio.Event()
            self._tasks[key] = asyncio.get_running_loop().create_task(
                self._worker(key, wake), name=f"reconcile {key[0]}/{key[1]}"
            )
        self._waiting.add(key)
        wake.set()

    def depth(self) -> int:
        """Stacks asked for a reconcile that has not started yet: coalescing, in backoff,
        or waiting for a free thread (``aistack_queue_depth``)."""
        return len(self._waiting)

    def request_all(self, keys: Iterable[StackKey]) -> None:
        for key in keys:
            self.request(key)

    async def _sleep_until_woken(self, wake: asyncio.Event, timeout: float | None) -> None:
        if timeout is None:
            await wake.wait()
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), timeout)
        wake.set()  # timed out: the resync (or a requested retry) is due

    async def _worker(self, key: StackKey, wake: asyncio.Event) -> None:
        # Leading edge: a stack that has been quiet is reconciled at once (a new stack's
        # children exist sooner). Events during or right after a reconcile (the watch
        # echoing our own writes, pods of one rollout getting ready one by one) are
        # coalesced: the next reconcile starts ``debounce`` seconds after the last ended.
        # After a failure, the next one starts when the backoff has passed.
        loop = asyncio.get_running_loop()
        backoff = 1.0
        last_end = -float("inf")
        not_before = -float("inf")
        next_due: float | None = None  # a timed reconcile: resync or requested retry
        try:
            while True:
                timeout = None if next_due is None else max(0.0, next_due - loop.time())
                await self._sleep_until_woken(wake, timeout)
                if key in self._fresh:
                    self._fresh.discard(key)
                    not_before, backoff = -float("inf"), 1.0
                delay = max(self._debounce - (loop.time() - last_end), not_before - loop.time())
                if delay > 0:
                    await asyncio.sleep(delay)
                wake.clear()
                try:
                    result = await self._run_once(key)
                except Exception as exc:
                    last_end = loop.time()
                    level = (
                        logging.WARNING
                        if isinstance(exc, ReconcileError | KubeError)
                        else logging.ERROR
                    )
                    log.log(
                        level,
                        "reconcile of %s/%s failed, retrying in %.0fs: %s",
                        *key, backoff, exc,
                        exc_info=level == logging.ERROR,
                    )  # fmt: skip
                    not_before = next_due = last_end + backoff
                    # No answer at all (the API server is down or restarting): keep
                    # trying every few seconds, to be back soon after it is.
                    unreachable = isinstance(exc, KubeError) and exc.status == 0
                    backoff = min(
                        backoff * 2, UNREACHABLE_RETRY if unreachable else self._max_backoff
                    )
                    continue
                last_end = loop.time()
                backoff, not_before = 1.0, -float("inf")
                if result is None:
                    if not wake.is_set():
                        return  # the stack is gone
                    continue
                due = []
                if self._resync is not None:
                    due.append(last_end + self._resync * self._jitter())
                if result.requeue_after is not None:
                    due.append(last_end + result.requeue_after)
                next_due = min(due, default=None)
        finally:
            self._wake.pop(key, None)
            self._tasks.pop(key, None)
            self._fresh.discard(key)
            self._waiting.discard(key)

    async def _run_once(self, key: StackKey) -> Result | None:
        """One reconcile; its result, None when the stack no longer exists.

        The snapshot (the stack's children and pods, parsed: about 150 kB) is taken only
        once one of the threads is free to reconcile it, and dropped when the reconcile
        ends. Taken when the reconcile was queued instead, a thousand stacks created at
        once would each hold one while they wait for a thread (300 stacks: 45 MB), and a
        stale one by the time it runs.
        """
        async with self._slots:
            self._waiting.discard(key)
            view = self._snapshot(key)
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, self._reconcile, key, view)

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._executor.shutdown(wait=False, cancel_futures=True)
