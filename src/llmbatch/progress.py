"""Progress: a counter (`ProgressTracker`), a throttled logger (`ProgressLogger`) and a
`rich` progress bar (`RichProgress`). All three are fed by engine events; none slows it down.

    logger = ProgressLogger(interval=2.0, enable_console=True, enable_detailed=True)
    tracker = ProgressTracker(total=100, logger=logger)
    tracker.on_complete(True); tracker.on_complete(False)
    tracker.get_progress()   # BatchProgress(total=100, completed=2, failed=1, ...)
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from .events import BatchFinished, BatchStarted, Event, RequestFinished
from .stats import BatchStats
from .types import BatchProgress

__all__ = ["ProgressLogger", "ProgressTracker", "RichProgress"]

_MAX_FAILED_IDS_LOGGED = 20


class ProgressLogger:
    """Logs progress at most once per `interval` seconds through `logging`.

    `enable_console` makes sure the lines reach stderr even when the application configured no
    logging; `enable_detailed` adds the rate and success rate to each line. The final line is
    always logged, with the failed ids.
    """

    def __init__(
        self,
        interval: float = 1.0,
        enable_console: bool = True,
        enable_detailed: bool = False,
        *,
        logger: logging.Logger | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval = interval
        self.enable_console = enable_console
        self.enable_detailed = enable_detailed
        self.logger = logger or logging.getLogger("llmbatch.progress")
        self._clock = clock
        self._last: float | None = None
        self._lock = threading.Lock()
        if enable_console:
            self._ensure_console()

    def _ensure_console(self) -> None:
        if self.logger.isEnabledFor(logging.INFO) and logging.getLogger().handlers:
            return  # the application logs somewhere already
        if not any(getattr(h, "_llmbatch", False) for h in self.logger.handlers):
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
            handler._llmbatch = True  # type: ignore[attr-defined]
            self.logger.addHandler(handler)
        if self.logger.level == logging.NOTSET or self.logger.level > logging.INFO:
            self.logger.setLevel(logging.INFO)

    def format(self, progress: BatchProgress) -> str:
        line = str(progress)
        if self.enable_detailed:
            rate = progress.rate
            ok = progress.completed - progress.failed
            success = 100.0 * ok / progress.completed if progress.completed else 0.0
            line += f" | Rate: {rate:.1f} req/s | Success rate: {success:.1f}%"
        return line

    def log_progress(self, progress: BatchProgress) -> bool:
        """Log `progress` unless the last line was less than `interval` ago; True if logged."""
        now = self._clock()
        with self._lock:
            done = progress.total is not None and progress.completed >= progress.total
            if not done and self._last is not None and now - self._last < self.interval:
                return False
            self._last = now
        self.logger.info(self.format(progress))
        return True

    def log_final(self, progress: BatchProgress, stats: BatchStats | None = None) -> None:
        """Log the summary, and the ids that failed."""
        self.logger.info("Batch finished: %s", self.format(progress))
        if stats is not None:
            self.logger.info("Stats: %s", stats)
            if self.enable_detailed and stats.errors_by_type:
                by_type = ", ".join(f"{k}={v}" for k, v in stats.errors_by_type.items())
                self.logger.info("Errors by type: %s", by_type)
            if stats.failed_requests:
                shown = list(stats.failed_requests[:_MAX_FAILED_IDS_LOGGED])
                more = len(stats.failed_requests) - len(shown)
                suffix = f" ... and {more} more" if more > 0 else ""
                self.logger.warning("Failed requests: %s%s", ", ".join(shown), suffix)


class ProgressTracker:
    """Counts completions and failures; thread-safe. The seed's `ProgressTracker`.

    Each `on_complete` hands the new progress to the logger, which throttles it.
    """

    def __init__(
        self,
        total: int | None,
        logger: ProgressLogger | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = total
        self.logger = logger
        self._clock = clock
        self._start = clock()
        self._completed = 0
        self._failed = 0
        self._lock = threading.Lock()

    def on_complete(self, success: bool) -> BatchProgress:
        with self._lock:
            self._completed += 1
            if not success:
                self._failed += 1
            progress = self._snapshot()
        if self.logger is not None:
            self.logger.log_progress(progress)
        return progress

    def get_progress(self) -> BatchProgress:
        with self._lock:
            return self._snapshot()

    def _snapshot(self) -> BatchProgress:
        elapsed = self._clock() - self._start
        eta: float | None = None
        if self.total is not None and self._completed:
            remaining = max(0, self.total - self._completed)
            eta = elapsed / self._completed * remaining
        return BatchProgress(self.total, self._completed, self._failed, elapsed, eta)


class _FailedColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        failed = task.fields.get("failed", 0)
        return Text(f"failed {failed}", style="red" if failed else "dim")


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        elapsed = task.elapsed or 0.0
        rate = task.completed / elapsed if elapsed > 0 else 0.0
        return Text(f"{rate:,.1f} req/s", style="cyan")


class _CostColumn(ProgressColumn):
    """Spend so far and the projected total (spend per finished request x total); blank until
    a priced result arrives. Reads one float: no work per result beyond an addition."""

    def __init__(self, owner: RichProgress) -> None:
        super().__init__()
        self.owner = owner

    def render(self, task: Task) -> Text:
        spent = self.owner.spent
        if not spent:
            return Text("")
        text = f"${spent:,.4f}"
        if task.total and task.completed:
            text += f" of ~${spent / task.completed * task.total:,.4f}"
        return Text(text, style="green")


class _PromptCacheColumn(ProgressColumn):
    """The share of input tokens the provider's prompt cache served, and the money it saved;
    blank until an answer reads the cache."""

    def __init__(self, owner: RichProgress) -> None:
        super().__init__()
        self.owner = owner

    def render(self, task: Task) -> Text:
        owner = self.owner
        if not owner.cache_read or not owner.prompt_tokens:
            return Text("")
        text = f"cache {owner.cache_read / owner.prompt_tokens:.0%}"
        if owner.cache_saved:
            text += f" -${owner.cache_saved:,.4f}"
        return Text(text, style="cyan")


class RichProgress:
    """A progress bar on stderr: completed/total, %, failed, req/s, spend, elapsed, ETA.

    An engine listener. Disabled (draws nothing) when stderr is not a terminal or when
    `disable=True`. The bar redraws on rich's own refresh thread; events only update counters.
    """

    def __init__(
        self,
        *,
        description: str = "llmbatch",
        disable: bool = False,
        console: Console | None = None,
        transient: bool = False,
    ) -> None:
        self.console = console or Console(stderr=True)
        self.disabled = disable or not self.console.is_terminal
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            _FailedColumn(),
            _RateColumn(),
            _CostColumn(self),
            _PromptCacheColumn(self),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.console,
            disable=self.disabled,
            transient=transient,
            refresh_per_second=8,
        )
        self._task = self._progress.add_task(description, total=None, failed=0)
        self._failed = 0
        self.spent = 0.0  # USD, from `add_cost`
        self.prompt_tokens = 0  # from `add_prompt_cache`
        self.cache_read = 0
        self.cache_saved = 0.0

    def add_cost(self, usd: float) -> None:
        """Count money spent (the sink calls it with each priced result)."""
        self.spent += usd

    def add_prompt_cache(self, prompt_tokens: int, read: int, saved: float | None) -> None:
        """Count one answer's input tokens, those read from the prompt cache, what it saved."""
        self.prompt_tokens += prompt_tokens
        self.cache_read += read
        self.cache_saved += saved or 0.0

    def __call__(self, event: Event) -> None:
        if isinstance(event, RequestFinished):
            self.add(event.result.error is None)
        elif isinstance(event, BatchStarted):
            self.start(event.total)
        elif isinstance(event, BatchFinished):
            self.stop()

    def add(self, ok: bool, count: int = 1) -> None:
        """Count finished requests (for results that arrive without engine events)."""
        if ok:
            self._progress.advance(self._task, count)
        else:
            self._failed += count
            self._progress.update(self._task, advance=count, failed=self._failed)

    def start(self, total: int | None) -> None:
        self._progress.update(self._task, total=total)
        self._progress.start()

    def stop(self) -> None:
        self._progress.stop()

    def __enter__(self) -> RichProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
