"""`llmbatch run --finish-by TIME`: one run over the batch API and realtime, by a deadline.

    llmbatch run requests.jsonl -o out.jsonl --model gpt-4o-mini --rpm 5000 --finish-by 6h
    llmbatch run requests.jsonl -o out.jsonl --model gpt-4o-mini --finish-by 2026-12-01T09:00 \\
        --prefer speed

`--finish-by` implies `--batch-api`: the requests go into provider batches (half price) and
`llmbatch.batch_api.hybrid.DeadlineRunner` moves what is still open to realtime when the
deadline needs it (`llmbatch.deadline` says when). Both paths write through the run's one
sink; an id answered by both around the switch is written once and paid twice (reported).
A rerun resumes: give the same absolute time (a duration counts from the rerun).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time
from collections.abc import Callable, Iterator

from rich.console import Console

from ..batch_api import BatchAPIRunner, LedgerError
from ..batch_api.hybrid import DeadlineRunner, Switched, estimate_work
from ..budget import Budget
from ..clients.provider import ProviderClient
from ..deadline import (
    DEFAULT_CANCEL_TIME,
    DEFAULT_MIN_MARGIN,
    DeadlinePolicy,
    Prefer,
    RealtimeCapacity,
    Work,
    assumed_latency,
)
from ..errors import LLMBatchError
from ..io.sink import ResultSink
from ..metrics import MetricsListener
from ..types import BatchRequest
from ._common import DEFAULT_CONCURRENCY, finish_by, say
from .batch_run import BATCH_PROVIDERS, BatchProgressView, batch_api_failed, batch_config
from .precheck import Precheck
from .realtime import build_engine, first_error
from .usage import UsageError

__all__ = [
    "add_deadline_arguments",
    "capacity_of",
    "check_deadline_args",
    "deadline_policy",
    "execute_deadline",
]

STATUS_INTERVAL = 1.0
ALLOWANCE_SHARE = 0.05  # of the time given, at most, for each of the margin and the cancel


def add_deadline_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "deadline (batch API and realtime in one run)",
        "Finish by a deadline at the lowest cost: batch API first, realtime for what would "
        "otherwise be late. Implies --batch-api.",
    )
    g.add_argument(
        "--finish-by",
        type=finish_by,
        metavar="TIME",
        help="finish by TIME (2026-12-01T09:00, local time unless a zone is given) or within "
        "a duration (6h, 1h30m)",
    )
    g.add_argument(
        "--prefer",
        choices=("cost", "speed"),
        default="cost",
        help="with --finish-by: cost (default) sends everything through the batch API and "
        "moves what is still open to realtime only when the deadline needs it; speed sends "
        "realtime what fits before the deadline and only the rest through the batch API",
    )


def check_deadline_args(args: argparse.Namespace) -> None:
    """--finish-by needs a provider with a batch API and no --ray; it implies --batch-api."""
    if getattr(args, "finish_by", None) is None:
        return
    if args.ray:
        raise UsageError(
            "--finish-by and --ray do not combine: the deadline run mixes the provider's "
            "batch API with local realtime requests; drop --ray"
        )
    if args.provider not in BATCH_PROVIDERS:
        raise UsageError(f"--finish-by: provider {args.provider!r} has no batch API here")
    args.batch_api = True


def capacity_of(args: argparse.Namespace, latency: float | None) -> RealtimeCapacity:
    """What the realtime path can do under the run's flags (latency None: unknown)."""
    return RealtimeCapacity(
        rpm=args.rpm,
        tpm=args.tpm,
        itpm=args.itpm,
        otpm=args.otpm,
        concurrency=args.concurrency if isinstance(args.concurrency, int) else DEFAULT_CONCURRENCY,
        latency=latency,
    )


def deadline_policy(deadline: float, prefer: Prefer, now: float) -> DeadlinePolicy:
    """The policy for a run given `deadline - now` seconds: the fixed margin and the time
    allowed for a cancel are each at most a twentieth of that (a run given minutes must not
    spend them on allowances meant for a run given hours)."""
    window = max(0.0, deadline - now)
    return DeadlinePolicy(
        deadline,
        prefer,
        min_margin=min(DEFAULT_MIN_MARGIN, ALLOWANCE_SHARE * window),
        cancel_time=min(DEFAULT_CANCEL_TIME, ALLOWANCE_SHARE * window),
    )


