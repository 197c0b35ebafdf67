"""`llmbatch run`: a file of requests in, a file of results out, resumable after any crash.

    llmbatch run requests.jsonl -o results.jsonl --model gpt-4o-mini --rpm 500
    llmbatch run --template "Summarize: {content}" --files "docs/**/*.md" -o out.jsonl

The input is read twice, streaming both times: a first pass checks every line (and counts the
work) so that bad input stops the run before anything is sent; the second feeds the engine.
The output file is the journal (see `llmbatch.io.journal`): rerunning the same command skips
every id it already holds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
from rich.console import Console

from ..clients import ClientSpec
from ..clients._http import ProviderClient
from ..engine import Engine, EngineConfig
from ..errorlog import ErrorHandler
from ..errors import BatchCancelledError, BatchTimeoutError
from ..events import Event, Listener, RequestFinished
from ..io.cache import SQLiteCache, request_key
from ..io.formats import (
    BadLine,
    InputItem,
    TemplateError,
    read_files,
    read_jsonl,
    read_rows,
)
from ..io.journal import Journal, JournalLocked, journal_stats
from ..limiter import RateLimiter
from ..progress import RichProgress
from ..retry import RetryPolicy
from ..types import BatchRequest, CompletionRequest
from ._common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    install_uvloop,
    positive_float,
    positive_int,
)
from .precheck import Precheck, precheck
from .stats import stats_table
from .usage import UsageError

__all__ = ["add_parser", "main"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "run",
        help="run a file of requests, writing one result line per request",
        description="Send every request in INPUT (or built from --template) and append one "
        "result per request to OUTPUT in the OpenAI Batch output format. Rerunning the same "
        "command resumes: ids already in OUTPUT are skipped. API keys are read only from the "
        "environment.",
    )
    p.add_argument("input", metavar="INPUT", nargs="?", help="JSONL file of requests")
    p.add_argument("-o", "--output", required=True, metavar="OUTPUT", help="results file")
    g = p.add_argument_group("provider")
    g.add_argument(
        "--provider",
        choices=("openai", "anthropic"),
        default="openai",
        help="API flavour (default openai: OpenAI and every OpenAI-compatible server)",
    )
    g.add_argument("--base-url", help="API base URL (default: the provider's, or *_BASE_URL)")
    g.add_argument("--model", help="model for lines that name none")
    g.add_argument(
        "--api-key-env",
        metavar="NAME",
        help="environment variable holding the key (default OPENAI_API_KEY / ANTHROPIC_API_KEY)",
    )
    g = p.add_argument_group("pace and limits")
    g.add_argument("--concurrency", type=positive_int, default=32, help="requests in flight")
    g.add_argument("--rpm", type=positive_float, help="requests per minute (default: adaptive)")
    g.add_argument("--tpm", type=positive_float, help="tokens per minute (default: adaptive)")
    g.add_argument(
        "--request-timeout", type=positive_float, default=600.0, help="seconds per attempt"
    )
    g.add_argument("--timeout", type=positive_float, help="seconds for the whole run")
    g.add_argument(
        "--max-retries", type=int, default=5, help="retries per request after the first try"
    )
    g.add_argument(
        "--max-input-tokens",
        type=positive_int,
        help="reject lines whose prompt is estimated above this many tokens",
    )
    g = p.add_argument_group("templates (instead of INPUT)")
    g.add_argument("--template", help='prompt template, e.g. "Summarize this file: {content}"')
    g.add_argument("--files", metavar="GLOB", help="one request per file; {path}, {content}")
    g.add_argument("--rows", metavar="FILE", help="one request per CSV/JSONL row; {column}")
    g.add_argument("--id-field", default="id", help="row field used as the id (default id)")
    g.add_argument("--system", help="system prompt for template requests")
    g.add_argument("--temperature", type=float, help="temperature for template requests")
    g.add_argument("--max-tokens", type=positive_int, help="max_tokens for template requests")
    g.add_argument("--json", action="store_true", help="ask template requests for JSON replies")
    g = p.add_argument_group("output and bookkeeping")
    g.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="skip ids OUTPUT already holds (default on); --no-resume refuses an existing OUTPUT",
    )
    g.add_argument(
        "--retry-failed", action="store_true", help="also redo ids whose line holds an error"
    )
    g.add_argument(
        "--on-bad-line",
        choices=("fail", "skip"),
        default="fail",
        help="fail: exit 2 before sending anything (default); skip: report and run the rest",
    )
    g.add_argument("--cache", metavar="PATH", help="SQLite response cache")
    g.add_argument("--error-log", metavar="DIR", help="write failed requests to DIR/*.jsonl")
    g.add_argument("--prompt-section", default="", help="label recorded in the error log")
    g.add_argument("--stats-json", metavar="PATH", help="write the final stats as JSON")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("Ray (pip install 'llmbatch[ray]')")
    g.add_argument(
        "--ray",
        action="store_true",
        help="spread the requests over Ray workers sharing one cluster-wide rate limit",
    )
    g.add_argument("--ray-address", help="an existing cluster (default: start a local one)")
    g.add_argument(
        "--workers", type=positive_int, default=2, help="Ray workers (each --concurrency)"
    )


def _source(args: argparse.Namespace) -> Callable[[], Iterator[InputItem | BadLine]]:
    if args.template is not None:
        if args.input:
            raise UsageError("give either INPUT or --template, not both")
        base = CompletionRequest(
            temperature=args.temperature,
            max_tokens=args.max_tokens,
            response_format="json" if args.json else "text",
            model=None,
            system=args.system,
        )
        if bool(args.files) == bool(args.rows):
            raise UsageError("--template needs exactly one of --files or --rows")
        if args.files:
            files, template = args.files, args.template
            return lambda: read_files(template, files, base)
        rows = Path(args.rows)
        if not rows.is_file():
            raise UsageError(f"--rows {rows}: no such file")
        template, id_field = args.template, args.id_field
        return lambda: read_rows(template, rows, id_field, base)
    if args.files or args.rows:
        raise UsageError("--files and --rows need --template")
    if not args.input:
        raise UsageError("give INPUT (a JSONL file) or --template with --files/--rows")
    path = Path(args.input)
    if not path.is_file():
        raise UsageError(f"INPUT {path}: no such file")
    return lambda: read_jsonl(path)


def _client_spec(args: argparse.Namespace) -> ClientSpec:
    spec = ClientSpec(
        provider=args.provider,
        base_url=args.base_url,
        model=args.model,
        api_key_env=args.api_key_env,
        max_connections=args.concurrency,
    )
    if args.api_key_env and not os.environ.get(spec.key_env):
        raise UsageError(f"--api-key-env {spec.key_env}: that environment variable is not set")
    return spec


class _JournalListener:
    """Writes final results; leaves requests cut short by Ctrl-C or --timeout for next time."""

    def __init__(self, journal: Journal, error_log: ErrorHandler | None) -> None:
        self.journal = journal
        self.error_log = error_log
        self.unfinished = 0

    def __call__(self, event: Event) -> None:
        if not isinstance(event, RequestFinished):
            return
        result = event.result
        if isinstance(result.error, BatchCancelledError | BatchTimeoutError):
            self.unfinished += 1
            return
        self.journal.write(result)
        if self.error_log is not None and result.error is not None:
            self.error_log(event)


def _print_bad(console: Console, where: str, check: Precheck) -> None:
    for entry in check.bad:
        console.print(f"[red]bad input[/]: {where} {entry}", highlight=False, markup=True)
    more = check.bad_count - len(check.bad)
    if more > 0:
        console.print(f"[red]bad input[/]: ... and {more:,} more", highlight=False)


async def _run(args: argparse.Namespace, console: Console) -> int:
    source = _source(args)
    output = Path(args.output)
    if args.input and output.resolve() == Path(args.input).resolve():
        raise UsageError("OUTPUT must not be INPUT")
    if output.exists() and output.stat().st_size and not args.resume:
        raise UsageError(
            f"{output} exists and --no-resume was given: remove it, or drop --no-resume"
        )
    if args.ray and (args.cache or args.error_log):
        raise UsageError("--cache and --error-log are not supported with --ray yet")
    spec = _client_spec(args)
    client = spec.build()
    try:
        journal = Journal(output)
        try:
            journal.open()
        except JournalLocked as exc:
            raise UsageError(str(exc)) from None
        try:
            return await _run_with_journal(args, console, source, client, journal)
        finally:
            journal.close()
    finally:
        await client.aclose()


async def _run_with_journal(
    args: argparse.Namespace,
    console: Console,
    source: Callable[[], Iterator[InputItem | BadLine]],
    client: ProviderClient,
    journal: Journal,
) -> int:
    scan = journal.scan
    where = args.input or args.rows or "files"
    if scan.repaired_bytes:
        console.print(
            f"repaired {args.output}: cut a torn last line ({scan.repaired_bytes} bytes) left "
            "by an interrupted run; that request will be redone"
        )
    if scan.corrupt_lines:
        console.print(
            f"[yellow]warning[/]: {args.output} lines {scan.corrupt_lines[:5]} do not parse; "
            "they are kept but ignored"
        )
    done, failed, retry_failed = scan.ok, scan.failed, args.retry_failed

    def skip(rid: str) -> bool:
        return rid in done or (rid in failed and not retry_failed)

    try:
        check = precheck(source, skip, args)
    except TemplateError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"cannot read {where}: {exc}") from None
    if check.items == 0:
        raise UsageError(f"{where} holds no requests")
    if check.bad_count and args.on_bad_line == "fail":
        _print_bad(console, where, check)
        raise UsageError(
            f"{check.bad_count:,} bad input line(s); nothing was sent "
            "(fix them, or pass --on-bad-line skip)"
        )
    if check.bad_count:
        _print_bad(console, where, check)
        console.print(f"skipping {check.bad_count:,} bad line(s)")
    if check.skipped_done:
        kept = len(failed) if not retry_failed else 0
        console.print(
            f"resuming {args.output}: {check.skipped_done:,} already done"
            + (f" ({kept:,} failed, kept; --retry-failed redoes them)" if kept else "")
            + f", {check.runnable:,} to run"
        )

    bad_lines = check.bad_lines

    def requests() -> Iterator[BatchRequest]:
        for item in source():
            if isinstance(item, BadLine) or item.line in bad_lines or skip(item.id):
                continue
            yield BatchRequest(item.id, item.request)

    progress = RichProgress(description="llmbatch", console=console, disable=args.no_progress)
    if args.ray:
        from .ray_run import execute_on_ray

        unfinished, interrupted = await execute_on_ray(
            args, _client_spec(args), requests(), journal, check, progress
        )
        return _finish(args, console, journal, check, unfinished, interrupted)

    cache = None
    if args.cache:
        provider, base_url = args.provider, client.base_url

        def key(req: CompletionRequest) -> str:
            return request_key(provider, base_url, req.model or client.model, client.body_for(req))

        cache = SQLiteCache(args.cache, key)
    error_log = (
        ErrorHandler(args.error_log, prompt_section=args.prompt_section) if args.error_log else None
    )
    writer = _JournalListener(journal, error_log)
    listeners: list[Listener] = [writer, progress]
    limiter = RateLimiter(args.rpm, args.tpm) if (args.rpm or args.tpm) else None
    engine = Engine(
        client,
        EngineConfig(
            max_concurrency=args.concurrency,
            request_timeout=args.request_timeout,
            retry=RetryPolicy(max_attempts=max(1, args.max_retries + 1)),
            admission=limiter,
            cache=cache,
            listeners=listeners,
        ),
    )

    async def keep_synced() -> None:
        while True:
            await asyncio.sleep(0.5)
            journal.sync_if_due()
            if cache is not None:
                cache.commit()

    syncer = asyncio.create_task(keep_synced())
    interrupted = False
    try:
        stream = engine.stream(
            requests(), timeout=args.timeout, total=check.runnable, finish_unstarted=False
        )
        async with contextlib.aclosing(stream) as results:
            async for _ in results:
                pass
    except asyncio.CancelledError:
        interrupted = True
    finally:
        syncer.cancel()
        if cache is not None:
            cache.close()
        if error_log is not None:
            error_log.close()
    return _finish(args, console, journal, check, writer.unfinished, interrupted)


def _finish(
    args: argparse.Namespace,
    console: Console,
    journal: Journal,
    check: Precheck,
    unfinished: int,
    interrupted: bool,
) -> int:
    """Close the journal, print the stats of the whole output file, choose the exit code."""
    journal.close()  # fsync, and compaction where ids were redone
    stats = journal_stats(args.output)
    console.print(stats_table(stats, title=f"llmbatch: {args.output}"))
    if args.stats_json:
        payload = stats.to_dict() | {
            "bad_lines": check.bad_count,
            "unfinished": unfinished,
            "interrupted": interrupted,
        }
        Path(args.stats_json).write_bytes(orjson.dumps(payload, option=orjson.OPT_INDENT_2))
    if interrupted:
        console.print(
            f"interrupted: {unfinished:,} request(s) in flight were not written; "
            "rerun the same command to finish"
        )
        return EXIT_INTERRUPTED
    if unfinished:
        console.print(f"--timeout passed: {unfinished:,} request(s) unfinished; rerun to finish")
    if stats.failure_count or unfinished or check.bad_count:
        return EXIT_FAILED
    return EXIT_OK


def main(args: argparse.Namespace) -> int:
    # soft_wrap: messages name files and lines; never break them across terminal rows.
    console = Console(stderr=True, soft_wrap=True)
    install_uvloop()

    async def guarded() -> int:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        return await _run(args, console)

    try:
        return asyncio.run(guarded())
    except UsageError as exc:
        console.print(f"llmbatch run: error: {exc}", highlight=False, markup=False)
        return EXIT_USAGE
    except asyncio.CancelledError:
        return EXIT_INTERRUPTED
