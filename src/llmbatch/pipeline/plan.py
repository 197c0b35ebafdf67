"""`llmbatch.plan(config)`: what a run would send, cost and take, before anything is sent.

    plan = llmbatch.plan(RunConfig(input="in.jsonl", model="gpt-4o-mini", rpm=500))
    plan.requests, plan.cost_realtime, plan.cost_batch, plan.seconds, plan.bound_by

Reads and checks the input exactly as a run does (the same first pass, `precheck`: bad
lines found the same way, ids already in `output` left out). It sends nothing. It counts
the requests, the estimated input tokens (characters / 4, as the rate limiter estimates
them), the output tokens (bounded by `max_tokens`; expected: the average answer already in
the output if it holds any, else `expected_output` of the bound), the cost realtime and
through a batch API, and the time the run needs under rpm/tpm/itpm/otpm: the largest of
requests / rpm, (input + max_tokens) / tpm, input / itpm, max_tokens / otpm, in minutes, as
the limiter charges. With `prompt_cache="auto"`, what the provider's prompt cache should
save at best (`llmbatch.prompt_cache.estimate`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..deadline import Work, assumed_latency, split_size
from ..io.finished import IdTable
from ..io.index import StaleIndex, entries, expected_lines
from ..pricing import DEFAULT_WORST_OUTPUT_TOKENS, Pricer
from ..prompt_cache.census import PrefixCensus
from ..prompt_cache.estimate import estimate
from ..text import chars_to_tokens
from ..types import CompletionRequest, Usage
from .capacity import capacity_of, deadline_policy
from .config import RunConfig
from .costs import pricer_of
from .errors import ConfigError
from .precheck import Precheck, check_input
from .source import source_of, where_of

__all__ = ["DEFAULT_EXPECTED_OUTPUT", "Plan", "plan"]

DEFAULT_EXPECTED_OUTPUT = 0.5  # of max_tokens, when the output holds no answers to learn from


def plan(config: RunConfig, *, expected_output: float | None = None) -> Plan:
    """Plan `config` (raises `ConfigError` as a run would, bad lines aside: they are in
    `Plan.check`). `expected_output`: the expected answer as a fraction of max_tokens."""
    if expected_output is not None and not 0.0 <= expected_output <= 1.0:
        raise ConfigError(
            "expected_output", f"`expected_output` must be between 0 and 1, got {expected_output}"
        )
    # Unpriced models are listed in the plan itself, not warned about.
    pricer = pricer_of(config, lambda message: None)
    return make_plan(config, pricer, expected_output)


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
    deadline: dict[str, Any] | None = None  # with `finish_by`: the split and its feasibility
    prompt_cache: dict[str, Any] | None = None  # with `prompt_cache="auto"`: what it saves
    enqueued: dict[str, Any] | None = None  # with `batch_enqueued_tokens`: batches in waves
    check: Precheck | None = None  # the first pass: bad lines found
    where: str = ""  # how messages name the input

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
            "prompt_cache": self.prompt_cache,
            "enqueued": self.enqueued,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 8)


@dataclass(slots=True)
class _Done:
    """What an existing OUTPUT holds, read without locking or repairing it: its finished ids
    (the compact table a resume uses; newest line per id) and the answers' averages."""

    finished: IdTable = field(default_factory=IdTable)
    answers: int = 0
    completion_tokens: int = 0
    realtime_answers: int = 0  # answers not from a batch API, and their seconds in total
    realtime_seconds: float = 0.0


def _read_done(path: str | None) -> _Done:
    if not path or not Path(path).is_file():
        return _Done()
    for trust in (True, False):
        done = _Done(IdTable(expected_lines(path)))
        try:
            for e in entries(path, trust_index=trust):
                if not e.custom_id:
                    continue
                done.finished.add(e.custom_id, e.line, e.ok)
                if not e.ok:
                    continue
                if e.completion_tokens is not None:
                    done.answers += 1
                    done.completion_tokens += e.completion_tokens
                if not e.batch_api and not e.cached and e.duration > 0:
                    done.realtime_answers += 1
                    done.realtime_seconds += e.duration
        except StaleIndex:
            continue
        return done
    raise AssertionError("unreachable: the second pass does not trust the index")


