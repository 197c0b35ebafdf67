"""Where every result of a run goes: the output journal, progress, the error log and the cache.

    sink = ResultSink(journal, expected=check.runnable, progress=bar, error_log=log, cache=cache)
    requests = (item for item in items if sink.needs_call(item))   # cache hits written here
    async for result in engine.stream(requests, finish_unstarted=False):
        sink.write(result)              # raises OutputError when the file cannot take it

Every way of executing a run (the local engine, Ray workers, later a provider batch API)
feeds this one sink, so resume, exactly-once and "unfinished" mean the same on each.

`write` is called by the loop that consumes results, never as an engine listener: a listener's
exception is logged and ignored, and the output file is the product. An `OSError` from the
journal becomes `OutputError` and propagates, so the caller stops admitting, cancels what is in
flight and exits; everything written before stays, and a rerun resumes. The error log and the
cache are conveniences: if either fails, a warning is printed once and the run goes on.

With a `pricer`, `write` is the one place a result's cost is set (`result.cost`, written in its
line's `llmbatch` block), whichever way the run executed; `spent` sums it, and a progress
display with an `add_cost(usd)` method is told. The cost counts the answer and each attempt
that may have been billed though never read (`BatchResult.maybe_billed`, at its worst case),
failed lines too, so a resumed run's spend is what was paid. A request the run's budget
refused (`BudgetExceededError`) is unfinished like an interrupted one; `budget_stopped` then
says so, as it does when the budget refused the retry of a request that was already sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from ..breaker import Outage
from ..budget import BudgetExceededError
from ..errorlog import ErrorHandler
from ..errors import BatchCancelledError, BatchTimeoutError, InvalidResponseError, ReplyError
from ..events import Event, ProviderOutage, RequestFinished
from ..pricing import Pricer
from ..replies import check_reply
from ..types import BatchRequest, BatchResult, CompletionRequest, CompletionResponse
from .cache import SQLiteCache
from .journal import CompactionError, Journal

__all__ = ["OutputError", "ProgressDisplay", "ResultSink", "is_unfinished"]

log = logging.getLogger("llmbatch")

SYNC_INTERVAL = 0.5  # seconds between checks for a due fsync while results are sparse


class OutputError(Exception):
    """The output file could not be written (or rewritten). `str()` is the one-line message."""

    def __init__(self, path: Path, error: OSError, *, compacting: bool = False) -> None:
        self.path = path
        self.error = error
        self.compacting = compacting
        reason = f"[Errno {error.errno}] {error.strerror}" if error.errno else str(error)
        verb = "rewrite (compact)" if compacting else "write"
        super().__init__(f"cannot {verb} {path}: {reason}")


class ProgressDisplay(Protocol):
    """A progress display the sink advances (`RichProgress` is one); its owner starts and
    stops it around the run."""

    def start(self, total: int | None) -> None: ...

    def add(self, ok: bool, count: int = 1) -> None: ...

    def stop(self) -> None: ...


def is_unfinished(result: BatchResult) -> bool:
    """True for a request cut short by the batch deadline or an interrupt: it gets no line,
    so the next run sends it again."""
    return isinstance(result.error, BatchCancelledError | BatchTimeoutError)


def _decoded(request: CompletionRequest, hit: CompletionResponse) -> tuple[Any] | None:
    """A cache hit's parsed reply, in a 1-tuple; None if it is no answer now (sent again)."""
    try:
        return (check_reply(request, hit),)
    except (ReplyError, InvalidResponseError):
        return None


