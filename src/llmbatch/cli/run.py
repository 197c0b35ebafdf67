"""`llmbatch run`: a file of requests in, a file of results out, resumable after any crash.

    llmbatch run requests.jsonl -o results.jsonl --model gpt-4o-mini --rpm 500
    llmbatch run --template "Summarize: {content}" --files "docs/**/*.md" -o out.jsonl

A run is a few steps, read top to bottom in `_run`: check the paths, open the output (the
journal, see `llmbatch.io.journal`: rerunning the same command skips every id it holds), check
every input line before anything is sent, build the one sink every result goes through
(`llmbatch.io.sink`), execute (here, on Ray workers, or through the provider's batch API with
--batch-api), finish. The input is read twice,
streaming both times: the check, then the requests themselves.

If the output file cannot be written mid-run (a full disk), the run stops sending at once,
cancels what is in flight and exits 3; what was written stays and a rerun resumes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
from rich.console import Console
from rich.text import Text

from ..breaker import DEFAULT_MAX_OUTAGE
from ..clients import PROVIDERS, ClientConfigError, ClientSpec
from ..io.formats import BadLine, TemplateError
from ..io.journal import Journal, JournalLocked, JournalScan, journal_stats
from ..io.sink import OutputError, ResultSink
from ..redact import redact
from ..types import BatchRequest
from ._common import (
    DEFAULT_CONCURRENCY,
    EXIT_BUDGET,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_OUTPUT,
    EXIT_USAGE,
    concurrency,
    event_loop_factory,
    non_negative_float,
    os_reason,
    positive_float,
    positive_int,
    say,
)
from .batch_run import add_batch_arguments, check_batch_args
from .costs import add_cost_arguments, budget_of
from .deadline_run import add_deadline_arguments, check_deadline_args
from .execute import build_sink, execute
from .observe import add_arguments as add_observe_arguments
from .observe import check_report_extra, serve_metrics, write_run_report
from .paths import Source, check_paths, source_of
from .precheck import Precheck, precheck
from .stats import stats_table
from .structured import add_arguments as add_structured_arguments
from .structured import structured_source
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
    add_run_arguments(p)


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """Every flag of `run` (`llmbatch plan` takes the same)."""
    p.add_argument("input", metavar="INPUT", nargs="?", help="JSONL file of requests")
    p.add_argument("-o", "--output", required=True, metavar="OUTPUT", help="results file")
    g = p.add_argument_group("provider")
    g.add_argument(
        "--provider",
        choices=sorted(PROVIDERS),
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
    g.add_argument(
        "--concurrency",
        type=concurrency,
        default=DEFAULT_CONCURRENCY,
        help=f'requests in flight (default {DEFAULT_CONCURRENCY}), or "auto": found from '
        "latency, for servers that queue instead of refusing (llama.cpp, vLLM, Ollama)",
    )
    g.add_argument("--rpm", type=positive_float, help="requests per minute (default: adaptive)")
    g.add_argument("--tpm", type=positive_float, help="tokens per minute (default: adaptive)")
    g.add_argument(
        "--itpm", type=positive_float, help="input tokens per minute (Anthropic-style split limit)"
    )
    g.add_argument(
        "--otpm", type=positive_float, help="output tokens per minute (charged from max_tokens)"
    )
    g.add_argument(
        "--max-outage",
        type=non_negative_float,
        default=DEFAULT_MAX_OUTAGE,
        metavar="SECONDS",
        help="wait out a server-wide outage this long before failing the remaining requests "
        f"(default {DEFAULT_MAX_OUTAGE:g})",
    )
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
    add_structured_arguments(p)
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
    add_observe_arguments(p)
    add_cost_arguments(p)
    add_batch_arguments(p)
    add_deadline_arguments(p)


# -- the steps of a run, in order -------------------------------------------------------------


async def _run(args: argparse.Namespace, console: Console) -> int:
    source = structured_source(args, source_of(args))
    check_paths(args)
    check_deadline_args(args)  # first: --finish-by implies --batch-api
    check_batch_args(args)
    spec = _client_spec(args)
    check_report_extra(args)
    try:
        client = spec.build()
    except ClientConfigError as exc:
        flag = "--base-url" if exc.field == "base_url" else exc.source or "--api-key-env"
        raise UsageError(f"{flag}: {exc.reason}") from None
    try:
        journal = _open_output(args)
        try:
            skip = _report_resume(console, args, journal.scan)
            check = _check_input(console, args, source, skip, journal.scan)
            sink = build_sink(args, console, client, journal, check)
            try:
                budget = budget_of(args, sink.pricer, journal.scan.cost) if sink.pricer else None
                with serve_metrics(args, console) as metrics:
                    if metrics is not None:
                        sink.observers.append(metrics.record)  # counted as written
                    requests = _requests(source, check, skip, sink)
                    interrupted = await execute(
                        args,
                        spec,
                        client,
                        sink,
                        requests,
                        check,
                        budget=budget,
                        reread=lambda: _requests(source, check, skip, sink),
                        metrics=metrics,
                    )
                sink.close()  # fsync, and compaction where ids were redone
            except OutputError as exc:
                sink.abandon()
                return _output_failed(console, args, sink, check, exc)
            finally:
                sink.abandon()  # after an exception; a no-op once closed
        finally:
            journal.abandon()  # the same
        code = _finish(console, args, sink, check, interrupted)
        if not write_run_report(args, console) and code == EXIT_OK:
            code = EXIT_FAILED
        return code
    finally:
        await client.aclose()


def _client_spec(args: argparse.Namespace) -> ClientSpec:
    spec = ClientSpec(
        provider=args.provider,
        base_url=args.base_url,
        model=args.model,
        api_key_env=args.api_key_env,
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
        raise UsageError(f"cannot open OUTPUT {args.output}: {os_reason(exc)}") from None
    return journal


def _report_resume(
    console: Console, args: argparse.Namespace, scan: JournalScan
) -> Callable[[str], bool]:
    """Say what the existing output holds; return the test for ids this run leaves alone."""
    if scan.repaired_bytes:
        say(
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
        say(console, f"skipping {check.bad_count:,} bad line(s)")
    if check.skipped_done:
        kept = 0 if args.retry_failed else len(scan.failed)
        say(
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
            say(console, f"llmbatch run: error: cannot write {args.stats_json}: {os_reason(exc)}")
            return EXIT_FAILED
    for outage in sink.outages:
        how = "came back" if outage.recovered else "did not come back; remaining requests failed"
        say(console, f"server outage: {outage.duration:.1f}s without an answer, then it {how}")
    if sink.last_error is not None:  # what the server said, not only a count of codes
        say(console, f"last error: {redact(str(sink.last_error))[:500]}")
        if getattr(sink.last_error, "setting", None) == "schema_mode":
            say(
                console,
                "a server without structured output takes the schema with --schema-mode prompt",
            )
    if interrupted:
        say(
            console,
            f"interrupted: {unfinished:,} request(s) not written; rerun the same command to finish",
        )
        return EXIT_INTERRUPTED
    if sink.budget_stopped:
        spent = stats.cost or 0.0
        say(
            console,
            f"--max-cost ${args.max_cost:g} reached: ${spent:.6f} spent on {args.output} "
            f"(${sink.spent:.6f} by this run); {unfinished:,} request(s) not sent "
            f"({sink.budget_reason.removeprefix('not sent under ')}). Rerun with a higher "
            "--max-cost to go on: nothing done is bought again",
        )
        return EXIT_BUDGET
    if unfinished:
        say(console, f"--timeout passed: {unfinished:,} request(s) unfinished; rerun to finish")
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
        say(
            console,
            f"llmbatch run: error: {exc}; it is intact and holds every result (with the older "
            "lines of redone ids); rerun to compact it",
        )
        return EXIT_FAILED
    say(
        console,
        f"llmbatch run: error: {exc}; stopped after {sink.written:,} of {check.runnable:,} "
        "result(s); what was written is kept: rerun the same command to resume",
    )
    return EXIT_OUTPUT


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
        say(console, f"llmbatch run: error: {exc}")
        return EXIT_USAGE
    except asyncio.CancelledError:
        return EXIT_INTERRUPTED