def make_plan(config: RunConfig, pricer: Pricer, expected_output: float | None = None) -> Plan:
    """Read and check the input as a run does (raises `ConfigError` as it does), plan it."""
    # With the run's schema (checked as a run checks it; it counts in each request's input).
    # JSON mode changes no count or price.
    source = source_of(config.replace(json=False))
    done = _read_done(config.output)
    retry_failed = config.retry_failed

    status = done.finished.status

    def skip(rid: str) -> bool:
        found = status(rid)
        return found is True or (found is False and not retry_failed)

    loads: dict[str | None, _ModelLoad] = {}
    default_model = config.model

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

    census = PrefixCensus(model=config.model) if config.prompt_cache == "auto" else None

    def observe_all(req: CompletionRequest) -> None:
        observe(req)
        if census is not None:
            census.add(req)

    where = where_of(config)
    check = check_input(source, skip, config, where, observe_all)
    plan = Plan(
        requests=check.runnable,
        bad_lines=check.bad_count,
        skipped_done=check.skipped_done,
        check=check,
        where=where,
    )
    plan.input_tokens = sum(x.input_tokens for x in loads.values())
    plan.output_tokens_max = sum(x.max_output for x in loads.values())
    plan.unbounded_requests = sum(x.unbounded for x in loads.values())
    ratio, per_answer = _expected(config, expected_output, done, plan)
    _price(plan, loads, pricer, ratio, per_answer)
    _time(plan, config)
    if census is not None:
        _prompt_cache(plan, config, census, pricer, loads)
    if config.finish_by is not None:
        _deadline(plan, config, done, pricer)
    if config.batch_api and config.batch_enqueued_tokens is not None:
        _enqueued(plan, config.batch_enqueued_tokens, loads)
    return plan


def _enqueued(plan: Plan, limit: int, loads: dict[str | None, _ModelLoad]) -> None:
    """How the enqueued-token limit serializes the batches: a model whose batches hold more
    input tokens than the limit sends them in waves, each after the one before has ended
    (with `finish_by`, only the share planned for batches counts)."""
    share = 1.0
    if plan.deadline is not None and plan.requests:
        share = plan.deadline["batch_requests"] / plan.requests
    tokens = {model or "": round(load.input_tokens * share) for model, load in loads.items()}
    waves = max((math.ceil(t / limit) for t in tokens.values() if t), default=0)
    plan.enqueued = {
        "limit": limit,
        "batch_input_tokens_by_model": tokens,
        "waves": waves,
        # Each wave after the first waits for a batch's turnaround (up to the 24 h window).
        "extra_turnarounds": max(0, waves - 1),
    }


