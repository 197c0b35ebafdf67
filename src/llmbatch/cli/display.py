"""What `llmbatch run` shows while it runs and after: a listener of the run's events.

    display = RunDisplay(console, no_progress=False)
    summary = llmbatch.run(config.replace(listeners=[display]))
    code = print_summary(console, config, summary)

The pipeline never draws: this module turns its events into a progress bar (realtime and
Ray), per-batch bars (batch API and deadline runs; one line per change when stderr is not a
terminal), the messages the run has for the user, and, at the end, the stats table and what
the outcome means. Settings are named as flags (`flag_name`).
"""

from __future__ import annotations

import math
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn
from rich.text import Text

from ..batch_api import BatchEnded, BatchEvent, BatchHeld, BatchPolled, BatchSubmitted
from ..batch_api.hybrid import Switched
from ..durations import format_duration
from ..pipeline import (
    DeadlineProgress,
    InputChecked,
    OutputOpened,
    PassStarted,
    ResultWritten,
    RunConfig,
    RunNotice,
    RunStarted,
    RunStopped,
    RunSummary,
)
from ..pipeline.errors import name_fields
from ..pipeline.precheck import Precheck
from ..progress import RichProgress
from ..stats import price_note
from ._common import say
from .flags import flag_name
from .stats import stats_table

__all__ = ["BatchProgressView", "RunDisplay", "print_bad", "print_summary"]


class RunDisplay:
    """A run's listener: progress, and its messages, on `console` (stderr)."""

    def __init__(self, console: Console, *, no_progress: bool = False) -> None:
        self.console = console
        self.no_progress = no_progress
        self.progress: RichProgress | BatchProgressView | None = None
        self.batches: BatchProgressView | None = None
        self.spent = 0.0
        self._told_held = False
        self.written = 0
        self.total = 0
        self.output = ""

    def __call__(self, event: Any) -> None:
        if isinstance(event, ResultWritten):
            self.written += 1
            result = event.result
            if result.cost:
                self.spent += result.cost
                if isinstance(self.progress, RichProgress):
                    self.progress.add_cost(result.cost)
            if result.response is not None and isinstance(self.progress, RichProgress):
                usage = result.response.usage
                self.progress.add_prompt_cache(
                    usage.prompt_tokens, usage.cached_tokens, result.cache_saved
                )
            if self.progress is not None:
                self.progress.add(result.error is None)
        elif isinstance(event, BatchSubmitted | BatchPolled | BatchEnded):
            if self.batches is not None:
                self.batches(event)
        elif isinstance(event, BatchHeld):
            self._held(event)
        elif isinstance(event, DeadlineProgress):
            self._deadline(event)
        elif isinstance(event, RunNotice):
            text = name_fields(event.message, flag_name)
            say(self.console, f"warning: {text}" if event.level == "warning" else text)
        elif isinstance(event, OutputOpened):
            self._opened(event)
        elif isinstance(event, InputChecked):
            self._checked(event)
        elif isinstance(event, RunStarted):
            self._started(event)
        elif isinstance(event, PassStarted):
            what = (
                "expired or retryable line(s) realtime"
                if event.kind == "expired"
                else "reply(ies) the schema refused, realtime"
            )
            verb = "sending" if event.kind == "expired" else "re-asking"
            say(self.console, f"{verb} {event.count:,} {what}")
        elif isinstance(event, Switched):
            say(
                self.console,
                f"deadline: {format_duration(event.seconds_left)} left, realtime needs about "
                f"{format_duration(event.realtime_seconds)} for what is open: moving "
                f"{event.requests:,} request(s) to realtime "
                f"(cancelled {len(event.cancelled)} batch(es))",
            )
        elif isinstance(event, RunStopped) and self.progress is not None:
            self.progress.stop()

    def _held(self, event: BatchHeld) -> None:
        """A refusal is told each time; a chunk held by a known limit, the first time only."""
        if event.refused is None and self._told_held:
            return
        self._told_held = True
        limit = "unknown" if event.limit is None else f"{event.limit:,}"
        why = (
            f"the provider failed batch {event.refused} for its enqueued-token limit"
            if event.refused is not None
            else "the enqueued-token limit is reached"
        )
        say(
            self.console,
            f"batch {event.n}: {why} ({event.model}: {event.live:,} tokens live, limit "
            f"{limit}); its {event.count:,} request(s) ({event.tokens:,} tokens) wait for "
            "earlier batches to end",
        )

    def _opened(self, event: OutputOpened) -> None:
        self.output = event.path
        if event.repaired_bytes:
            say(
                self.console,
                f"repaired {event.path}: cut a torn last line ({event.repaired_bytes} bytes) "
                "left by an interrupted run; that request will be redone",
            )
        if event.corrupt_lines:
            shown = ", ".join(str(n) for n in event.corrupt_lines[:5])
            more = len(event.corrupt_lines) - 5
            self.console.print(
                Text.assemble(
                    ("warning", "yellow"),
                    f": {event.path} line(s) {shown}{f' and {more:,} more' if more > 0 else ''} "
                    "are not llmbatch result lines; they are kept but ignored",
                )
            )

    def _checked(self, event: InputChecked) -> None:
        check = event.check
        if check.bad_count:
            print_bad(self.console, event.where, check)
            say(self.console, f"skipping {check.bad_count:,} bad line(s)")
        if check.skipped_done:
            kept = event.failed_kept
            say(
                self.console,
                f"resuming {self.output}: {check.skipped_done:,} already done"
                + (f" ({kept:,} failed, kept; --retry-failed redoes them)" if kept else "")
                + f", {check.runnable:,} to run",
            )

    def _started(self, event: RunStarted) -> None:
        self.total = event.total
        if event.executor in ("batch_api", "deadline"):
            self.batches = BatchProgressView(self.console, disable=self.no_progress)
            self.progress = self.batches
        else:
            self.progress = RichProgress(
                description="llmbatch", console=self.console, disable=self.no_progress
            )
        self.progress.start(event.total)

    def _deadline(self, event: DeadlineProgress) -> None:
        if self.batches is None or self.no_progress:
            return
        projected = self.spent / self.written * self.total if self.written else math.nan
        self.batches.note(
            f"{format_duration(event.seconds_left)} left | realtime "
            f"{event.realtime_done:,}/{event.realtime_sent:,} | spent ${self.spent:,.4f}"
            + ("" if math.isnan(projected) else f" (projected ${projected:,.4f})")
        )


