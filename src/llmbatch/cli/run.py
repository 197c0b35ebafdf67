"""`llmbatch run`: a file of requests in, a file of results out, resumable after any crash.

    llmbatch run requests.jsonl -o results.jsonl --model gpt-4o-mini --rpm 500
    llmbatch run --template "Summarize: {content}" --files "docs/**/*.md" -o out.jsonl

A run is a few steps, read top to bottom in `_run`: check the paths, open the output (the
journal, see `llmbatch.io.journal`: rerunning the same command skips every id it holds), check
every input line before anything is sent, build the one sink every result goes through
(`llmbatch.io.sink`), execute (here, or on Ray workers), finish. The input is read twice,
streaming both times: the check, then the requests themselves.

If the output file cannot be written mid-run (a full disk), the run stops sending at once,
cancels what is in flight and exits 3; what was written stays and a rerun resumes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
from rich.console import Console
from rich.text import Text

from ..clients import ClientSpec
from ..clients._http import ProviderClient
from ..engine import Engine, EngineConfig
from ..errorlog import ErrorHandler
from ..io import cache as cache_module
from ..io.cache import SQLiteCache, request_key
from ..io.formats import (
    BadLine,
    InputItem,
    TemplateError,
    read_files,
    read_jsonl,
    read_rows,
)
from ..io.journal import Journal, JournalLocked, JournalScan, journal_stats
from ..io.sink import OutputError, ResultSink
from ..limiter import RateLimiter
from ..progress import RichProgress
from ..types import BatchRequest, CompletionRequest
from ._common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_OUTPUT,
    EXIT_USAGE,
    event_loop_factory,
    positive_float,
    positive_int,
    retry_policy,
)
from .precheck import Precheck, precheck
from .stats import stats_table
from .usage import UsageError

__all__ = ["add_parser", "main"]

Source = Callable[[], Iterator[InputItem | BadLine]]

# `llmbatch.io.cache.CacheError` is being added by another change (a bad cache file raises it
# at construction); until it lands, sqlite's and the OS's errors are what a bad path gives.
_CACHE_OPEN_ERRORS: tuple[type[BaseException], ...] = (
    sqlite3.Error,
    OSError,
    *([cache_module.CacheError] if hasattr(cache_module, "CacheError") else []),
)


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
    g.add_argument(
        "--missing-field",
        choices=("error", "empty"),
        default="error",
        help="a --rows row without a template field: error (a bad row, default) or empty text",
    )
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


# -- the steps of a run, in order -------------------------------------------------------------


async def _run(args: argparse.Namespace, console: Console) -> int:
    source = _source(args)
    _check_paths(args)
    spec = _client_spec(args)
    client = spec.build()
    try:
        journal = _open_output(args)
        try:
            skip = _report_resume(console, args, journal.scan)
            check = _check_input(console, args, source, skip, journal.scan)
            sink = _build_sink(args, console, client, journal, check)
            try:
                requests = _requests(source, check, skip, sink)
                interrupted = await _execute(args, spec, client, sink, requests, check)
                sink.close()  # fsync, and compaction where ids were redone
            except OutputError as exc:
                sink.abandon()
                return _output_failed(console, args, sink, check, exc)
            finally:
                sink.abandon()  # after an exception; a no-op once closed
        finally:
            journal.abandon()  # the same
        return _finish(console, args, sink, check, interrupted)
    finally:
        await client.aclose()


def _source(args: argparse.Namespace) -> Source:
    """What to read: INPUT, or requests built from --template over --files or --rows."""
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
            return _files_source(args.template, args.files, base, _own_files(args.output))
        rows = Path(args.rows)
        if not rows.is_file():
            raise UsageError(f"--rows {rows}: no such file")
        template, id_field = args.template, args.id_field
        # TODO(missing-field): when io.formats.read_rows takes `missing=`, pass
        # `missing=args.missing_field` here (the flag is parsed already; default "error").
        return lambda: read_rows(template, rows, id_field, base)
    if args.files or args.rows:
        raise UsageError("--files and --rows need --template")
    if not args.input:
        raise UsageError("give INPUT (a JSONL file) or --template with --files/--rows")
    path = Path(args.input)
    if not path.is_file():
        raise UsageError(f"INPUT {path}: no such file")
    return lambda: read_jsonl(path)


def _own_files(output: str) -> set[str]:
    """The files a run itself writes: the output, its lock and its compaction temp file."""
    real = Path(os.path.realpath(output))
    names = [real, real.with_name(real.name + ".lock"), real.with_name(real.name + ".compact.tmp")]
    return {str(p) for p in names} | {os.path.abspath(output)}


def _files_source(template: str, pattern: str, base: CompletionRequest, own: set[str]) -> Source:
    # The output is created before the files are listed: a glob like "**/*" would otherwise
    # send the run's own output and lock file as requests.
    def items() -> Iterator[InputItem | BadLine]:
        for item in read_files(template, pattern, base):
            if isinstance(item, InputItem) and os.path.realpath(item.id) in own:
                continue
            yield item

    return items


def _check_paths(args: argparse.Namespace) -> None:
    """Refuse unusable output paths before anything is opened or sent, one line each."""
    output = Path(args.output)
    for flag, other in (("INPUT", args.input), ("--rows", args.rows)):
        if other and _same_file(output, Path(other)):
            raise UsageError(f"OUTPUT {output} is {flag}: results would overwrite the input")
    if output.is_dir():
        raise UsageError(f"OUTPUT {output} is a directory")
    if not output.parent.is_dir():
        raise UsageError(f"OUTPUT {output}: directory {output.parent} does not exist")
    if output.exists() and output.stat().st_size and not args.resume:
        raise UsageError(
            f"{output} exists and --no-resume was given: remove it, or drop --no-resume"
        )
    if args.error_log:
        log_dir = Path(args.error_log)
        try:
            log_dir.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise UsageError(f"--error-log {log_dir} is a file; it needs a directory") from None
        except OSError as exc:
            raise UsageError(f"--error-log {log_dir}: {_reason(exc)}") from None
    if args.stats_json:
        stats = Path(args.stats_json)
        if stats.is_dir():
            raise UsageError(f"--stats-json {stats} is a directory")
        if not stats.parent.is_dir():
            raise UsageError(f"--stats-json {stats}: directory {stats.parent} does not exist")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one does not exist yet
        return os.path.realpath(a) == os.path.realpath(b)


def _reason(exc: OSError) -> str:
    return f"[Errno {exc.errno}] {exc.strerror}" if exc.errno else str(exc)


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


def _open_output(args: argparse.Namespace) -> Journal:
    journal = Journal(args.output)
    try:
        journal.open()
    except JournalLocked as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"cannot open OUTPUT {args.output}: {_reason(exc)}") from None
    return journal


def _report_resume(
    console: Console, args: argparse.Namespace, scan: JournalScan
) -> Callable[[str], bool]:
    """Say what the existing output holds; return the test for ids this run leaves alone."""
    if scan.repaired_bytes:
        _say(
            console,
            f"repaired {args.output}: cut a torn last line ({scan.repaired_bytes} bytes) left "
            "by an interrupted run; that request will be redone",
        )
    if scan.corrupt_lines:
        shown = ", ".join(str(n) for n in scan.corrupt_lines[:5])
        more = len(scan.corrupt_lines) - 5
        console.print(
            Text.assemble(
                ("warning", "yellow"),
                f": {args.output} line(s) {shown}{f' and {more:,} more' if more > 0 else ''} "
                "are not llmbatch result lines; they are kept but ignored",
            )
        )
    done, failed, retry_failed = scan.ok, scan.failed, args.retry_failed

    def skip(rid: str) -> bool:
        return rid in done or (rid in failed and not retry_failed)

    return skip


def _check_input(
    console: Console,
    args: argparse.Namespace,
    source: Source,
    skip: Callable[[str], bool],
    scan: JournalScan,
) -> Precheck:
    """The first pass: every line checked, the work counted; bad input stops the run here."""
    where = args.input or args.rows or "files"
    try:
        check = precheck(source, skip, args)
    except TemplateError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"cannot read {where}: {exc}") from None
    if check.items == 0:
        raise UsageError(f"{where} holds no requests")
    if check.bad_count:
        _print_bad(console, where, check)
        if args.on_bad_line == "fail":
            raise UsageError(
                f"{check.bad_count:,} bad input line(s); nothing was sent "
                "(fix them, or pass --on-bad-line skip)"
            )
        _say(console, f"skipping {check.bad_count:,} bad line(s)")
    if check.skipped_done:
        kept = 0 if args.retry_failed else len(scan.failed)
        _say(
            console,
            f"resuming {args.output}: {check.skipped_done:,} already done"
            + (f" ({kept:,} failed, kept; --retry-failed redoes them)" if kept else "")
            + f", {check.runnable:,} to run",
        )
    return check


def _print_bad(console: Console, where: str, check: Precheck) -> None:
    # Lines and ids are user data: printed as plain text, never read as rich markup.
    for entry in check.bad:
        console.print(Text.assemble(("bad input", "red"), f": {where} {entry}"))
    more = check.bad_count - len(check.bad)
    if more > 0:
        console.print(Text.assemble(("bad input", "red"), f": ... and {more:,} more"))


def _build_sink(
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
    return ResultSink(
        journal,
        expected=check.runnable,
        progress=progress,
        error_log=error_log,
        cache=cache,
        warn=lambda message: _say(console, f"warning: {message}"),
    )


def _requests(
    source: Source, check: Precheck, skip: Callable[[str], bool], sink: ResultSink
) -> Iterator[BatchRequest]:
    """The second pass: the requests to send, minus bad lines, ids done, and cache hits."""
    for item in source():
        if isinstance(item, BadLine) or item.line in check.bad_lines or skip(item.id):
            continue
        request = BatchRequest(item.id, item.request)
        if sink.needs_call(request):
            yield request


async def _execute(
    args: argparse.Namespace,
    spec: ClientSpec,
    client: ProviderClient,
    sink: ResultSink,
    requests: Iterator[BatchRequest],
    check: Precheck,
) -> bool:
    """Send the requests (here or on Ray) into the sink; return True if interrupted.

    A periodic fsync runs beside the results loop in one task group: if either fails (an
    `OutputError`), the other is cancelled and the error propagates.
    """
    progress = sink.progress
    assert isinstance(progress, RichProgress)
    progress.start(check.runnable)
    try:
        async with asyncio.TaskGroup() as group:
            syncer = group.create_task(sink.keep_synced())
            try:
                if args.ray:
                    from .ray_run import execute_on_ray

                    await execute_on_ray(args, spec, requests, sink)
                else:
                    await _execute_here(args, client, sink, requests, check)
            finally:
                syncer.cancel()
    except asyncio.CancelledError:
        return True
    except BaseExceptionGroup as group:
        raise _first(group) from None
    finally:
        progress.stop()
    return False


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error to report from a task group: an `OutputError` if there is one."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    return next((e for e in leaves if isinstance(e, OutputError)), leaves[0])


async def _execute_here(
    args: argparse.Namespace,
    client: ProviderClient,
    sink: ResultSink,
    requests: Iterator[BatchRequest],
    check: Precheck,
) -> None:
    limiter = RateLimiter(args.rpm, args.tpm) if (args.rpm or args.tpm) else None
    engine = Engine(
        client,
        EngineConfig(
            max_concurrency=args.concurrency,
            request_timeout=args.request_timeout,
            retry=retry_policy(args),
            admission=limiter,
        ),
    )
    stream = engine.stream(
        requests, timeout=args.timeout, total=check.runnable, finish_unstarted=False
    )
    # Leaving this block by an exception (the sink's OutputError) closes the stream, which
    # stops admissions and cancels the requests in flight.
    async with contextlib.aclosing(stream) as results:
        async for result in results:
            sink.write(result)


def _finish(
    console: Console,
    args: argparse.Namespace,
    sink: ResultSink,
    check: Precheck,
    interrupted: bool,
) -> int:
    """Print the stats of the whole output file, write --stats-json, choose the exit code."""
    stats = journal_stats(args.output)
    console.print(stats_table(stats, title=f"llmbatch: {args.output}"))
    unfinished = sink.unfinished
    if args.stats_json:
        payload = stats.to_dict() | {
            "bad_lines": check.bad_count,
            "unfinished": unfinished,
            "interrupted": interrupted,
        }
        try:
            Path(args.stats_json).write_bytes(orjson.dumps(payload, option=orjson.OPT_INDENT_2))
        except OSError as exc:
            _say(console, f"llmbatch run: error: cannot write {args.stats_json}: {_reason(exc)}")
            return EXIT_FAILED
    if interrupted:
        _say(
            console,
            f"interrupted: {unfinished:,} request(s) not written; rerun the same command to finish",
        )
        return EXIT_INTERRUPTED
    if unfinished:
        _say(console, f"--timeout passed: {unfinished:,} request(s) unfinished; rerun to finish")
    if stats.failure_count or unfinished or check.bad_count:
        return EXIT_FAILED
    return EXIT_OK


def _output_failed(
    console: Console,
    args: argparse.Namespace,
    sink: ResultSink,
    check: Precheck,
    exc: OutputError,
) -> int:
    if exc.compacting:
        # Every result is in the file; only superseded lines of redone ids remain in it.
        console.print(stats_table(journal_stats(args.output), title=f"llmbatch: {args.output}"))
        _say(
            console,
            f"llmbatch run: error: {exc}; it is intact and holds every result (with the older "
            "lines of redone ids); rerun to compact it",
        )
        return EXIT_FAILED
    _say(
        console,
        f"llmbatch run: error: {exc}; stopped after {sink.written:,} of {check.runnable:,} "
        "result(s); what was written is kept: rerun the same command to resume",
    )
    return EXIT_OUTPUT


def _say(console: Console, message: str) -> None:
    """Print a message that may hold paths, ids or OS errors: never read as markup."""
    console.print(message, markup=False, highlight=False)


def main(args: argparse.Namespace) -> int:
    # soft_wrap: messages name files and lines; never break them across terminal rows.
    console = Console(stderr=True, soft_wrap=True)

    async def guarded() -> int:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        return await _run(args, console)

    try:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            return runner.run(guarded())
    except UsageError as exc:
        _say(console, f"llmbatch run: error: {exc}")
        return EXIT_USAGE
    except asyncio.CancelledError:
        return EXIT_INTERRUPTED