def _expected(
    config: RunConfig, expected_output: float | None, done: _Done, plan: Plan
) -> tuple[float, float | None]:
    """(fraction of the bound, or tokens per answer) the expected output is based on."""
    if expected_output is not None:
        plan.expected_basis = f"`expected_output` {expected_output:g} of max_tokens"
        return expected_output, None
    if done.answers:
        per_answer = done.completion_tokens / done.answers
        plan.expected_basis = (
            f"the {done.answers:,} answers in {config.output}: {per_answer:,.1f} output tokens each"
        )
        return 1.0, per_answer
    plan.expected_basis = (
        f"assumed {DEFAULT_EXPECTED_OUTPUT:g} of max_tokens (no answers to learn from yet; "
        "give `expected_output`, or plan again with `output` after a sample run)"
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
            # One average request times the requests: tiered prices (Claude above 200k
            # input tokens) apply per request, never to the run's sum.
            if not name:
                return None
            n = max(1, load.requests)
            usage = Usage(round(load.input_tokens / n), round(output / n))
            price = pricer.source.price(name, pricer.provider, usage, batch)
            return None if price is None else price * n

        realtime = cost(expected, False)
        plan.cost_by_model[name] = realtime
        if realtime is None:
            plan.unpriced_models.append(name or "(no model: give `model`)")
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


def _prompt_cache(
    plan: Plan,
    config: RunConfig,
    census: PrefixCensus,
    pricer: Pricer,
    loads: dict[str | None, _ModelLoad],
) -> None:
    """The best case of `prompt_cache="auto"` (`llmbatch.prompt_cache.estimate`): tokens
    read and written, and the input cost it saves, realtime and by batch API (priced as the
    run's `model`: the census does not keep a prefix's model)."""
    model = config.model
    saved: dict[str, float | None] = {}
    for mode, batch in (("realtime", False), ("batch", True)):
        found = estimate(census, provider=config.provider, model=model, batch=batch)
        if mode == "realtime":
            plan.prompt_cache = {
                "shared_prefixes": found.groups,
                "requests_in_groups": found.requests,
                "cached_tokens_expected": found.read_tokens,
                "cache_write_tokens_expected": found.write_tokens,
                "input_share_cached": round(found.read_tokens / plan.input_tokens, 4)
                if plan.input_tokens
                else 0.0,
            }
        if not model or not found.groups:
            saved[mode] = 0.0 if found.groups == 0 else None
            continue
        # Priced as one average request times the requests: tiered prices (Claude above
        # 200k input tokens) apply per request, not to the run's sum.
        n = max(1, plan.requests)
        inputs = sum(x.input_tokens for x in loads.values())
        with_cache = Usage(
            round(inputs / n),
            cached_tokens=round(found.read_tokens / n),
            cache_write_tokens=round(found.write_tokens / n),
            cache_write_1h_tokens=round(found.write_1h_tokens / n),
        )
        plain = pricer.source.price(model, pricer.provider, Usage(round(inputs / n)), batch)
        cached = pricer.source.price(model, pricer.provider, with_cache, batch)
        saved[mode] = None if plain is None or cached is None else (plain - cached) * n
    assert plan.prompt_cache is not None
    plan.prompt_cache["saved_realtime"] = _round(saved["realtime"])
    plan.prompt_cache["saved_batch"] = _round(saved["batch"])


def _work(plan: Plan) -> Work:
    return Work(plan.requests, plan.input_tokens, plan.output_tokens_max)


def _time(plan: Plan, config: RunConfig) -> None:
    """Minutes each per-minute limit needs for the whole run, as the limiter charges them."""
    plan.seconds_by_limit = capacity_of(config, None).limits(_work(plan))
    if plan.seconds_by_limit:
        plan.bound_by, plan.seconds = max(plan.seconds_by_limit.items(), key=lambda kv: kv[1])


def _deadline(plan: Plan, config: RunConfig, done: _Done, pricer: Pricer) -> None:
    """`finish_by`: how the work splits between the batch API and realtime, and whether the
    deadline is reachable at all (by the realtime path alone, under the known limits)."""
    if done.realtime_answers:
        latency = done.realtime_seconds / done.realtime_answers
        basis = f"{latency:.2f}s per request, the average of {done.realtime_answers:,} in OUTPUT"
    else:
        latency = assumed_latency(_work(plan))  # as the run assumes until it has seen one
        basis = f"{latency:.2f}s per request, assumed from max_tokens"
    capacity = capacity_of(config, latency)
    work = _work(plan)
    now = time.time()
    deadline = config.deadline
    assert deadline is not None
    split = deadline_policy(deadline, config.prefer, now).plan(now, work, capacity)
    size = split_size(work.requests, config.batch_max_requests)
    late_lane = "flex" if config.service_tier in ("flex", "auto") else "standard"

    flex_at_batch = late_lane == "flex" and pricer.flex_price_list() == "batch"
    late_cost = plan.cost_batch if flex_at_batch else plan.cost_realtime

    def cost(part: Work, total: float | None) -> float | None:
        if total is None:
            return None
        return total * part.requests / plan.requests if plan.requests else 0.0

    plan.deadline = {
        "prefer": config.prefer,
        "finish_by": deadline,
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
        # Several batches, so that a late one costs only its share; its lines go to the
        # late lane: flex where the run allows it (at the batch price, or the standard one
        # where its vendor sells flex so: Groq), else standard.
        "batch_size": size,
        "batch_count": math.ceil(split.batch.requests / size) if size else 0,
        "late_lane": late_lane,
        "cost_if_every_batch_late": _round(cost(split.batch, late_cost)),
    }