def print_bad(console: Console, where: str, check: Precheck) -> None:
    """The bad input lines found (the first few), as plain text: lines are user data."""
    for entry in check.bad:
        text = name_fields(str(entry), flag_name)
        console.print(Text.assemble(("bad input", "red"), f": {where} {text}"))
    more = check.bad_count - len(check.bad)
    if more > 0:
        console.print(Text.assemble(("bad input", "red"), f": ... and {more:,} more"))


class BatchProgressView:
    """Per-batch progress bars (status, succeeded+failed of count, elapsed) and a total row.

    A `BatchAPIRunner` listener and the sink's progress display. When stderr is not a
    terminal (a batch job left running overnight, its log in a file) it prints one line per
    change of a batch's status instead. `disable` silences both.
    """

    def __init__(self, console: Console, *, disable: bool = False) -> None:
        self.console = console
        self.log_lines = not disable and not console.is_terminal
        self._seen: dict[int, str] = {}
        self.disabled = disable or not console.is_terminal
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TextColumn("[red]{task.fields[failed]}"),
            TextColumn("{task.fields[elapsed]}"),
            console=console,
            disable=self.disabled,
            refresh_per_second=4,
        )
        self._total = self._progress.add_task(
            "written", total=None, status="", failed="", elapsed=""
        )
        self._failed = 0
        self._tasks: dict[int, TaskID] = {}

    def __call__(self, event: BatchEvent) -> None:
        if self.log_lines:
            self._log(event)
        p = self._progress
        if isinstance(event, BatchSubmitted) and event.n in self._tasks:
            p.update(self._tasks[event.n], completed=0, status="submitted")  # after a refusal
        elif isinstance(event, BatchSubmitted):
            self._tasks[event.n] = p.add_task(
                f"batch {event.n}",
                total=event.count,
                status="re-attached" if event.reattached else "submitted",
                failed="",
                elapsed="",
            )
        elif isinstance(event, BatchPolled) and event.n in self._tasks:
            p.update(
                self._tasks[event.n],
                completed=event.succeeded + event.failed,
                status=event.status,
                failed=f"failed {event.failed}" if event.failed else "",
                elapsed=format_duration(event.elapsed),
            )
        elif isinstance(event, BatchEnded):
            task = self._tasks.get(event.n)
            if task is None:
                task = self._tasks[event.n] = p.add_task(
                    f"batch {event.n}", total=event.count, failed="", elapsed="", status=""
                )
            p.update(task, completed=event.count, status=event.outcome)

    def _log(self, event: BatchEvent) -> None:
        if isinstance(event, BatchSubmitted):
            how = "re-attached" if event.reattached else "submitted"
            line = f"batch {event.n}: {how} {event.batch_id} ({event.count:,} requests)"
        elif isinstance(event, BatchPolled):
            if self._seen.get(event.n) == event.status:
                return
            self._seen[event.n] = event.status
            line = (
                f"batch {event.n}: {event.status}, {event.succeeded:,} done, "
                f"{event.failed:,} failed of {event.total:,} ({format_duration(event.elapsed)})"
            )
        elif isinstance(event, BatchEnded):
            line = f"batch {event.n}: {event.outcome}, {event.written:,} line(s) written"
        else:
            return  # held: told by `RunDisplay`
        self.console.print(line, markup=False, highlight=False)

    def note(self, text: str) -> None:
        """Show `text` on the total row (a deadline run: time left, realtime, spend)."""
        self._progress.update(self._total, status=text)
        if self.log_lines:
            self.console.print(text, markup=False, highlight=False)

    def start(self, total: int | None) -> None:
        self._progress.update(self._total, total=total)
        self._progress.start()

    def add(self, ok: bool, count: int = 1) -> None:
        if not ok:
            self._failed += count
        self._progress.update(
            self._total,
            advance=count,
            failed=f"failed {self._failed}" if self._failed else "",
        )

    def stop(self) -> None:
        self._progress.stop()


