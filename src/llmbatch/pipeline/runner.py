"""The run pipeline: `llmbatch.run(config)` reads, checks, executes, writes, summarises.

    summary = llmbatch.run(RunConfig(input="in.jsonl", output="out.jsonl", model="m"))
    summary = await llmbatch.arun(config, control=control)   # control.stop(): an interrupt

The steps, top to bottom in `arun`: check the settings and paths; open the output (the
journal, `llmbatch.io.journal`: ids it holds are skipped); check every input line before
anything is sent; build the one sink every result goes through (`llmbatch.io.sink`);
execute (one executor, `llmbatch.run.executors`, drained by the one harness); close the
output; summarise (stats of the whole output, `stats_json`, the report). The input is read
twice, streaming both times: the check, then the requests themselves.

Nothing here prints: events go to the config's listeners (`llmbatch.run.events`), the
outcome is the returned `RunSummary`, and an unusable setting is a `ConfigError` raised
before anything is sent. If the output cannot be written mid-run (a full disk), sending
stops at once, what is in flight is cancelled and the summary says so (`exit_code` 3);
what was written stays and a rerun resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson

from ..batch_api import Ledger, LedgerError, ledger_paths
from ..batch_api.providers import BATCH_PROVIDERS
from ..clients import PROVIDERS, ClientConfigError, ClientSpec
from ..clients.provider import ProviderClient
from ..errorlog import ErrorHandler
from ..io.atomic import os_reason
from ..io.cache import CacheError, SQLiteCache, request_key
from ..io.finished import IdTable
from ..io.formats import BadLine
from ..io.journal import Journal, JournalLocked, JournalScan, journal_stats
from ..io.sink import OutputError, ResultSink
from ..metrics import MetricsListener, MissingExtraError
from ..prompt_cache.census import PrefixCensus
from ..redact import redact
from ..types import BatchRequest, CompletionRequest
from .config import RunConfig
from .costs import budget_of, pricer_of, until_budget_spent
from .errors import ConfigError
from .events import Emitter, InputChecked, OutputOpened, ResultWritten, RunNotice
from .executors import (
    Context,
    DeadlineExecutor,
    Executor,
    executor_for,
    reply_policy,
)
from .harness import RunControl, drain
from .paths import check_paths, make_error_log_dir
from .precheck import Precheck, check_input
from .prompt_cache import with_prompt_cache
from .source import Source, source_of, where_of
from .summary import DeadlineOutcome, RunSummary

__all__ = ["arun", "run"]

# What a path that cannot be a cache gives at construction.
_CACHE_OPEN_ERRORS = (sqlite3.Error, OSError, CacheError)


def run(config: RunConfig, *, control: RunControl | None = None) -> RunSummary:
    """Run `config` to the end in a new event loop (see `arun`). Ctrl-C cancels the run:
    the output keeps what was written and the same call resumes."""
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        return runner.run(arun(config, control=control))


async def arun(config: RunConfig, *, control: RunControl | None = None) -> RunSummary:
    """Run `config`: every request sent (or answered by the cache) and written once.

    Raises `ConfigError` (nothing sent) for an unusable setting, path or input, and
    `BatchAPIFailed` when the provider's batch API cannot go on (what was created is in the
    ledger). Everything else, failed requests and a failing output included, is in the
    returned summary. A cancel of the calling task propagates after the output is closed.
    """
    if not config.output:
        raise ConfigError("output", "`output` is required: the file results are written to")
    emit = Emitter(config.listeners)
    source = source_of(config)
    # Until the executor starts, the run may still be refused (a setting, the input): then it
    # leaves nothing new behind (`_Fresh`, `Journal.discard`), whatever it already created.
    # Nothing is created before the output's lock is held, and what is new is noted only then:
    # a run refused for a busy output, or one noting a cache as new that another run made a
    # moment later, would otherwise remove the other run's files.
    refused = True
    check_paths(config)
    _check_modes(config)
    _check_report(config)
    _check_watch(config)
    client, spec = _client(config)
    try:
        journal = _open_output(config)
        fresh = _Fresh(config)
        try:
            make_error_log_dir(config)
            scan = journal.scan
            emit(OutputOpened(config.output, scan.repaired_bytes, tuple(scan.corrupt_lines)))
            skip = _skip(config, scan)
            # The shared prefixes are counted in the same first pass (bounded memory).
            census = PrefixCensus(model=config.model) if config.prompt_cache == "auto" else None
            check = _check_input(config, source, skip, None if census is None else census.observe)
            emit(
                InputChecked(
                    where_of(config), check, 0 if config.retry_failed else scan.failed_count
                )
            )
            sink = _build_sink(config, client, journal, check, emit)
            executor: Executor | None = None
            output_error: OutputError | None = None
            interrupted = False
            try:
                budget = budget_of(config, sink.pricer, scan.cost) if sink.pricer else None
                with (
                    _serve_metrics(config, emit) as metrics,
                    _serve_live_page(config, emit, check),
                ):
                    if metrics is not None:
                        sink.observers.append(metrics.record)  # counted as written
                    if emit.listeners:  # nothing per result when nobody listens
                        sink.observers.append(lambda result: emit(ResultWritten(result)))

                    def reread() -> Iterator[BatchRequest]:
                        return _requests(source, check, skip, sink)

                    context = Context(
                        config,
                        client,
                        spec,
                        sink,
                        emit,
                        check.runnable,
                        reread,
                        budget=budget,
                        metrics=metrics,
                        replies=reply_policy(config),
                    )
                    executor = with_prompt_cache(executor_for(context), context, census)
                    # Nothing left to send (a rerun of a finished run): the input is not
                    # read a second time.
                    requests: Iterator[BatchRequest] = reread() if check.runnable else iter(())
                    refused = False
                    if budget is not None and executor.name in ("realtime", "ray"):
                        # Once the budget refused one, the rest are not even pulled (they
                        # stay unfinished, for the rerun): the run ends with its last call.
                        # A batch run checks its budget per batch.
                        requests = until_budget_spent(
                            requests, lambda: sink.budget_stopped or budget.exhausted is not None
                        )
                    interrupted = await drain(
                        executor,
                        requests,
                        sink,
                        emit=emit,
                        total=check.runnable,
                        control=control,
                    )
                sink.close()  # fsync, and compaction where ids were redone
            except OutputError as exc:
                sink.abandon()
                output_error, interrupted = exc, False
            finally:
                sink.abandon(discard=refused)  # after an exception; a no-op once closed
        finally:
            if refused:
                journal.discard()  # what the refused run created goes
                fresh.remove()
            journal.abandon()  # after an exception; a no-op once closed
    finally:
        if config.client is None:
            await client.aclose()
    return _summarize(config, sink, check, executor, interrupted, output_error)


class _Fresh:
    """The paths a run creates besides its output's (the error log's directories, the cache
    file): those not there when the run began are removed if it is refused, empty
    directories only. The output's own files are the journal's (`Journal.discard`)."""

    def __init__(self, config: RunConfig) -> None:
        self.new: list[Path] = []
        if config.cache:
            cache = Path(config.cache)
            self.new += [
                p
                for p in (cache, *(cache.with_name(cache.name + x) for x in _SQLITE_SIDECARS))
                if not os.path.lexists(p)
            ]
        if config.error_log:
            folder = Path(config.error_log).absolute()
            for level in (folder, *folder.parents):  # deepest first
                if os.path.lexists(level):
                    break
                self.new.append(level)

    def remove(self) -> None:
        for path in self.new:
            with contextlib.suppress(OSError):  # a directory something was put in stays
                if path.is_dir() and not path.is_symlink():
                    path.rmdir()
                else:
                    path.unlink()
        self.new = []


_SQLITE_SIDECARS = ("-journal", "-wal", "-shm")


# -- the steps, in order ----------------------------------------------------------------------


def _check_modes(config: RunConfig) -> None:
    """Refuse combinations that cannot work, before anything is read or sent."""
    if config.provider not in PROVIDERS:
        raise ConfigError(
            "provider",
            f"`provider`: unknown provider {config.provider!r}: use one of "
            + ", ".join(sorted(PROVIDERS)),
        )
    if config.endpoint != "chat" and config.provider != "openai":
        raise ConfigError(
            "endpoint",
            f"`endpoint` {config.endpoint!r} is OpenAI's Responses API; provider "
            f"{config.provider!r} takes chat requests",
        )
    if config.service_tier is not None:
        if config.provider != "openai":
            raise ConfigError(
                "service_tier",
                "`service_tier` is for OpenAI-compatible APIs (OpenAI, Azure OpenAI, Groq); "
                f"provider {config.provider!r} has no flex tier here",
            )
        if config.batch_api and config.finish_by is None:
            raise ConfigError(
                "service_tier",
                "`service_tier` applies to realtime requests and a batch is batch-priced "
                "already: drop one of `service_tier` and `batch_api` (or give `finish_by`, "
                "which mixes batches with flex)",
            )
    if config.finish_by is not None:
        if config.ray:
            raise ConfigError(
                "finish_by",
                "`finish_by` and `ray` do not combine: the deadline run mixes the provider's "
                "batch API with local realtime requests; drop `ray`",
            )
        if config.provider not in BATCH_PROVIDERS:
            raise ConfigError(
                "finish_by", f"`finish_by`: provider {config.provider!r} has no batch API here"
            )
    if not config.batch_api:
        _refuse_realtime_over_live_batches(config.output)
        return
    if config.ray:
        raise ConfigError(
            "batch_api",
            "`batch_api` and `ray` do not combine: the provider runs a batch, there is "
            "nothing to spread over workers; drop one of them",
        )
    if config.provider not in BATCH_PROVIDERS:
        raise ConfigError(
            "batch_api", f"`batch_api`: provider {config.provider!r} has no batch API here"
        )


def _refuse_realtime_over_live_batches(output: str) -> None:
    # A realtime run would send (and pay for) the lines the provider is still running as a
    # batch; the next batch run would then collect those answers too.
    path, _ = ledger_paths(output)
    if not path.exists():
        return
    try:
        live = [r.n for r in Ledger.read(output).chunks if r.live]
    except LedgerError as exc:
        raise ConfigError("output", str(exc)) from None
    if live:
        raise ConfigError(
            "batch_api",
            f"{output} has {len(live)} provider batch(es) not collected yet ({path}): run "
            "again with `batch_api` to collect them (`llmbatch batches cancel` first to stop "
            "them), or move the ledger away to send their lines in realtime and pay for them "
            "again",
        )


def _client(config: RunConfig) -> tuple[ProviderClient, ClientSpec | None]:
    """The run's client: the one given, or built from the environment's key."""
    if config.client is not None:
        if config.ray:
            raise ConfigError(
                "ray",
                "`ray`: Ray workers build their own clients: give `provider`/`base_url`/"
                "`api_key_env` instead of a client object",
            )
        return config.client, None
    spec = ClientSpec(
        provider=config.provider,
        base_url=config.base_url,
        model=config.model,
        api_key_env=config.api_key_env,
    )
    if config.api_key_env and not os.environ.get(spec.key_env):
        raise ConfigError(
            "api_key_env", f"`api_key_env` {spec.key_env}: that environment variable is not set"
        )
    if config.ray:
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ConfigError("ray", "`ray` needs Ray: pip install 'llmbatch[ray]'") from None
    try:
        return spec.build(), spec
    except ClientConfigError as exc:
        if exc.field == "base_url":
            raise ConfigError("base_url", f"`base_url`: {exc.reason}") from None
        raise ConfigError("api_key_env", f"{exc.source or '`api_key_env`'}: {exc.reason}") from None


def _check_report(config: RunConfig) -> None:
    if config.report is None:
        return
    try:
        import plotly  # noqa: F401
    except ImportError:
        raise ConfigError(
            "report", "`report` needs plotly: pip install 'llmbatch[report]'"
        ) from None


def _check_watch(config: RunConfig) -> None:
    if config.watch is None:
        return
    try:
        import plotly  # noqa: F401
    except ImportError:
        raise ConfigError(
            "watch", "`watch` (the live page) needs plotly: pip install 'llmbatch[report]'"
        ) from None


@contextlib.contextmanager
def _serve_live_page(config: RunConfig, emit: Emitter, check: Precheck) -> Iterator[None]:
    """The live page (`llmbatch.watch`) for the block; nothing without `watch`. It reads the
    output as `llmbatch watch` would from another process; the run only adds its total."""
    if config.watch is None:
        yield
        return
    from ..watch import LiveState, serve_live_page

    total = check.skipped_done + check.runnable  # the input's ids, done before or to do now
    state = LiveState(config.output, total=lambda: total, limit_rpm=config.rpm)
    try:
        server = serve_live_page(state, config.watch)
    except OSError as exc:
        raise ConfigError(
            "watch", f"`watch` {config.watch}: cannot listen on 127.0.0.1 ({os_reason(exc)})"
        ) from None
    emit(RunNotice(f"live page at {server.url}", level="info"))
    try:
        yield
    finally:
        server.close()


def _open_output(config: RunConfig) -> Journal:
    journal = Journal(config.output)
    try:
        journal.open()
    except JournalLocked as exc:
        raise ConfigError("output", str(exc)) from None
    except OSError as exc:
        raise ConfigError(
            "output", f"cannot open `output` {config.output}: {os_reason(exc)}"
        ) from None
    return journal


def _skip(config: RunConfig, scan: JournalScan) -> Callable[[str], bool]:
    """The test for ids this run leaves alone: answered, or failed without `retry_failed`."""
    if config.retry_failed:
        return scan.is_ok

    def skip(rid: str) -> bool:
        # `scan.finished` looked up per call, not bound: the summary frees the table.
        return scan.finished.status(rid) is not None

    return skip


def _check_input(
    config: RunConfig,
    source: Source,
    skip: Callable[[str], bool],
    observe: Callable[[CompletionRequest], None] | None = None,
) -> Precheck:
    """The first pass: every line checked, the work counted; bad input stops the run here."""
    where = where_of(config)
    check = check_input(source, skip, config, where, observe)
    if check.bad_count and config.on_bad_line == "fail":
        raise BadInput(check, where)
    return check


class BadInput(ConfigError):
    """Bad input lines and `on_bad_line="fail"`: nothing was sent. `check.bad` holds the
    first lines found (`check.bad_count` in all)."""

    def __init__(self, check: Precheck, where: str) -> None:
        self.check = check
        self.where = where
        shown = "; ".join(f"{where} {entry}" for entry in check.bad[:3])
        super().__init__(
            "on_bad_line",
            f"{check.bad_count:,} bad input line(s); nothing was sent (fix them, or set "
            f"`on_bad_line` to skip): {shown}",
        )


def _build_sink(
    config: RunConfig,
    client: ProviderClient,
    journal: Journal,
    check: Precheck,
    emit: Emitter,
) -> ResultSink:
    """The one owner of results: output file, error log, cache, what is left."""
    cache = None
    if config.cache:
        provider, base_url = config.provider, client.base_url

        def key(req: CompletionRequest) -> str:
            return request_key(provider, base_url, req.model or client.model, client.body_for(req))

        try:
            cache = SQLiteCache(config.cache, key)
        except _CACHE_OPEN_ERRORS as exc:
            raise ConfigError(
                "cache", f"`cache` {config.cache}: cannot be used as a cache ({exc})"
            ) from None
    error_log = (
        ErrorHandler(config.error_log, prompt_section=config.prompt_section)
        if config.error_log
        else None
    )
    return ResultSink(
        journal,
        expected=check.runnable,
        error_log=error_log,
        cache=cache,
        warn=emit.warn,
        pricer=pricer_of(config, emit.warn),
    )


@contextlib.contextmanager
def _serve_metrics(config: RunConfig, emit: Emitter) -> Iterator[MetricsListener | None]:
    """The run's metrics, served for the block; None without `metrics_port`."""
    if config.metrics_port is None:
        yield None
        return
    try:
        metrics = MetricsListener(count_finished=False)
    except MissingExtraError as exc:
        raise ConfigError("metrics_port", f"`metrics_port`: {exc}") from None
    try:
        server = metrics.serve(config.metrics_port, config.metrics_host)
    except OSError as exc:
        raise ConfigError(
            "metrics_port",
            f"`metrics_port` {config.metrics_port}: cannot listen on "
            f"{config.metrics_host}:{config.metrics_port} ({os_reason(exc)})",
        ) from None
    emit(RunNotice(f"metrics at {server.url}", level="info"))
    try:
        yield metrics
    finally:
        server.close()


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


