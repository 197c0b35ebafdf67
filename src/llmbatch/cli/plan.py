"""`llmbatch plan`: what a run would send, cost and take, before anything is sent.
The numbers are `llmbatch.plan(config)`'s (`llmbatch.pipeline.plan`); this draws them.

    llmbatch plan requests.jsonl --model gpt-4o-mini --rpm 500 --tpm 200000
    llmbatch plan requests.jsonl -o results.jsonl --json      # what is left of a resumed run

Takes every flag of `llmbatch run` and reads and checks the input exactly as `run` does (the
same first pass, `precheck`: bad lines reported the same way, ids already in OUTPUT left
out). It sends nothing. It prints the requests, the estimated input tokens (characters / 4,
as the rate limiter estimates them), the output tokens (bounded by `max_tokens`; expected:
the average answer already in OUTPUT if it holds any, else `--expected-output` of the bound),
the cost realtime and through a batch API (prices from genai-prices, or --price-in/--price-out)
and the time the run needs under --rpm/--tpm/--itpm/--otpm: the largest of requests / rpm,
(input + max_tokens) / tpm, input / itpm, max_tokens / otpm, in minutes, as the limiter charges.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..durations import format_duration
from ..pipeline import BadInput, ConfigError, Plan
from ..pipeline.plan import DEFAULT_EXPECTED_OUTPUT, plan
from ..pricing import DEFAULT_WORST_OUTPUT_TOKENS
from ._common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, fraction, say
from .display import print_bad
from .flags import add_run_arguments, config_from, flag_name

__all__ = ["add_parser", "main", "plan_table"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "plan",
        help="estimate a run: requests, tokens, cost (realtime and batch) and time; sends nothing",
        description="Read and check INPUT exactly as `llmbatch run` would, send nothing, and "
        "print the requests, tokens, cost and time the run needs. Takes every flag of run; "
        "with -o, only what is left of that output is planned.",
        conflict_handler="resolve",  # plan's --json (the report) replaces run's (JSON replies)
    )
    add_run_arguments(p)
    for action in p._actions:
        if "--output" in action.option_strings:
            action.required = False  # the plan of a fresh run needs no output file
    # Run's --json (JSON replies for template requests) changes no count or price here.
    g = p.add_argument_group("plan")
    g.add_argument("--json", dest="plan_json", action="store_true", help="print JSON")
    g.add_argument(
        "--expected-output",
        type=fraction,
        default=None,
        metavar="FRACTION",
        help="expected output as a fraction of max_tokens (default: the average answer in "
        f"OUTPUT, else {DEFAULT_EXPECTED_OUTPUT})",
    )


def _money(value: float | None) -> str:
    if value is None:
        return "unknown"
    return f"${value:,.2f}" if value >= 100 else f"${value:,.6f}"


def plan_table(plan: Plan, title: str) -> Table:
    table = Table(title=Text(title), show_header=False, title_justify="left")
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")
    unbounded = plan.unbounded_requests
    rows = [
        ("requests", f"{plan.requests:,}"),
        ("already done (skipped)", f"{plan.skipped_done:,}"),
        ("bad lines", f"{plan.bad_lines:,}"),
        ("input tokens (estimated)", f"{plan.input_tokens:,}"),
        ("output tokens (max_tokens bound)", f"{plan.output_tokens_max:,}"),
        ("output tokens (expected)", f"{plan.output_tokens_expected:,}"),
        (
            "cost realtime (expected / max)",
            f"{_money(plan.cost_realtime)} / {_money(plan.cost_realtime_max)}",
        ),
        (
            "cost batch API (expected / max)",
            f"{_money(plan.cost_batch)} / {_money(plan.cost_batch_max)}",
        ),
    ]
    if len(plan.cost_by_model) > 1:
        for model, usd in plan.cost_by_model.items():
            rows.append((f"cost realtime: {model or '?'}", _money(usd)))
    if plan.seconds is None:
        rows.append(("time", "unknown: give --rpm/--tpm/--itpm/--otpm"))
    else:
        rows.append(("time", f"{format_duration(plan.seconds)} (bound by --{plan.bound_by})"))
        for name, seconds in plan.seconds_by_limit.items():
            if name != plan.bound_by:
                rows.append((f"time under --{name}", format_duration(seconds)))
    rows += _deadline_rows(plan.deadline)
    rows += _prompt_cache_rows(plan.prompt_cache)
    rows += _enqueued_rows(plan.enqueued)
    for name, value in rows:
        table.add_row(Text(name), Text(value))
    notes = [f"expected output: {plan.expected_basis}"]
    if unbounded:
        notes.append(
            f"{unbounded:,} request(s) have no max_tokens: bounded here at "
            f"{DEFAULT_WORST_OUTPUT_TOKENS:,} output tokens each"
        )
    if plan.unpriced_models:
        notes.append(
            "no price known for: "
            + ", ".join(plan.unpriced_models)
            + " (pass --price-in/--price-out)"
        )
    table.caption = Text("\n".join(notes))
    table.caption_justify = "left"
    return table


def _enqueued_rows(e: dict[str, Any] | None) -> list[tuple[str, str]]:
    if e is None:
        return []
    tokens = max(e["batch_input_tokens_by_model"].values(), default=0)
    if e["waves"] <= 1:
        text = f"{tokens:,} input tokens fit under {e['limit']:,}: every batch at once"
    else:
        text = (
            f"{tokens:,} input tokens over {e['limit']:,}: batches go in {e['waves']:,} waves, "
            f"each after the one before ends (about {e['extra_turnarounds']:,} batch "
            "turnaround(s) more, up to 24 h each)"
        )
    return [("enqueued-token limit (--batch-enqueued-tokens)", text)]


def _prompt_cache_rows(c: dict[str, Any] | None) -> list[tuple[str, str]]:
    if not c or not c["shared_prefixes"]:
        return []
    return [
        (
            "prompt cache (--prompt-cache auto)",
            f"{c['shared_prefixes']:,} shared prefixes over {c['requests_in_groups']:,} requests: "
            f"{c['input_share_cached']:.0%} of input tokens read from the cache at best",
        ),
        (
            "saved by the cache (realtime / batch)",
            f"{_money(c['saved_realtime'])} / {_money(c['saved_batch'])}",
        ),
    ]


def _deadline_rows(d: dict[str, Any] | None) -> list[tuple[str, str]]:
    if d is None:
        return []
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(d["finish_by"]))
    rows = [
        ("finish by", f"{when} (in {format_duration(max(0.0, d['seconds_left']))})"),
        (
            "realtime needs, for all of it",
            f"{format_duration(d['realtime_seconds'])} (bound by --{d['realtime_bound_by']}; "
            f"{d['latency_basis']})",
        ),
        (
            "planned: batch API",
            f"{d['batch_requests']:,} requests in {d['batch_count']:,} batch(es) of up to "
            f"{d['batch_size']:,}, {_money(d['cost_batch_part'])}",
        ),
        (
            "late batches go to",
            f"{d['late_lane']}"
            + (" (batch price)" if d["late_lane"] == "flex" else " (full price)")
            + f"; if every batch were late: {_money(d['cost_if_every_batch_late'])}",
        ),
        (
            "planned: realtime",
            f"{d['realtime_requests']:,} requests, {_money(d['cost_realtime_part'])}",
        ),
    ]
    if d["switch_to_realtime_in_seconds"] is not None:
        rows.append(
            (
                "switch to realtime",
                f"at the latest in {format_duration(d['switch_to_realtime_in_seconds'])}, "
                "for whatever the batches have not answered by then",
            )
        )
    if d["reachable"]:
        rows.append(("deadline reachable", "yes, by realtime alone if no batch comes back"))
    else:
        needed = ", ".join(f"--{k} {v:,.0f}" for k, v in d["needed_limits"].items())
        rows.append(
            (
                "deadline reachable",
                f"not guaranteed: realtime is {format_duration(d['shortfall_seconds'])} short"
                + (f" (it would need {needed})" if needed else "")
                + "; only batches that come back in time can make it",
            )
        )
    return rows


def main(args: argparse.Namespace) -> int:
    console = Console(stderr=True, soft_wrap=True)
    try:
        # Plan's --json prints the plan; run's --json (JSON replies) changes no count.
        config = config_from(args, json=False)
        made = plan(config, expected_output=args.expected_output)
    except BadInput as exc:  # not raised by plan (bad lines are in the plan), kept for safety
        print_bad(console, exc.where, exc.check)
        return EXIT_USAGE
    except ConfigError as exc:
        say(console, f"llmbatch plan: error: {exc.render(flag_name)}")
        return EXIT_USAGE
    check = made.check
    assert check is not None
    if check.bad_count:
        print_bad(console, made.where, check)
    if args.plan_json:
        sys.stdout.buffer.write(orjson.dumps(made.to_dict(), option=orjson.OPT_INDENT_2) + b"\n")
    else:
        Console(soft_wrap=True).print(plan_table(made, f"llmbatch plan: {made.where}"))
    if check.bad_count and args.on_bad_line == "fail":
        say(
            console,
            f"llmbatch plan: {check.bad_count:,} bad input line(s): `run` would send nothing "
            "(fix them, or pass --on-bad-line skip)",
        )
        return EXIT_USAGE
    if made.deadline is not None and not made.deadline["reachable"]:
        return EXIT_FAILED  # scripts can tell a deadline the known limits cannot guarantee
    return EXIT_OK
