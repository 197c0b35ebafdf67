"""Prompt-cache-aware runs: the transform, the schedule, and whole runs against the simulator
(which refuses bad breakpoints with a 400 and counts cache reads and writes)."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import llmbatch
from llmbatch import BatchRequest, CompletionRequest, RunConfig
from llmbatch.clients import AnthropicClient, OpenAIClient
from llmbatch.prompt_cache.census import PrefixCensus
from llmbatch.prompt_cache.prefix import Prefix, label_of, prefix_of
from llmbatch.prompt_cache.schedule import PrefixSchedule
from llmbatch.prompt_cache.transform import CacheTransform, count_breakpoints
from llmbatch.simulate import SimulatorProcess

from .helpers import KEYS, cli, ids_once, read_out, start_cli, wait_for_lines

LONG = "Rules and worked examples for the task. " * 120  # ~1,200 tokens
SHORT = "Be brief."


@pytest.fixture(autouse=True)
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in KEYS.items():
        monkeypatch.setenv(name, value)


def _prefix(request: CompletionRequest) -> Prefix:
    found = prefix_of(request, "m")
    assert found is not None
    return found


# -- prefixes and the census ------------------------------------------------------------------


def test_prefix_is_what_comes_before_the_last_user_turn() -> None:
    a = CompletionRequest(system=LONG, prompt="q1")
    b = CompletionRequest(system=LONG, prompt="q2")
    c = CompletionRequest(
        messages=[{"role": "system", "content": LONG}, {"role": "user", "content": "q3"}]
    )
    assert _prefix(a).key == _prefix(b).key
    assert _prefix(a).messages == 0 and _prefix(c).messages == 1
    assert _prefix(a).tokens == len(LONG) // 4
    assert prefix_of(CompletionRequest(prompt="alone"), "m") is None
    assert _prefix(CompletionRequest(system=LONG, prompt="q", model="other")).key != _prefix(a).key


def test_census_never_calls_a_prefix_seen_once_shared_in_bounded_memory() -> None:
    census = PrefixCensus(model="m", capacity=100)
    shared = CompletionRequest(system=LONG, prompt="q")
    for i in range(20_000):
        census.add(CompletionRequest(system=f"unique {i}", prompt="q"))
        if i % 50 == 0:
            census.add(shared)
    assert len(census._counts) <= 100
    assert census.shared(_prefix(shared))
    assert [p.key for p, _ in census.groups()] == [_prefix(shared).key]
    assert not census.shared(_prefix(CompletionRequest(system="unique 19999", prompt="q")))


# -- the transform ----------------------------------------------------------------------------


def _anthropic() -> AnthropicClient:
    return AnthropicClient(api_key="k", model="claude-sonnet-4-5")


def _openai() -> OpenAIClient:
    return OpenAIClient(api_key="k", model="gpt-4o-mini")


def test_anthropic_breakpoint_goes_at_the_end_of_the_system_prompt() -> None:
    client = _anthropic()
    transform = CacheTransform(client, provider="anthropic")
    request = CompletionRequest(system=LONG, prompt="q", response_format="json")
    sent = transform.apply(request, _prefix(request), ttl="5m")
    body = client.body_for(sent)
    assert body["system"][-1]["cache_control"] == {"type": "ephemeral"}
    # The text is the client's own system text (the JSON instruction included).
    assert body["system"][-1]["text"] == client.body_for(request)["system"]
    assert body["messages"] == [{"role": "user", "content": "q"}]
    assert request.extra is None  # the caller's request is untouched


def test_anthropic_breakpoint_goes_on_the_last_leading_message_and_survives_a_reask() -> None:
    client = _anthropic()
    transform = CacheTransform(client, provider="anthropic")
    request = CompletionRequest(
        system="Be exact.",
        messages=[
            {"role": "user", "content": LONG},
            {"role": "assistant", "content": "Understood."},
            {"role": "user", "content": "the question"},
        ],
    )
    sent = transform.apply(request, _prefix(request), ttl="1h")
    body = client.body_for(sent)
    assert body["messages"][1]["content"] == [
        {"type": "text", "text": "Understood.", "cache_control": {"type": "ephemeral", "ttl": "1h"}}
    ]
    assert count_breakpoints(body) == 1
    assert isinstance(body["messages"][2]["content"], str)
    from llmbatch.errors import InvalidOutputError
    from llmbatch.replies import reask
    from llmbatch.types import CompletionResponse

    error = InvalidOutputError("bad", response=CompletionResponse(content="{}"))
    again = client.body_for(reask(sent, error))
    assert count_breakpoints(again) == 1 and len(again["messages"]) == 5


def test_a_lines_own_breakpoints_are_kept_and_never_pushed_over_four() -> None:
    client = _anthropic()
    transform = CacheTransform(client, provider="anthropic")
    marked = [
        {"type": "text", "text": f"part {i}", "cache_control": {"type": "ephemeral"}}
        for i in range(4)
    ]
    full = CompletionRequest(
        system=LONG, messages=[{"role": "user", "content": marked}], prompt="q"
    )
    assert transform.apply(full, _prefix(full), ttl="5m") is full
    # Its own breakpoint on the prefix's end: kept as it is, none added.
    own = CompletionRequest(
        messages=[
            {"role": "user", "content": [{**marked[0], "text": LONG}]},
            {"role": "user", "content": "q"},
        ]
    )
    assert transform.apply(own, _prefix(own), ttl="1h") is own
    # A 5m breakpoint of its own before ours: ours cannot be 1h (the API refuses that order).
    early = CompletionRequest(
        system=LONG,
        messages=[
            {"role": "user", "content": [{**marked[0], "text": LONG}]},
            {"role": "assistant", "content": "ok"},
        ],
        prompt="q",
    )
    body = client.body_for(transform.apply(early, _prefix(early), ttl="1h"))
    assert count_breakpoints(body) == 2
    assert body["messages"][1]["content"][-1]["cache_control"] == {"type": "ephemeral"}


def test_a_prefix_under_the_models_minimum_is_left_alone() -> None:
    request = CompletionRequest(system=SHORT * 100, prompt="q")  # ~225 tokens
    for client, provider in ((_anthropic(), "anthropic"), (_openai(), "openai")):
        transform = CacheTransform(client, provider=provider)
        assert transform.apply(request, _prefix(request), ttl="5m") is request
    haiku = AnthropicClient(api_key="k", model="claude-haiku-4-5")  # 4,096 tokens at least
    long = CompletionRequest(system=LONG, prompt="q")
    assert CacheTransform(haiku, provider="anthropic").apply(long, _prefix(long), ttl="5m") is long


def test_anthropic_one_hour_writes_cost_twice_the_input_price() -> None:
    from llmbatch.pricing import Pricer
    from llmbatch.types import CompletionResponse, Usage

    pricer = Pricer(provider="anthropic", model="claude-sonnet-4-5")
    plain = pricer.usage_cost(None, Usage(10_000)) or 0.0
    five = pricer.usage_cost(None, Usage(10_000, cache_write_tokens=10_000)) or 0.0
    hour = pricer.usage_cost(
        None, Usage(10_000, cache_write_tokens=10_000, cache_write_1h_tokens=10_000)
    )
    assert five == pytest.approx(1.25 * plain) and hour == pytest.approx(2 * plain)
    read = CompletionResponse(
        "x", model="claude-sonnet-4-5", usage=Usage(10_000, cached_tokens=9_000)
    )
    assert pricer.cache_saved(read) == pytest.approx(0.9 * 0.9 * plain)
    assert pricer.cache_saved(CompletionResponse("x", usage=Usage(10_000))) is None


def test_openai_gets_a_key_per_prefix_and_a_lines_own_key_is_kept() -> None:
    transform = CacheTransform(_openai(), provider="openai")
    a = CompletionRequest(system=LONG, prompt="a")
    sent = transform.apply(a, _prefix(a), ttl="5m")
    label = label_of(a, "gpt-4o-mini")
    assert sent.extra == {"prompt_cache_key": label} and label == label_of(a, "gpt-4o-mini")
    assert label != label_of(CompletionRequest(system=LONG + ".", prompt="a"), "gpt-4o-mini")
    own = CompletionRequest(system=LONG, prompt="a", extra={"prompt_cache_key": "mine"})
    assert transform.apply(own, _prefix(own), ttl="5m").extra == {"prompt_cache_key": "mine"}
    # Local servers ignore an unknown field; a third-party API may refuse it: none sent.
    for url, keyed in (
        ("http://127.0.0.1:8000/v1", True),
        ("http://10.0.0.5:8000/v1", True),
        ("https://api.mistral.ai/v1", False),
    ):
        client = OpenAIClient(api_key="k", model="m", base_url=url)
        sent = CacheTransform(client, provider="openai").apply(a, _prefix(a), ttl="5m")
        assert ("prompt_cache_key" in (sent.extra or {})) is keyed, url


# -- the schedule -----------------------------------------------------------------------------


def _requests(groups: int, each: int, seed: int = 1) -> list[BatchRequest]:
    items = [
        BatchRequest(f"g{g}-{i}", CompletionRequest(system=f"prefix {g} " + LONG, prompt=f"q{i}"))
        for g in range(groups)
        for i in range(each)
    ]
    random.Random(seed).shuffle(items)
    return items


def _schedule(items: list[BatchRequest], **options: Any) -> PrefixSchedule:
    census = PrefixCensus(model="m")
    for item in items:
        census.add(item.request)
    return PrefixSchedule(
        iter(items), lambda item: prefix_of(item.request, "m"), census.shared, **options
    )


async def test_a_new_prefix_is_warmed_up_by_one_request_without_stalling_the_others() -> None:
    items = _requests(groups=3, each=5)
    schedule = _schedule(items)
    order: list[str] = []
    stream = aiter(schedule)
    for _ in range(3):  # one warm-up per group, nothing else: the rest wait for them
        order.append((await anext(stream)).item.id)
    assert sorted(rid.split("-")[0] for rid in order) == ["g0", "g1", "g2"]
    waiting = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0)
    assert not waiting.done()
    schedule.answered(next(r for r in order if r.startswith("g1")))
    released = (await waiting).item.id
    assert released.startswith("g1-")
    # The rest of g1 goes out, together; g0 and g2 still wait for their warm-ups.
    rest = [(await anext(stream)).item.id for _ in range(3)]
    assert all(r.startswith("g1-") for r in rest)
    for rid in order:
        schedule.answered(rid)
    tail = [s.item.id async for s in stream]
    assert sorted([*order, released, *rest, *tail]) == sorted(i.id for i in items)
    # Each group's requests came out together after its warm-up: g0's and g2's in two runs.
    groups = [r.split("-")[0] for r in tail]
    assert len(tail) == 8 and sum(a != b for a, b in itertools.pairwise(groups)) == 1
    assert schedule.warmups == 3


async def test_a_failed_or_stuck_warm_up_releases_its_group() -> None:
    items = _requests(groups=1, each=4)
    schedule = _schedule(items, max_hold=0.0)
    ids = [s.item.id async for s in schedule]  # never answered: released on hold
    assert sorted(ids) == sorted(i.id for i in items)
    assert schedule.released_on_hold == 1


def test_grouping_is_bounded_by_the_window_and_sends_every_request_once() -> None:
    def many() -> Iterator[BatchRequest]:
        for i in range(20_000):
            yield BatchRequest(f"r{i}", CompletionRequest(system=f"p{i % 7} " + LONG, prompt="q"))

    census = PrefixCensus(model="m")
    for item in many():
        census.add(item.request)
    schedule = PrefixSchedule(
        many(), lambda item: prefix_of(item.request, "m"), census.shared, window=100
    )
    out = [s.item.id for s in schedule.grouped()]
    assert schedule.max_buffered <= 100
    assert len(out) == 20_000 and len(set(out)) == 20_000
    # Grouped: far fewer changes of prefix than the input's 19,999.
    groups = [int(r[1:]) % 7 for r in out]
    changes = sum(a != b for a, b in itertools.pairwise(groups))
    assert changes < 20_000 / 20


async def test_per_group_spreads_the_requests_in_flight_but_never_idles() -> None:
    items = _requests(groups=1, each=10)
    schedule = _schedule(items, per_group=2)
    stream = aiter(schedule)
    first = (await anext(stream)).item.id
    schedule.answered(first)
    # One group only: the cap gives way rather than leave workers idle.
    in_flight = [(await anext(stream)).item.id for _ in range(6)]
    assert len(set(in_flight)) == 6


# -- whole runs against the simulator ---------------------------------------------------------


def _write_input(path: Path, groups: int, each: int, seed: int = 3) -> list[str]:
    lines = [
        {"id": f"g{g}-{i}", "system": f"Prefix {g}. " + LONG, "prompt": f"q{i}", "max_tokens": 8}
        for g in range(groups)
        for i in range(each)
    ]
    random.Random(seed).shuffle(lines)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return [line["id"] for line in lines]


def _anthropic_run(sim: SimulatorProcess, inp: Path, out: Path, **changes: Any) -> RunConfig:
    return RunConfig(
        input=str(inp),
        output=str(out),
        provider="anthropic",
        base_url=sim.url,
        model="claude-sonnet-4-5",
        concurrency=32,
        **changes,
    )


def test_anthropic_run_writes_each_prefix_once_and_reads_the_rest(start_sim, tmp_path) -> None:
    sim = start_sim("--latency-ms", "30")
    inp = tmp_path / "in.jsonl"
    ids = _write_input(inp, groups=5, each=30)
    summary = llmbatch.run(_anthropic_run(sim, inp, tmp_path / "auto.jsonl"))
    stats = sim.stats()
    assert summary.exit_code == 0 and set(ids_once(tmp_path / "auto.jsonl")) == set(ids)
    assert stats["by_status"] == {"200": 150}  # no breakpoint was refused
    assert stats["cache_writes"] == 5 and stats["cache_hits"] == 145
    usage = [line["response"]["body"]["usage"] for line in read_out(tmp_path / "auto.jsonl")]
    assert sum(u["cache_read_input_tokens"] for u in usage) > 145 * 1000
    # The money: every line says what the cache saved; the stats add it up.
    stats_of = summary.stats
    assert stats_of.cached_prompt_tokens == sum(u["cache_read_input_tokens"] for u in usage)
    assert stats_of.cache_write_tokens == sum(u["cache_creation_input_tokens"] for u in usage)
    assert stats_of.cache_hit_share > 0.8
    assert stats_of.cache_saved is not None and stats_of.cache_saved > 0
    assert stats_of.cache_saved == pytest.approx(
        sum(line["llmbatch"]["cache_saved"] for line in read_out(tmp_path / "auto.jsonl"))
    )
    shown = cli("stats", str(tmp_path / "auto.jsonl"), env={"COLUMNS": "200"})
    assert "prompt cache" in shown.stdout and "saved by the cache" in shown.stdout
    # The same run with caching off writes nothing and reads nothing.
    off = llmbatch.run(_anthropic_run(sim, inp, tmp_path / "off.jsonl", prompt_cache="off"))
    assert off.exit_code == 0 and sim.stats()["cache_writes"] == 5
    assert off.stats.cached_prompt_tokens == 0 and off.stats.cache_saved is None
    assert (off.stats.cost or 0) > 3 * (summary.stats.cost or 0)


def test_cli_prompt_cache_flag_and_kill_9_rerun_keep_every_id_once(start_sim, tmp_path) -> None:
    sim = start_sim("--latency-ms", "100")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = _write_input(inp, groups=4, each=60)
    args = [
        "run", str(inp), "-o", str(out), "--provider", "anthropic", "--base-url", sim.url,
        "--model", "claude-sonnet-4-5", "--concurrency", "8", "--no-progress",
        "--prompt-cache", "auto",
    ]  # fmt: skip
    proc = start_cli(*args)
    try:
        wait_for_lines(out, 40)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    partial = len(ids_once(out))
    assert 40 <= partial < len(ids)
    rerun = cli(*args, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert set(ids_once(out)) == set(ids)
    stats = sim.stats()
    assert stats["by_status"] == {"200": stats["received"] - stats["undelivered"]}
    # Each prefix written once at most (the rerun found the first run's entries cached).
    assert stats["cache_writes"] <= 4
    bad = cli(*args[:-1], "sometimes")
    assert bad.returncode == 2 and "--prompt-cache" in bad.stderr


def test_anthropic_batch_api_groups_lines_and_asks_for_the_hour_ttl(start_sim, tmp_path) -> None:
    sim = start_sim("--batch-seconds", "0.5")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = _write_input(inp, groups=3, each=20)
    summary = llmbatch.run(
        _anthropic_run(sim, inp, out, batch_api=True, poll_interval=0.2, batch_max_requests=30)
    )
    assert summary.exit_code == 0 and set(ids_once(out)) == set(ids)
    usage = [line["response"]["body"]["usage"] for line in read_out(out)]
    written = [u for u in usage if u["cache_creation_input_tokens"]]
    # Grouped lines: one write per prefix and batch at most, in the 1-hour cache.
    assert 3 <= len(written) <= 3 * 2
    assert all(u["cache_creation"]["ephemeral_1h_input_tokens"] > 0 for u in written)
    assert sum(1 for u in usage if u["cache_read_input_tokens"]) == 60 - len(written)


def test_openai_keys_keep_prefixes_with_one_beginning_on_their_own_routes(
    start_sim, tmp_path
) -> None:
    # Four prefixes alike in their first 256 tokens: OpenAI routes them as one, and above
    # 15 requests a minute that route spills to machines that have not seen them. With a
    # key per prefix each has its own route (12 requests: no spill) and is written once.
    sim = start_sim("--latency-ms", "20")
    inp = tmp_path / "in.jsonl"
    lines = [
        {"id": f"g{g}-{i}", "system": LONG + f" Prefix {g}.", "prompt": f"q{i}", "max_tokens": 8}
        for g in range(4)
        for i in range(12)
    ]
    random.Random(5).shuffle(lines)
    inp.write_text("".join(json.dumps(line) + "\n" for line in lines))

    def run(out: str, mode: str) -> dict[str, Any]:
        sim.reset()
        summary = llmbatch.run(
            RunConfig(
                input=str(inp),
                output=str(tmp_path / out),
                base_url=sim.url + "/v1",
                model="gpt-4o-mini",
                concurrency=8,
                prompt_cache=mode,  # type: ignore[arg-type]
            )
        )
        assert summary.exit_code == 0 and len(ids_once(tmp_path / out)) == 48
        return sim.stats()

    auto = run("auto.jsonl", "auto")  # first: the cache is fresh
    off = run("off.jsonl", "off")
    assert off["cache_spilled"] == 48 - 15
    assert auto["cache_spilled"] == 0 and auto["cache_writes"] == 4
    cached = [
        line["response"]["body"]["usage"]["prompt_tokens_details"]["cached_tokens"]
        for line in read_out(tmp_path / "auto.jsonl")
    ]
    assert sum(1 for c in cached if c >= 1024) == 48 - 4


def test_plan_estimates_the_cached_share_and_savings_before_sending(tmp_path) -> None:
    inp = tmp_path / "in.jsonl"
    _write_input(inp, groups=4, each=10)
    config = RunConfig(input=str(inp), provider="anthropic", model="claude-sonnet-4-5")
    found = llmbatch.plan(config).prompt_cache
    assert found is not None
    assert found["shared_prefixes"] == 4 and found["requests_in_groups"] == 40
    assert found["input_share_cached"] > 0.8
    # One write per prefix, nine reads: a tenth of the price on reads, 1.25x on writes.
    assert found["saved_realtime"] > 0 and found["saved_batch"] > 0
    assert found["saved_batch"] < found["saved_realtime"]
    assert llmbatch.plan(config.replace(prompt_cache="off")).prompt_cache is None
    shown = cli("plan", str(inp), "-o", str(tmp_path / "o.jsonl"), "--provider", "anthropic",
                "--model", "claude-sonnet-4-5", env={"COLUMNS": "200"})  # fmt: skip
    assert shown.returncode == 0 and "4 shared prefixes over 40 requests" in shown.stdout


def test_the_budgets_worst_case_covers_a_cache_write() -> None:
    from llmbatch.pricing import Pricer

    pricer = Pricer(provider="anthropic", model="claude-sonnet-4-5")
    client = _anthropic()
    request = CompletionRequest(system=LONG, prompt="q", max_tokens=1)
    plain = pricer.worst_case(request, batch=True) or 0.0
    transform = CacheTransform(client, provider="anthropic")
    five = pricer.worst_case(transform.apply(request, _prefix(request), ttl="5m"), batch=True)
    hour = pricer.worst_case(transform.apply(request, _prefix(request), ttl="1h"), batch=True)
    assert plain < (five or 0.0) < (hour or 0.0)
    assert (hour or 0.0) > 1.9 * plain  # the input part doubled; the output is one token


async def test_a_400_about_cache_settings_names_the_prompt_cache_setting() -> None:
    from llmbatch.errors import BadRequestError
    from llmbatch.simulate import Simulator, SimulatorConfig

    marked = [
        {"type": "text", "text": f"part {i}", "cache_control": {"type": "ephemeral"}}
        for i in range(5)
    ]
    request = CompletionRequest(messages=[{"role": "user", "content": marked}], max_tokens=5)
    async with Simulator(SimulatorConfig()) as sim:
        client = AnthropicClient(base_url=sim.url, api_key="k", model="claude-sonnet-4-5")
        try:
            with pytest.raises(BadRequestError) as caught:
                await client.complete(request)
        finally:
            await client.aclose()
    assert caught.value.setting == "prompt_cache"
    assert 'prompt_cache="off"' in str(caught.value)


def test_the_progress_bar_shows_the_cache_share_and_savings() -> None:
    import io

    from rich.console import Console

    from llmbatch.progress import RichProgress, _PromptCacheColumn

    bar = RichProgress(console=Console(file=io.StringIO(), force_terminal=True, width=200))
    column = _PromptCacheColumn(bar)
    task = bar._progress.tasks[0]
    assert column.render(task).plain == ""  # nothing read from a cache yet
    bar.add_prompt_cache(1000, 0, None)
    bar.add_prompt_cache(1000, 900, 0.25)
    assert column.render(task).plain == "cache 45% -$0.2500"


async def test_per_group_spreads_the_requests_in_flight_over_groups() -> None:
    items = _requests(groups=3, each=6)
    schedule = _schedule(items, per_group=2)
    stream = aiter(schedule)
    warm_ups = [(await anext(stream)).item.id for _ in range(3)]
    for rid in warm_ups:
        schedule.answered(rid)
    in_flight = [(await anext(stream)).item.id for _ in range(6)]
    # Two of each group, not six of the first: a burst of one prefix would spill.
    assert sorted(r.split("-")[0] for r in in_flight) == ["g0", "g0", "g1", "g1", "g2", "g2"]
    # An answer frees a place in its group only.
    schedule.answered(in_flight[0])
    assert (await anext(stream)).item.id.split("-")[0] == in_flight[0].split("-")[0]


def test_a_deadline_run_groups_and_marks_its_batches_too(start_sim, tmp_path) -> None:
    sim = start_sim("--latency-ms", "20", "--batch-seconds", "0.5")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = _write_input(inp, groups=3, each=20)
    summary = llmbatch.run(_anthropic_run(sim, inp, out, finish_by="10m", poll_interval=0.1))
    assert summary.exit_code == 0 and summary.executor == "deadline"
    assert set(ids_once(out)) == set(ids)
    usage = [line["response"]["body"]["usage"] for line in read_out(out)]
    written = [u for u in usage if u["cache_creation_input_tokens"]]
    assert len(written) == 3  # one batch, its lines grouped: one write per prefix
    assert all(u["cache_creation"]["ephemeral_1h_input_tokens"] for u in written)
    assert sim.stats()["by_status"] == {}  # nothing went realtime


@pytest.mark.parametrize("seed", range(60))
async def test_the_schedule_sends_every_request_once_whatever_the_answers_order(seed) -> None:
    """A run simulated: `concurrency` workers pull, answers come back in a random order; the
    schedule never loses, repeats or sticks on a request, and holds no more than its window."""
    rng = random.Random(seed)
    groups, each = rng.randint(1, 6), rng.randint(1, 12)
    items = _requests(groups=groups, each=each, seed=seed)
    items += [BatchRequest(f"alone-{i}", CompletionRequest(prompt="q")) for i in range(3)]
    rng.shuffle(items)
    window = rng.choice([1, 3, 8, 100])
    schedule = _schedule(items, per_group=rng.choice([None, 1, 2]), window=window)
    concurrency = rng.randint(1, 8)
    stream = aiter(schedule)
    sent: list[str] = []
    in_flight: list[str] = []
    pending: asyncio.Task[Any] | None = None
    while True:
        if pending is None and len(in_flight) < concurrency:
            pending = asyncio.ensure_future(anext(stream, None))
        for _ in range(5):  # let the schedule run until it yields or waits for an answer
            await asyncio.sleep(0)
        if pending is not None and pending.done():
            got = pending.result()
            pending = None
            if got is None:
                break
            sent.append(got.item.id)
            in_flight.append(got.item.id)
            continue
        assert in_flight, "the schedule waits, but nothing is in flight to answer"
        schedule.answered(in_flight.pop(rng.randrange(len(in_flight))))
    assert sorted(sent) == sorted(i.id for i in items)
    assert schedule.max_buffered <= window


def test_the_hour_ttl_only_where_five_minutes_would_lapse() -> None:
    from llmbatch.pipeline.executors import Context
    from llmbatch.pipeline.prompt_cache import CachePolicy

    census = PrefixCensus(model="claude-sonnet-4-5")

    def ttl(total: int, *, batch: bool = False, **config: Any) -> str:
        run = RunConfig(output="o.jsonl", provider="anthropic", model="claude-sonnet-4-5", **config)
        context = Context(run, _anthropic(), None, None, None, total, lambda: iter(()))  # type: ignore[arg-type]
        return CachePolicy(context, census, batch=batch, window=1000).ttl

    assert ttl(100_000) == "5m"  # unpaced: a group comes back within seconds
    assert ttl(500, rpm=60) == "5m"  # the whole run fits in the window: no coming back
    assert ttl(100_000, rpm=600) == "5m"  # a window's worth takes 100 s
    assert ttl(100_000, rpm=60) == "1h"  # ... 17 minutes: a 5-minute entry would lapse
    assert ttl(10, batch=True) == "1h"  # a batch runs over hours, in no promised order
