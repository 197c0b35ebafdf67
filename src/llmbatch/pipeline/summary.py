"""What a run did: `RunSummary`, with the exit code the CLI returns for it.

summary = llmbatch.run(config)
summary.stats.success_count, summary.spent, summary.exit_code   # 0, 1, 3, 4 or 130
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..breaker import Outage
from ..stats import BatchStats

__all__ = [
    "EXIT_BUDGET",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_OUTPUT",
    "EXIT_USAGE",
    "DeadlineOutcome",
    "RunSummary",
]

EXIT_OK = 0
EXIT_FAILED = 1  # some requests failed (their lines hold the error), or unfinished
EXIT_USAGE = 2  # a setting or the input is unusable: nothing sent
EXIT_OUTPUT = 3  # the output file could not be written: the run stopped; rerun to resume
EXIT_BUDGET = 4  # max_cost reached: sending stopped; rerun with a higher cap to go on
EXIT_INTERRUPTED = 130


@dataclass(frozen=True, slots=True)
class DeadlineOutcome:
    """How a deadline run went: `seconds_left` at the end (negative: missed by that much)."""

    deadline: float
    seconds_left: float
    batch_done: int
    realtime_done: int
    switched_with: float | None  # seconds left when the open work moved to realtime
    duplicates: int  # ids answered by both paths around the switch (written once)
    duplicate_cost: float  # USD those second answers cost

    @property
    def met(self) -> bool:
        return self.seconds_left >= 0


@dataclass(frozen=True, slots=True)
class RunSummary:
    """The outcome of one run. `stats` are of the whole output file (earlier runs' lines
    included); `written`, `spent` and the rest are this run's."""

    output: str
    executor: str  # "realtime", "ray", "batch_api" or "deadline"
    stats: BatchStats
    total: int  # requests this run had to send (after resume, bad lines left out)
    written: int
    unfinished: int  # with no line: cut short, never sent (a rerun sends them)
    skipped_done: int
    bad_lines: int
    spent: float  # USD of this run's results
    interrupted: bool
    budget_stopped: bool
    budget_reason: str = ""
    outages: tuple[Outage, ...] = ()
    last_error: str | None = None  # what the server said last, for a failed line (masked)
    last_error_setting: str | None = None  # the setting that error points to ("schema_mode")
    deadline: DeadlineOutcome | None = None
    output_error: str | None = None  # the output could not be written: what happened
    output_intact: bool = False  # ... and yet it holds every result (a compaction failed)
    stats_json_error: str | None = None
    report: str | None = None  # the report written, if asked for
    report_error: str | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def exit_code(self) -> int:
        """The CLI's exit code for this outcome (0 all done and answered)."""
        if self.output_error is not None:
            return EXIT_FAILED if self.output_intact else EXIT_OUTPUT
        if self.stats_json_error is not None:
            return EXIT_FAILED
        if self.interrupted:
            return EXIT_INTERRUPTED
        if self.budget_stopped:
            return EXIT_BUDGET
        if self.stats.failure_count or self.unfinished or self.bad_lines:
            return EXIT_FAILED
        return EXIT_FAILED if self.report_error is not None else EXIT_OK

    @property
    def ok(self) -> bool:
        return self.exit_code == EXIT_OK
