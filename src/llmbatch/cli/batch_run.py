"""`llmbatch run --batch-api`: the run's requests through the provider's batch API.

    llmbatch run requests.jsonl -o out.jsonl --model gpt-4o-mini --batch-api
    llmbatch run requests.jsonl -o out.jsonl --model gpt-4o-mini --batch-api   # again: resumes

The third way of executing a run (beside the local engine and Ray): the same input, the same
sink and output lines (`response.batch_api` set), the same resume. The batches are recorded in
OUTPUT.batches.json (`llmbatch.batch_api.ledger`); Ctrl-C leaves them running at the provider
and the same command collects them. `--expired realtime` sends expired and retryable failed
lines through the realtime engine in the same run.

With --max-cost the budget is checked per batch (`BatchAPIRunner`: worst cases at the batch
price) and the realtime pass uses the same budget. Answers are checked against --schema (or
the line's JSON mode) as realtime replies are; with `--expired realtime`, a reply that broke
the schema (or was cut off, with --max-tokens-on-truncation) is re-asked through the engine
(the reply policy's follow-up, one re-ask fewer left); otherwise it is written as failed and
`--retry-failed` puts it in the next batch.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

from ..batch_api import (
    BatchAPIConfig,
    BatchAPIRunner,
    BatchEnded,
    BatchEvent,
    BatchPolled,
    BatchSubmitted,
    Ledger,
    LedgerError,
    is_redoable,
    ledger_paths,
)
from ..batch_api.runner import DEFAULT_POLL_INTERVAL
from ..budget import Budget
from ..clients.provider import ProviderClient
from ..errors import InvalidOutputError, LLMBatchError, TruncatedReplyError
from ..io.sink import ResultSink
from ..metrics import MetricsListener
from ..replies import ReplyPolicy, ReplyTries
from ..types import BatchRequest, BatchResult
from ._common import positive_float, positive_int, say
from .precheck import Precheck
from .realtime import execute_realtime, first_error
from .structured import reply_policy
from .usage import UsageError

__all__ = [
    "BatchProgressView",
    "add_batch_arguments",
    "batch_api_failed",
    "batch_config",
    "check_batch_args",
    "execute_batch_api",
]

BATCH_PROVIDERS = ("openai", "anthropic")


def add_batch_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "provider batch API (half price, results within 24 h)",
        "Submit the requests as OpenAI Batch / Anthropic Message Batches jobs instead of "
        "realtime calls. Batches are recorded in OUTPUT.batches.json before they are created; "
        "rerunning the same command re-attaches to them (never submits twice).",
    )
    g.add_argument("--batch-api", action="store_true", help="run through the provider's batch API")
    g.add_argument(
        "--batch-max-requests",
        type=positive_int,
        metavar="N",
        help="requests per batch at most (default the provider's cap: 50,000 / 100,000)",
    )
    g.add_argument(
        "--batch-max-tokens",
        type=positive_int,
        metavar="N",
        help="estimated input tokens per batch at most (for an enqueued-token limit)",
    )
    g.add_argument(
        "--poll-interval",
        type=positive_float,
        default=DEFAULT_POLL_INTERVAL,
        metavar="SECONDS",
        help=f"first wait between status polls; backs off to 10 min (default "
        f"{DEFAULT_POLL_INTERVAL:g})",
    )
    g.add_argument(
        "--keep-files",
        action="store_true",
        help="leave the uploaded input and the result files at the provider (OpenAI)",
    )
    g.add_argument(
        "--expired",
        choices=("fail", "realtime"),
        default="fail",
        help="lines a batch leaves expired (or failed retryably): fail (written as "
        "batch_expired, default; --retry-failed redoes them) or realtime (sent realtime now)",
    )


def check_batch_args(args: argparse.Namespace) -> None:
    """Refuse combinations that cannot work, before anything is read or sent."""
    if not getattr(args, "batch_api", False):
        _refuse_realtime_over_live_batches(args.output)
        return
    if args.ray:
        raise UsageError(
            "--batch-api and --ray do not combine: the provider runs a batch, there is "
            "nothing to spread over workers; drop one of them"
        )
    if args.provider not in BATCH_PROVIDERS:
        raise UsageError(f"--batch-api: provider {args.provider!r} has no batch API here")


def _refuse_realtime_over_live_batches(output: str) -> None:
    # A realtime run would send (and pay for) the lines the provider is still running as a
    # batch; the next --batch-api run would then collect those answers too.
    path, _ = ledger_paths(output)
    if not path.exists():
        return
    try:
        live = [r.n for r in Ledger.read(output).chunks if r.live]
    except LedgerError as exc:
        raise UsageError(str(exc)) from None
    if live:
        raise UsageError(
            f"{output} has {len(live)} provider batch(es) not collected yet ({path}): rerun "
            "with --batch-api to collect them (`llmbatch batches cancel` first to stop them), "
            "or move the ledger away to send their lines in realtime and pay for them again"
        )


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
        if isinstance(event, BatchSubmitted):
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
                elapsed=_clock(event.elapsed),
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
                f"{event.failed:,} failed of {event.total:,} ({_clock(event.elapsed)})"
            )
        else:
            line = f"batch {event.n}: {event.outcome}, {event.written:,} line(s) written"
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


def _clock(seconds: float) -> str:
    s = max(0, int(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def batch_config(
    args: argparse.Namespace,
    listeners: list[Callable[[BatchEvent], None]],
    budget: Budget | None,
    sink: ResultSink,
) -> BatchAPIConfig:
    """The batch runner's configuration, as the run's flags say."""
    return BatchAPIConfig(
        args.output,
        max_requests=args.batch_max_requests,
        max_tokens=args.batch_max_tokens,
        poll_interval=args.poll_interval,
        keep_files=args.keep_files,
        listeners=listeners,
        budget=budget,
        pricer=sink.pricer,
    )


def batch_api_failed(args: argparse.Namespace, exc: Exception) -> UsageError:
    """The message for a batch run that cannot go on: a ledger that cannot be used, or the
    provider refusing a call (key, permissions) or unreachable through the retries. What was
    recorded is safe, and the same command picks it up again."""
    if isinstance(exc, LedgerError):
        return UsageError(str(exc))
    return UsageError(
        f"the batch API failed: {exc}; every batch already created is recorded in "
        f"{ledger_paths(args.output)[0]}: rerun the same command to resume"
    )


async def execute_batch_api(
    args: argparse.Namespace,
    client: ProviderClient,
    sink: ResultSink,
    requests: Iterator[BatchRequest],
    check: Precheck,
    reread: Callable[[], Iterator[BatchRequest]] | None,
    *,
    budget: Budget | None = None,
    metrics: MetricsListener | None = None,
) -> bool:
    """Run the requests through the provider's batch API into `sink`; True if interrupted.

    `budget` (--max-cost) is checked per batch and by the realtime pass; `metrics` hears the
    realtime pass's engine (results reach it through the sink's observers either way)."""
    console = Console(stderr=True, soft_wrap=True)
    view = BatchProgressView(console, disable=args.no_progress)
    realtime_progress, sink.progress = sink.progress, view
    runner = BatchAPIRunner(client, batch_config(args, [view], budget, sink))
    policy = reply_policy(args)
    realtime = args.expired == "realtime" and reread is not None
    # Replies that broke the schema, held for a re-ask in the realtime pass (or written).
    reasks: dict[str, BatchResult] = {}
    # A re-attached batch may answer ids an earlier run already wrote: those are skipped.
    # Only answers count as written; a failed line written again is compacted at close.
    written_ok = sink.journal.scan.ok
    redo: set[str] = set()
    view.start(check.runnable)
    try:
        try:
            async with asyncio.TaskGroup() as group:
                syncer = group.create_task(sink.keep_synced())
                try:
                    stream = runner.stream(requests, done=written_ok.__contains__, flush=sink.flush)
                    async with contextlib.aclosing(stream) as results:
                        async for result in results:
                            if realtime and is_redoable(result):
                                redo.add(result.id)
                            elif realtime and _reaskable(result, policy):
                                reasks[result.id] = result
                            else:
                                sink.write(result)
                finally:
                    syncer.cancel()
        except BaseExceptionGroup as group:
            raise first_error(group) from None
    except asyncio.CancelledError:
        view.stop()
        _write_held(sink, reasks)
        say(
            console,
            "interrupted: the provider batches keep running; rerun the same command to "
            f"collect their results (`llmbatch batches list {args.output}` shows them, "
            f"`llmbatch batches cancel {args.output}` stops them)",
        )
        return True
    except (LedgerError, LLMBatchError) as exc:
        raise batch_api_failed(args, exc) from None
    finally:
        view.stop()
        sink.progress = realtime_progress
    interrupted = False
    try:
        if redo and reread is not None:
            say(console, f"sending {len(redo):,} expired or retryable line(s) realtime")
            requests = (r for r in reread() if r.id in redo)
            # The redone ids were never written: `sink.expected` already counts them.
            interrupted = await execute_realtime(
                args, client, sink, requests, len(redo), budget=budget, metrics=metrics
            )
        if reasks and reread is not None and not interrupted:
            say(console, f"re-asking {len(reasks):,} reply(ies) the schema refused, realtime")
            interrupted = await _reask_realtime(
                args, client, sink, reread, reasks, policy, budget, metrics
            )
    finally:
        # Replies not re-asked (interrupted, the budget spent) are kept as failed, with what
        # they cost: --retry-failed asks again.
        _write_held(sink, reasks)
    return interrupted


def _reaskable(result: BatchResult, policy: ReplyPolicy) -> bool:
    """Whether the reply policy may have a follow-up for this batch answer's error."""
    error = result.error
    if isinstance(error, InvalidOutputError):
        return policy.max_invalid_retries > 0
    return isinstance(error, TruncatedReplyError) and policy.max_tokens_on_truncation is not None


def _write_held(sink: ResultSink, held: dict[str, BatchResult]) -> None:
    while held:
        sink.write(held.popitem()[1])


async def _reask_realtime(
    args: argparse.Namespace,
    client: ProviderClient,
    sink: ResultSink,
    reread: Callable[[], Iterator[BatchRequest]],
    reasks: dict[str, BatchResult],
    policy: ReplyPolicy,
    budget: Budget | None,
    metrics: MetricsListener | None,
) -> bool:
    """The follow-ups of batch answers the schema refused, through the engine. The batch's
    answer was the first reply: the engine may re-ask one time fewer."""
    total = len(reasks)

    def follow_ups() -> Iterator[BatchRequest]:
        for item in reread():
            first = reasks.get(item.id)
            if first is None:
                continue
            assert first.error is not None
            follow = policy.follow_up(item.request, first.error, ReplyTries())
            if follow is None:
                continue  # no follow-up after all (not chat, room already given): kept
            del reasks[item.id]
            yield BatchRequest(item.id, follow)

    left = dataclasses.replace(policy, max_invalid_retries=max(0, policy.max_invalid_retries - 1))
    return await execute_realtime(
        args, client, sink, follow_ups(), total, budget=budget, metrics=metrics, replies=left
    )