def print_summary(console: Console, config: RunConfig, summary: RunSummary) -> int:
    """The end of `llmbatch run`: the stats table, what happened, the exit code."""
    out = config.output
    if summary.output_error is not None:
        if summary.output_intact:
            console.print(stats_table(summary.stats, title=f"llmbatch: {out}"))
            say(
                console,
                f"llmbatch run: error: {summary.output_error}; it is intact and holds every "
                "result (with the older lines of redone ids); rerun to compact it",
            )
        else:
            say(
                console,
                f"llmbatch run: error: {summary.output_error}; stopped after "
                f"{summary.written:,} of {summary.total:,} result(s); what was written is "
                "kept: rerun the same command to resume",
            )
        return summary.exit_code
    console.print(stats_table(summary.stats, title=f"llmbatch: {out}"))
    if summary.stats_json_error is not None:
        say(console, f"llmbatch run: error: {summary.stats_json_error}")
    for outage in summary.outages:
        how = "came back" if outage.recovered else "did not come back; remaining requests failed"
        say(console, f"server outage: {outage.duration:.1f}s without an answer, then it {how}")
    if summary.last_error is not None:  # what the server said, not only a count of codes
        say(console, f"last error: {summary.last_error}")
        if summary.last_error_setting == "schema_mode":
            say(
                console,
                "a server without structured output takes the schema with --schema-mode prompt",
            )
        elif summary.last_error_setting == "prompt_cache":
            say(console, "--prompt-cache off sends each line with only its own cache settings")
    lanes = summary.stats.answers_by_lane
    if lanes and set(lanes) != {"standard"}:
        costs, priced = summary.stats.cost_by_lane, summary.stats.priced_by_lane
        say(
            console,
            "answered by lane: "
            + ", ".join(
                f"{lane} {n:,}"
                + (
                    f" (${costs[lane]:,.4f}{price_note(lane, priced.get(lane))})"
                    if lane in costs
                    else ""
                )
                for lane, n in lanes.items()
            ),
        )
    if summary.deadline is not None:
        d = summary.deadline
        verdict = (
            f"met, {format_duration(d.seconds_left)} to spare"
            if d.met
            else f"missed by {format_duration(-d.seconds_left)}"
        )
        say(
            console,
            f"deadline {verdict}: {d.batch_done:,} answered through the batch API, "
            f"{d.realtime_done:,} realtime"
            + (
                f"; switched to realtime with {format_duration(d.switched_with)} left"
                if d.switched_with is not None
                else ""
            ),
        )
        if d.duplicates:
            say(
                console,
                f"{d.duplicates:,} request(s) were answered by both paths around the switch "
                f"(written once; both paid: ${d.duplicate_cost:,.4f} extra)",
            )
    if summary.interrupted:
        if summary.executor == "batch_api":
            say(
                console,
                "interrupted: the provider batches keep running; rerun the same command to "
                f"collect their results (`llmbatch batches list {out}` shows them, "
                f"`llmbatch batches cancel {out}` stops them)",
            )
        elif summary.executor == "deadline":
            say(
                console,
                "interrupted: the provider batches keep running; rerun the same command with "
                "the same --finish-by time to go on",
            )
        else:
            say(
                console,
                f"interrupted: {summary.unfinished:,} request(s) not written; rerun the same "
                "command to finish",
            )
    elif summary.budget_stopped:
        spent = summary.stats.cost or 0.0
        say(
            console,
            f"--max-cost ${config.max_cost:g} reached: ${spent:.6f} spent on {out} "
            f"(${summary.spent:.6f} by this run); {summary.unfinished:,} request(s) not sent "
            f"({name_fields(summary.budget_reason.removeprefix('not sent under '), flag_name)})"
            ". Rerun with a higher --max-cost to go on: nothing done is bought again",
        )
    elif summary.unfinished:
        say(
            console,
            f"--timeout passed: {summary.unfinished:,} request(s) unfinished; rerun to finish",
        )
    if summary.report_error is not None:
        say(console, f"llmbatch run: error: {summary.report_error}")
    elif summary.report is not None:
        say(console, f"report: {summary.report}")
    return summary.exit_code
