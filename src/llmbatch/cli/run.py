"""`llmbatch run`: a file of requests in, a file of results out, resumable after any crash.

    llmbatch run requests.jsonl -o results.jsonl --model gpt-4o-mini --rpm 500
    llmbatch run --template "Summarize: {content}" --files "docs/**/*.md" -o out.jsonl

The flags become a `RunConfig` (`cli.flags`), `llmbatch.arun` does the run, and
`cli.display` draws it and says what the outcome means. Ctrl-C or SIGTERM stops the run as
an interrupt (exit 130; what was written is kept, provider batches keep running); a second
one cancels at once.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from rich.console import Console

from ..pipeline import BadInput, BatchAPIFailed, ConfigError, RunControl, arun
from ..pipeline.errors import name_fields
from ._common import EXIT_INTERRUPTED, EXIT_USAGE, event_loop_factory, say
from .display import RunDisplay, print_bad, print_summary
from .flags import add_run_arguments, config_from, flag_name

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


def main(args: argparse.Namespace) -> int:
    # soft_wrap: messages name files and lines; never break them across terminal rows.
    console = Console(stderr=True, soft_wrap=True)
    display = RunDisplay(console, no_progress=args.no_progress)
    control = RunControl()

    async def guarded() -> int:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()

        def stop() -> None:
            if control.stopped:
                task.cancel()  # the second signal: stop waiting for the cleanup
            control.stop()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop)
        config = config_from(args, listeners=[display])
        summary = await arun(config, control=control)
        return print_summary(console, config, summary)

    try:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            return runner.run(guarded())
    except BadInput as exc:
        print_bad(console, exc.where, exc.check)
        say(
            console,
            f"llmbatch run: error: {exc.check.bad_count:,} bad input line(s); nothing was sent "
            "(fix them, or pass --on-bad-line skip)",
        )
        return EXIT_USAGE
    except ConfigError as exc:
        say(console, f"llmbatch run: error: {exc.render(flag_name)}")
        return EXIT_USAGE
    except BatchAPIFailed as exc:
        say(console, f"llmbatch run: error: {name_fields(str(exc), flag_name)}")
        return EXIT_USAGE
    except asyncio.CancelledError:
        return EXIT_INTERRUPTED
