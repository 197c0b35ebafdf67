"""`llmbatch plan`: what a run would send, cost and take, before anything is sent.

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
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..deadline import Work, assumed_latency
from ..io.formats import TemplateError
from ..io.journal import iter_records
from ..pricing import DEFAULT_WORST_OUTPUT_TOKENS, Pricer
from ..text import estimate_tokens as chars_to_tokens
from ..types import CompletionRequest, Usage
from ._common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, fraction, say
from .costs import pricer_of
from .deadline_run import capacity_of, deadline_policy
from .paths import source_of
from .precheck import Precheck, precheck
from .run import _print_bad, add_run_arguments
from .structured import structured_source
from .usage import UsageError

__all__ = ["Plan", "add_parser", "main", "make_plan"]

DEFAULT_EXPECTED_OUTPUT = 0.5  # of max_tokens, when OUTPUT holds no answers to learn from


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
    p.set_defaults(json=False)
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


@dataclass(slots=True)
class _ModelLoad:
    requests: int = 0
    input_tokens: int = 0
    max_output: int = 0  # sum of max_tokens, or the assumed bound where unset
    unbounded: int = 0  # requests without max_tokens


@dataclass(slots=True)
class Plan:
    """The numbers `llmbatch plan` prints; `to_dict()` is its `--json`."""

    requests: int = 0
    bad_lines: int = 0
    skipped_done: int = 0
    input_tokens: int = 0
    output_tokens_max: int = 0
    output_tokens_expected: int = 0
    expected_basis: str = ""
    unbounded_requests: int = 0
    cost_realtime: float | None = None
    cost_realtime_max: float | None = None
    cost_batch: float | None = None
    cost_batch_max: float | None = None
    cost_by_model: dict[str, float | None] = field(default_factory=dict)
    unpriced_models: list[str] = field(default_factory=list)
    seconds: float | None = None
    bound_by: str | None = None
    seconds_by_limit: dict[str, float] = field(default_factory=dict)
    deadline: dict[str, Any] | None = None  # with --finish-by: the split and its feasibility

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "bad_lines": self.bad_lines,
            "skipped_done": self.skipped_done,
            "input_tokens_estimated": self.input_tokens,
            "output_tokens_max": self.output_tokens_max,
            "output_tokens_expected": self.output_tokens_expected,
            "expected_output_basis": self.expected_basis,
            "requests_without_max_tokens": self.unbounded_requests,
            "assumed_max_tokens_when_unset": DEFAULT_WORST_OUTPUT_TOKENS,
            "cost_usd": {
                "realtime_expected": _round(self.cost_realtime),
                "realtime_max": _round(self.cost_realtime_max),
                "batch_expected": _round(self.cost_batch),
                "batch_max": _round(self.cost_batch_max),
                "by_model_realtime_expected": {k: _round(v) for k, v in self.cost_by_model.items()},
                "unpriced_models": self.unpriced_models,
            },
            "time_seconds": None if self.seconds is None else round(self.seconds, 3),
            "time_bound_by": self.bound_by,
            "time_seconds_by_limit": {k: round(v, 3) for k, v in self.seconds_by_limit.items()},
            "deadline": self.deadline,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 8)


@dataclass(slots=True)
class _Done:
    """What an existing OUTPUT holds, read without locking or repairing it."""

    ok: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    answers: int = 0
    completion_tokens: int = 0
    realtime_answers: int = 0  # answers not from a batch API, and their seconds in total
    realtime_seconds: float = 0.0


def _read_done(path: str | None) -> _Done:
    done = _Done()
    if not path or not Path(path).is_file():
        return done
    for _, rec in iter_records(path):
        if rec is None:
            continue
        cid = rec["custom_id"]
        if rec.get("error") is None:
            done.failed.discard(cid)
            done.ok.add(cid)
            meta = rec.get("llmbatch") or {}
            usage = meta.get("usage")
            tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
            if isinstance(tokens, int) and not isinstance(tokens, bool):
                done.answers += 1
                done.completion_tokens += tokens
            duration = meta.get("duration")
            if (
                not meta.get("batch_api")
                and not meta.get("cached")
                and isinstance(duration, int | float)
                and duration > 0
            ):
                done.realtime_answers += 1
                done.realtime_seconds += float(duration)
        else:
            done.ok.discard(cid)
            done.failed.add(cid)
    return done


def make_plan(args: argparse.Namespace, pricer: Pricer) -> tuple[Plan, Precheck]:
    """Read and check the input as `run` does (raises `UsageError` as it does) and plan it."""
    # With the run's --schema (checked as run checks it; it counts in each request's input):
    # plan's own --json prints the plan, it is not run's JSON mode.
    source = structured_source(argparse.Namespace(**{**vars(args), "json": False}), source_of(args))
    done = _read_done(args.output)
    retry_failed = args.retry_failed

    def skip(rid: str) -> bool:
        return rid in done.ok or (rid in done.failed and not retry_failed)

    loads: dict[str | None, _ModelLoad] = {}
    default_model = args.model

    def observe(req: CompletionRequest) -> None:
        model = req.model or default_model
        load = loads.get(model)
        if load is None:
            load = loads[model] = _ModelLoad()
        load.requests += 1
        load.input_tokens += chars_to_tokens(req.text_length())
        if (limit := req.output_limit()) is not None:
            load.max_output += limit
        else:
            load.unbounded += 1
            load.max_output += DEFAULT_WORST_OUTPUT_TOKENS

    where = args.input or args.rows or "files"
    try:
        check = precheck(source, skip, args, observe)
    except TemplateError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"cannot read {where}: {exc}") from None
    if check.items == 0:
        raise UsageError(f"{where} holds no requests")
    plan = Plan(requests=check.runnable, bad_lines=check.bad_count, skipped_done=check.skipped_done)
    plan.input_tokens = sum(x.input_tokens for x in loads.values())
    plan.output_tokens_max = sum(x.max_output for x in loads.values())
    plan.unbounded_requests = sum(x.unbounded for x in loads.values())
    ratio, per_answer = _expected(args, done, plan)
    _price(plan, loads, pricer, ratio, per_answer)
    _time(plan, args)
    if args.finish_by is not None:
        _deadline(plan, args, done)
    return plan, check


def _expected(args: argparse.Namespace, done: _Done, plan: Plan) -> tuple[float, float | None]:
    """(fraction of the bound, or tokens per answer) the expected output is based on."""
    if args.expected_output is not None:
        plan.expected_basis = f"--expected-output {args.expected_output:g} of max_tokens"
        return args.expected_output, None
    if done.answers:
        per_answer = done.completion_tokens / done.answers
        plan.expected_basis = (
            f"the {done.answers:,} answers in {args.output}: {per_answer:,.1f} output tokens each"
        )
        return 1.0, per_answer
    plan.expected_basis = (
        f"assumed {DEFAULT_EXPECTED_OUTPUT:g} of max_tokens (no answers to learn from yet; "
        "pass --expected-output, or plan again with -o after a sample run)"
    )
    return DEFAULT_EXPECTED_OUTPUT, None


def _price(
    plan: Plan,
    loads: dict[str | None, _ModelLoad],
    pricer: Pricer,
    ratio: float,
    per_answer: float | None,
) -> None:
    sums = {"rt": 0.0, "rt_max": 0.0, "b": 0.0, "b_max": 0.0}
    priced = False
    expected_total = 0
    for model, load in sorted(loads.items(), key=lambda kv: kv[0] or ""):
        if per_answer is not None:
            expected = min(load.max_output, round(per_answer * load.requests))
        else:
            expected = round(load.max_output * ratio)
        expected_total += expected
        name = model or ""

        def cost(
            output: int, batch: bool, load: _ModelLoad = load, name: str = name
        ) -> float | None:
            usage = Usage(prompt_tokens=load.input_tokens, completion_tokens=output)
            if not name:
                return None
            return pricer.source.price(name, pricer.provider, usage, batch)

        realtime = cost(expected, False)
        plan.cost_by_model[name] = realtime
        if realtime is None:
            plan.unpriced_models.append(name or "(no model: pass --model)")
            continue
        priced = True
        sums["rt"] += realtime
        sums["rt_max"] += cost(load.max_output, False) or 0.0
        sums["b"] += cost(expected, True) or 0.0
        sums["b_max"] += cost(load.max_output, True) or 0.0
    plan.output_tokens_expected = expected_total
    if priced or not loads:  # nothing left to send costs nothing
        plan.cost_realtime, plan.cost_realtime_max = sums["rt"], sums["rt_max"]
        plan.cost_batch, plan.cost_batch_max = sums["b"], sums["b_max"]


def _work(plan: Plan) -> Work:
    return Work(plan.requests, plan.input_tokens, plan.output_tokens_max)


def _time(plan: Plan, args: argparse.Namespace) -> None:
    """Minutes each per-minute limit needs for the whole run, as the limiter charges them."""
    plan.seconds_by_limit = capacity_of(args, None).limits(_work(plan))
    if plan.seconds_by_limit:
        plan.bound_by, plan.seconds = max(plan.seconds_by_limit.items(), key=lambda kv: kv[1])


def _deadline(plan: Plan, args: argparse.Namespace, done: _Done) -> None:
    """--finish-by: how the work splits between the batch API and realtime, and whether the
    deadline is reachable at all (by the realtime path alone, under the known limits)."""
    if done.realtime_answers:
        latency = done.realtime_seconds / done.realtime_answers
        basis = f"{latency:.2f}s per request, the average of {done.realtime_answers:,} in OUTPUT"
    else:
        latency = assumed_latency(_work(plan))  # as the run assumes until it has seen one
        basis = f"{latency:.2f}s per request, assumed from max_tokens"
    capacity = capacity_of(args, latency)
    work = _work(plan)
    now = time.time()
    split = deadline_policy(args.finish_by, args.prefer, now).plan(now, work, capacity)

    def cost(part: Work, total: float | None) -> float | None:
        if total is None:
            return None
        return total * part.requests / plan.requests if plan.requests else 0.0

    plan.deadline = {
        "prefer": args.prefer,
        "finish_by": args.finish_by,
        "seconds_left": round(split.available, 3),
        "realtime_seconds": round(split.realtime_seconds, 3),
        "realtime_bound_by": capacity.binding(work),
        "latency_basis": basis,
        "reachable": split.reachable,
        "shortfall_seconds": round(split.shortfall, 3),
        "needed_limits": split.needed,
        "batch_requests": split.batch.requests,
        "realtime_requests": split.realtime.requests,
        "cost_batch_part": _round(cost(split.batch, plan.cost_batch)),
        "cost_realtime_part": _round(cost(split.realtime, plan.cost_realtime)),
        "switch_to_realtime_in_seconds": (
            None if split.switch_in is None else round(split.switch_in, 3)
        ),
    }


def _money(value: float | None) -> str:
    if value is None:
        return "unknown"
    return f"${value:,.2f}" if value >= 100 else f"${value:,.6f}"


def _duration(seconds: float) -> str:
    seconds = math.ceil(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


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
        rows.append(("time", f"{_duration(plan.seconds)} (bound by --{plan.bound_by})"))
        for name, seconds in plan.seconds_by_limit.items():
            if name != plan.bound_by:
                rows.append((f"time under --{name}", _duration(seconds)))
    rows += _deadline_rows(plan.deadline)
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


def _deadline_rows(d: dict[str, Any] | None) -> list[tuple[str, str]]:
    if d is None:
        return []
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(d["finish_by"]))
    rows = [
        ("finish by", f"{when} (in {_duration(max(0.0, d['seconds_left']))})"),
        (
            "realtime needs, for all of it",
            f"{_duration(d['realtime_seconds'])} (bound by --{d['realtime_bound_by']}; "
            f"{d['latency_basis']})",
        ),
        (
            "planned: batch API",
            f"{d['batch_requests']:,} requests, {_money(d['cost_batch_part'])}",
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
                f"at the latest in {_duration(d['switch_to_realtime_in_seconds'])}, "
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
                f"not guaranteed: realtime is {_duration(d['shortfall_seconds'])} short"
                + (f" (it would need {needed})" if needed else "")
                + "; only batches that come back in time can make it",
            )
        )
    return rows


def main(args: argparse.Namespace) -> int:
    console = Console(stderr=True, soft_wrap=True)

    try:
        # Unpriced models are listed in the plan itself, not warned about.
        pricer = pricer_of(args, lambda message: None)
        plan, check = make_plan(args, pricer)
    except UsageError as exc:
        say(console, f"llmbatch plan: error: {exc}")
        return EXIT_USAGE
    where = args.input or args.rows or "files"
    if check.bad_count:
        _print_bad(console, where, check)
    if args.plan_json:
        sys.stdout.buffer.write(orjson.dumps(plan.to_dict(), option=orjson.OPT_INDENT_2) + b"\n")
    else:
        Console(soft_wrap=True).print(plan_table(plan, f"llmbatch plan: {where}"))
    if check.bad_count and args.on_bad_line == "fail":
        say(
            console,
            f"llmbatch plan: {check.bad_count:,} bad input line(s): `run` would send nothing "
            "(fix them, or pass --on-bad-line skip)",
        )
        return EXIT_USAGE
    if plan.deadline is not None and not plan.deadline["reachable"]:
        return EXIT_FAILED  # scripts can tell a deadline the known limits cannot guarantee
    return EXIT_OK