def _total(requests: Iterator[BatchRequest]) -> Work:
    n = inp = out = 0
    for item in requests:
        work = estimate_work(item.request)
        n, inp, out = n + 1, inp + work.input_tokens, out + work.output_tokens
    return Work(n, inp, out)


async def execute_deadline(
    args: argparse.Namespace,
    client: ProviderClient,
    sink: ResultSink,
    check: Precheck,
    reread: Callable[[], Iterator[BatchRequest]] | None,
    *,
    budget: Budget | None = None,
    metrics: MetricsListener | None = None,
) -> bool:
    """Run by the deadline into `sink`; True if interrupted."""
    assert reread is not None, "a deadline run reads its requests again for the switch"
    console = Console(stderr=True, soft_wrap=True)
    view = BatchProgressView(console, disable=args.no_progress)
    realtime_progress, sink.progress = sink.progress, view
    total = _total(reread())
    capacity = capacity_of(args, assumed_latency(total))
    policy = deadline_policy(args.finish_by, args.prefer, time.time())

    def announce(event: Switched) -> None:
        say(
            console,
            f"deadline: {_span(event.seconds_left)} left, realtime needs about "
            f"{_span(event.realtime_seconds)} for what is open: moving {event.requests:,} "
            f"request(s) to realtime (cancelled {len(event.cancelled)} batch(es))",
        )

    runner = DeadlineRunner(
        BatchAPIRunner(client, batch_config(args, [view], budget, sink)),
        build_engine(args, client, sink, budget, metrics),
        policy,
        capacity,
        check_interval=min(args.poll_interval, 5.0),
        on_duplicate=sink.count_duplicate,
        listeners=[announce],
    )

    async def show_status() -> None:
        while True:
            s = runner.status()
            projected = sink.spent / sink.written * sink.expected if sink.written else math.nan
            view.note(
                f"{_span(max(0.0, s.seconds_left))} left | realtime {s.realtime_done:,}/"
                f"{s.realtime_sent:,} | spent ${sink.spent:,.4f}"
                + ("" if math.isnan(projected) else f" (projected ${projected:,.4f})")
            )
            await asyncio.sleep(STATUS_INTERVAL)

    view.start(check.runnable)
    try:
        try:
            async with asyncio.TaskGroup() as group:
                helpers = [group.create_task(sink.keep_synced())]
                if not args.no_progress:
                    helpers.append(group.create_task(show_status()))
                try:
                    await runner.run(
                        reread(),
                        on_result=sink.write,
                        done=sink.journal.scan.ok.__contains__,
                        flush=sink.flush,
                        reread=reread,
                        total=total,
                    )
                finally:
                    for task in helpers:
                        task.cancel()
        except BaseExceptionGroup as group:
            raise first_error(group) from None
    except asyncio.CancelledError:
        view.stop()
        say(
            console,
            "interrupted: the provider batches keep running; rerun the same command with the "
            "same --finish-by time to go on",
        )
        return True
    except (LedgerError, LLMBatchError) as exc:
        raise batch_api_failed(args, exc) from None
    finally:
        view.stop()
        sink.progress = realtime_progress
    _summary(console, args, runner, sink)
    return False


def _summary(
    console: Console, args: argparse.Namespace, runner: DeadlineRunner, sink: ResultSink
) -> None:
    left = args.finish_by - time.time()
    verdict = f"met, {_span(left)} to spare" if left >= 0 else f"missed by {_span(-left)}"
    s = runner.status()
    say(
        console,
        f"deadline {verdict}: {s.batch_done:,} answered through the batch API, "
        f"{s.realtime_done:,} realtime"
        + (
            f"; switched to realtime with {_span(runner.switched.seconds_left)} left"
            if runner.switched is not None
            else ""
        ),
    )
    if sink.duplicates:
        say(
            console,
            f"{sink.duplicates:,} request(s) were answered by both paths around the switch "
            f"(written once; both paid: ${sink.duplicate_cost:,.4f} extra)",
        )


def _span(seconds: float) -> str:
    seconds = max(0, math.ceil(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"