class ResultSink:
    """The single owner of a run's output. Use from one thread (the event loop's)."""

    def __init__(
        self,
        journal: Journal,
        *,
        expected: int,
        progress: ProgressDisplay | None = None,
        error_log: ErrorHandler | None = None,
        cache: SQLiteCache | None = None,
        warn: Callable[[str], None] = log.warning,
        pricer: Pricer | None = None,
    ) -> None:
        self.journal = journal
        self.pricer = pricer
        self.spent = 0.0  # USD of the results written by this run
        self.duplicates = 0  # answers to ids already written (a deadline run's two paths)
        self.duplicate_cost = 0.0
        self.budget_stopped = False
        self.budget_reason = ""  # the first refusal's message
        self._add_cost = getattr(progress, "add_cost", None)
        self.expected = expected
        self.progress = progress
        self.error_log = error_log
        self.cache = cache
        if cache is not None:
            cache.warn = warn  # the cache's own failures reach the same place, once
        self._warn = warn
        self.written = 0
        self.cut_short = 0
        self.outages: list[Outage] = []  # server-wide outages the run waited out (or not)
        self.last_error: BaseException | None = None  # of the last failed line written
        # The requests in flight, by id: the error log shows the prompt, the cache keys by the
        # request, the pricer bounds what an unread attempt may have cost. Only kept when one
        # of them is on; bounded by what is in flight.
        self._remember = error_log is not None or cache is not None or pricer is not None
        self._pending: dict[str, CompletionRequest] = {}
        self._closed = False
        # Called with every result written (metrics): optional observers, so a failing one
        # is reported once and dropped, never stopping the run.
        self.observers: list[Callable[[BatchResult], None]] = []

    @property
    def unfinished(self) -> int:
        """Requests of this run with no line in the output: cut short, or never sent."""
        return max(0, self.expected - self.written)

    def __call__(self, event: Event) -> None:
        """As an engine listener: keeps the outages for the run's summary."""
        if isinstance(event, ProviderOutage):
            self.outages.append(event.outage)

    # -- the way in ---------------------------------------------------------------------------

    def needs_call(self, item: BatchRequest) -> bool:
        """False if the cache answered `item` (its line is written here); True to send it."""
        if self.cache is not None:
            try:
                hit = self.cache.get(item.request)
            except (sqlite3.Error, OSError) as exc:
                self._cache_failed(exc)
                hit = None
            cached = _decoded(item.request, hit) if hit is not None else None
            if hit is not None and cached is not None:
                result = BatchResult(item.id, response=hit, attempts=0, parsed=cached[0])
                self.write(result)
                return False
        if self._remember:
            self._pending[item.id] = item.request
        return True

    def write(self, result: BatchResult) -> None:
        """Record one final result. Raises `OutputError` if the output file cannot take it."""
        request = self._pending.pop(result.id, None)
        refusal = result.error if is_unfinished(result) else result.refused
        if isinstance(refusal, BudgetExceededError) and not self.budget_stopped:
            self.budget_stopped = True
            self.budget_reason = str(refusal)
        if is_unfinished(result):
            self.cut_short += 1
            return
        if self.pricer and result.cost is None:
            result.cost = self._replies_cost(result, request)
        if self.pricer and result.response is not None and result.cache_saved is None:
            model = request.model if request is not None else None
            result.cache_saved = self.pricer.cache_saved(result.response, model)
        if self.pricer and result.maybe_billed and request is not None:
            # Attempts sent but never read (our timeout) may have been billed: each counts at
            # its worst case, as the budget counted it, so a rerun's spend includes them.
            worst = self.pricer.worst_case(request, batch=False)
            if worst is not None:
                result.cost = (result.cost or 0.0) + result.maybe_billed * worst
        try:
            self.journal.write(result)
        except OSError as exc:
            raise OutputError(self.journal.path, exc) from exc
        self.written += 1
        if result.cost:
            self.spent += result.cost
            if self._add_cost is not None:
                self._add_cost(result.cost)
        if self.progress is not None:
            self.progress.add(result.error is None)
        if self.observers:
            self._observe(result)
        if result.error is not None:
            self.last_error = result.error
            self._log_error(result, request)
        elif self.cache is not None and request is not None and result.response is not None:
            # After the line is written: a cache that fails loses nothing already paid for.
            try:
                self.cache.put(request, result.response)
            except (sqlite3.Error, OSError) as exc:
                self._cache_failed(exc)

    def _replies_cost(self, result: BatchResult, request: CompletionRequest | None) -> float | None:
        """USD of the answer and of every reply that was no answer (refused, cut off,
        off-schema; re-asked or not): each was paid for, so the line carries it and a resumed
        run counts it. None when none of them has a price."""
        assert self.pricer is not None
        replies = [result.response] if result.response is not None else []
        last = getattr(result.error, "response", None)
        if result.paid_replies:  # the engine kept them all, the last one included
            replies += result.paid_replies
        elif isinstance(last, CompletionResponse):  # made elsewhere: the last one only
            replies.append(last)
        model = request.model if request is not None else None
        costs = []
        for reply in replies:
            found = self.pricer.priced(reply, model)
            if found is None:
                continue
            costs.append(found[0])
            if reply is result.response:
                result.price_list = found[1]  # a tier's answer: which price list priced it
        return math.fsum(costs) if costs else None

    def count_duplicate(self, result: BatchResult) -> None:
        """An answer to an id already written (two paths raced for it). It was paid for, so
        its cost is counted in `spent` and `duplicate_cost`, and kept durably: when priced,
        its line is written and replaces the id's first (an answer to the same request); on
        close the journal keeps one line carrying both costs, so a rerun's budget counts
        them. `OutputError` if the output cannot take it."""
        if self.pricer and result.cost is None and result.response is not None:
            result.cost = self.pricer.cost(result.response, None)
        self.duplicates += 1
        if result.cost:
            try:
                self.journal.write(result, replaces=True)
            except OSError as exc:
                raise OutputError(self.journal.path, exc) from exc
            self.duplicate_cost += result.cost
            self.spent += result.cost
            if self._add_cost is not None:
                self._add_cost(result.cost)

    # -- durability ---------------------------------------------------------------------------

    def sync(self) -> None:
        """fsync the output if due, commit the cache. `OutputError` if the fsync fails."""
        try:
            self.journal.sync_if_due()
        except OSError as exc:
            raise OutputError(self.journal.path, exc) from exc
        if self.cache is not None:
            try:
                self.cache.commit()
            except (sqlite3.Error, OSError) as exc:
                self._cache_failed(exc)

    def flush(self) -> None:
        """fsync the output now: what was written is on disk when this returns (the batch
        API's ledger marks a provider batch collected only after). `OutputError` if not."""
        try:
            self.journal.sync()
        except OSError as exc:
            raise OutputError(self.journal.path, exc) from exc

    async def keep_synced(self, interval: float = SYNC_INTERVAL) -> None:
        """Run beside the results loop: results that trickle in still reach the disk in time."""
        while True:
            await asyncio.sleep(interval)
            self.sync()

    def close(self) -> None:
        """Flush and close everything. `OutputError(compacting=True)` if the rewrite failed:
        the original file is then intact and holds every result."""
        if self._closed:
            return
        self._closed = True
        try:
            self.journal.close()
        except CompactionError as exc:
            raise OutputError(self.journal.path, exc, compacting=True) from exc
        except OSError as exc:
            raise OutputError(self.journal.path, exc) from exc
        finally:
            self._close_extras()

    def abandon(self, *, discard: bool = False) -> None:
        """Close after a failure: keep what reached the file, skip the rewrite. `discard`:
        the run was refused before anything was sent (`Journal.discard`)."""
        if self._closed:
            return
        self._closed = True
        try:
            if discard:
                self.journal.discard()
            else:
                self.journal.abandon()
        finally:
            self._close_extras()

    # -- the optional parts -------------------------------------------------------------------

    def _log_error(self, result: BatchResult, request: CompletionRequest | None) -> None:
        if self.error_log is None:
            return
        item = BatchRequest(result.id, request or CompletionRequest())
        try:
            self.error_log(RequestFinished(item, result, 0.0))
        except OSError as exc:
            self._warn(
                f"the error log in {self.error_log.log_dir} failed ({exc}); "
                "failures are still in the output file"
            )
            self.error_log = None
            self._remember = self.cache is not None

    def _observe(self, result: BatchResult) -> None:
        for observer in list(self.observers):
            try:
                observer(result)
            except Exception as exc:
                self._warn(f"{observer!r} failed ({exc!r}); going on without it")
                self.observers.remove(observer)

    def _cache_failed(self, exc: BaseException) -> None:
        assert self.cache is not None
        self._warn(
            f"the cache {self.cache.path} failed ({exc}); going on without it "
            "(answers are still written to the output)"
        )
        cache, self.cache = self.cache, None
        self._remember = self.error_log is not None
        with contextlib.suppress(sqlite3.Error, OSError):  # already reported above
            cache.close()

    def _close_extras(self) -> None:
        if self.cache is not None:
            try:
                self.cache.close()
            except (sqlite3.Error, OSError) as exc:
                self._warn(f"the cache {self.cache.path} could not be saved: {exc}")
            self.cache = None
        if self.error_log is not None:
            self.error_log.close()
            self.error_log = None