def _summarize(
    config: RunConfig,
    sink: ResultSink,
    check: Precheck,
    executor: Executor | None,
    interrupted: bool,
    output_error: OutputError | None,
) -> RunSummary:
    """The whole output's stats, `stats_json` and the report, and the summary."""
    scan = sink.journal.scan
    scan.finished = IdTable()  # no longer asked (the output is closed): freed before the stats
    stats = journal_stats(config.output, superseded=scan.superseded)
    unfinished = sink.unfinished
    stats_json_error = report_error = None
    if config.stats_json and output_error is None:
        payload = stats.to_dict() | {
            "bad_lines": check.bad_count,
            "unfinished": unfinished,
            "interrupted": interrupted,
        }
        try:
            Path(config.stats_json).write_bytes(orjson.dumps(payload, option=orjson.OPT_INDENT_2))
        except OSError as exc:
            stats_json_error = f"cannot write {config.stats_json}: {os_reason(exc)}"
    report = None
    if config.report is not None and output_error is None:
        from ..report import write_report

        try:
            write_report(config.output, config.report, limit_rpm=config.rpm)
            report = config.report
        except OSError as exc:
            report_error = f"cannot write the report {config.report}: {os_reason(exc)}"
    return RunSummary(
        output=config.output,
        executor="" if executor is None else executor.name,
        stats=stats,
        total=check.runnable,
        written=sink.written,
        unfinished=unfinished,
        skipped_done=check.skipped_done,
        bad_lines=check.bad_count,
        spent=sink.spent,
        interrupted=interrupted,
        budget_stopped=sink.budget_stopped,
        budget_reason=sink.budget_reason,
        outages=tuple(sink.outages),
        last_error=None if sink.last_error is None else redact(str(sink.last_error))[:500],
        last_error_setting=getattr(sink.last_error, "setting", None),
        deadline=_deadline_outcome(config, executor, sink),
        output_error=None if output_error is None else str(output_error),
        output_intact=output_error is not None and output_error.compacting,
        stats_json_error=stats_json_error,
        report=report,
        report_error=report_error,
    )


def _deadline_outcome(
    config: RunConfig, executor: Executor | None, sink: ResultSink
) -> DeadlineOutcome | None:
    if not isinstance(executor, DeadlineExecutor) or executor.runner is None:
        return None
    runner = executor.runner
    s = runner.status()
    deadline = config.deadline
    assert deadline is not None
    return DeadlineOutcome(
        deadline=deadline,
        seconds_left=deadline - time.time(),
        batch_done=s.batch_done,
        realtime_done=s.realtime_done,
        switched_with=None if runner.switched is None else runner.switched.seconds_left,
        duplicates=sink.duplicates,
        duplicate_cost=sink.duplicate_cost,
    )


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when installed, for `asyncio.Runner(loop_factory=...)`.

    (`uvloop.install()` sets a global policy, deprecated from Python 3.12.)
    """
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
