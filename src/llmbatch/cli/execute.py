"""Executing a run: the sink every result goes through, and the way that feeds it.

    sink = build_sink(args, console, client, journal, check)
    interrupted = await execute(args, spec, client, sink, requests, check)

`execute` chooses one of four ways: the local engine (`cli.realtime`), Ray workers (--ray,
`cli.ray_run`), the provider's batch API (--batch-api, `cli.batch_run`), or both by a
deadline (--finish-by, `cli.deadline_run`). Each writes through the same sink.
"""

from __future__ import annotations

import argparse
import sqlite3
from collections.abc import Callable, Iterator

from rich.console import Console

from ..budget import Budget
from ..clients import ClientSpec
from ..clients.provider import ProviderClient
from ..errorlog import ErrorHandler
from ..io.cache import CacheError, SQLiteCache, request_key
from ..io.journal import Journal
from ..io.sink import ResultSink
from ..metrics import MetricsListener
from ..progress import RichProgress
from ..types import BatchRequest, CompletionRequest
from ._common import say
from .batch_run import execute_batch_api
from .costs import pricer_of
from .deadline_run import execute_deadline
from .precheck import Precheck
from .ray_run import execute_on_ray
from .realtime import execute_realtime, with_sync, within_budget
from .usage import UsageError

__all__ = ["build_sink", "execute"]

# What a path that cannot be a cache gives at construction.
_CACHE_OPEN_ERRORS = (sqlite3.Error, OSError, CacheError)


def build_sink(
    args: argparse.Namespace,
    console: Console,
    client: ProviderClient,
    journal: Journal,
    check: Precheck,
) -> ResultSink:
    """The one owner of results: output file, progress, error log, cache, what is left."""
    cache = None
    if args.cache:
        provider, base_url = args.provider, client.base_url

        def key(req: CompletionRequest) -> str:
            return request_key(provider, base_url, req.model or client.model, client.body_for(req))

        try:
            cache = SQLiteCache(args.cache, key)
        except _CACHE_OPEN_ERRORS as exc:
            raise UsageError(f"--cache {args.cache}: cannot be used as a cache ({exc})") from None
    error_log = (
        ErrorHandler(args.error_log, prompt_section=args.prompt_section) if args.error_log else None
    )
    progress = RichProgress(description="llmbatch", console=console, disable=args.no_progress)

    def warn(message: str) -> None:
        say(console, f"warning: {message}")

    return ResultSink(
        journal,
        expected=check.runnable,
        progress=progress,
        error_log=error_log,
        cache=cache,
        warn=warn,
        pricer=pricer_of(args, warn),
    )


async def execute(
    args: argparse.Namespace,
    spec: ClientSpec,
    client: ProviderClient,
    sink: ResultSink,
    requests: Iterator[BatchRequest],
    check: Precheck,
    *,
    budget: Budget | None = None,
    reread: Callable[[], Iterator[BatchRequest]] | None = None,
    metrics: MetricsListener | None = None,
) -> bool:
    """Send the requests (here, on Ray, or through the provider's batch API) into the sink;
    return True if interrupted. `reread()` gives the requests again (for --expired realtime).

    With a `budget` (--max-cost), requests stop being pulled once it refused one; those left
    get no line (the sink counts them unfinished) and a rerun picks them up. Through the
    batch API it is checked per submitted batch (`cli.batch_run`).

    A periodic fsync runs beside the results loop in one task group: if either fails (an
    `OutputError`), the other is cancelled and the error propagates.
    """
    if getattr(args, "finish_by", None) is not None:
        return await execute_deadline(
            args, client, sink, check, reread, budget=budget, metrics=metrics
        )
    if getattr(args, "batch_api", False):
        return await execute_batch_api(
            args, client, sink, requests, check, reread, budget=budget, metrics=metrics
        )
    if args.ray:
        requests = within_budget(budget, sink, requests)
        work = execute_on_ray(args, spec, requests, sink, budget=budget, metrics=metrics)
        return await with_sync(sink, check.runnable, work)
    return await execute_realtime(
        args, client, sink, requests, check.runnable, budget=budget, metrics=metrics
    )
