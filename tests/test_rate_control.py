"""The control laws of adaptive pacing, in virtual time: CUBIC cuts and regrowth, split token
budgets, the adaptive concurrency gate and the outage breaker."""

from __future__ import annotations

import asyncio

import pytest

from llmbatch import (
    AdmissionChain,
    APIConnectionError,
    CompletionRequest,
    CompletionResponse,
    ConcurrencyLimiter,
    OutageBreaker,
    ProviderOutageError,
    RateLimiter,
    RateLimitError,
    RateLimitInfo,
    RequestTimeoutError,
    ServerError,
    TokenLimitError,
    Usage,
)
from llmbatch.rate_control import CubicRate

from .conftest import FakeClock
from .helpers import SteppedClock

REQ = CompletionRequest(prompt="x" * 400, max_tokens=100)  # 100 input + 100 output tokens


def control(clock: FakeClock, age: float = 1.0) -> CubicRate:
    """A control that has been sending for `age` seconds (nothing in its window yet): its
    measurements are a full second's, not the run's first moments'."""
    c = CubicRate(clock=clock)
    c.sent(0)
    clock.advance(age)
    return c


def test_a_burst_of_refusals_from_one_event_cuts_once(clock: FakeClock) -> None:
    c = control(clock)
    c.sent(30)
    generation = c.generation  # every attempt of the burst was admitted under it
    cuts = [c.congested(generation) for _ in range(12)]
    assert cuts == [True] + [False] * 11
    assert c.cuts == 1 and c.generation == generation + 1


def test_a_new_event_cuts_again_but_not_within_the_cooldown(clock: FakeClock) -> None:
    c = control(clock)
    c.sent(30)
    assert c.congested(c.generation)
    first = c.rate
    clock.advance(0.5)
    assert not c.congested(c.generation)  # admitted after the cut, but the server still refills
    clock.advance(1.0)
    c.sent(10)
    assert c.congested(c.generation)
    assert c.rate is not None and first is not None and c.rate < first


def test_a_guess_at_the_opening_that_is_still_refused_cuts_again_within_the_cooldown(
    clock: FakeClock,
) -> None:
    # The run's first refusal, read late (a loaded machine): the opening's pace had sent 33
    # in its first 0.15 s against a 20/s server, and the first cut only guesses from that
    # young window (23/s). An attempt admitted at the guessed rate and refused says the guess
    # is too high: cut again now, not after the cooldown (which cost a refusal every 0.15 s).
    c = CubicRate(clock=clock)
    c.sent(33)
    clock.advance(0.15)
    assert c.congested(c.generation)
    guessed = c.rate
    clock.advance(0.2)
    c.sent(5)
    assert c.congested(c.generation)  # within the cooldown, admitted after the first cut
    assert c.rate is not None and guessed is not None and c.rate < guessed
    clock.advance(0.2)
    assert not c.congested(c.generation)  # a measured cut: its cooldown holds again


def test_the_cut_is_relative_to_the_measured_send_rate(clock: FakeClock) -> None:
    c = control(clock)
    c.sent(40)  # 40 admissions in the last second, no success yet
    c.congested(c.generation)
    # No goodput to go by: the opening burst overstates the limit (CUBIC fast convergence).
    w_max = 40 * (1 + 0.7) / 2
    assert c.rate == pytest.approx(0.7 * w_max)


def test_goodput_is_the_limit_estimate_when_there_is_one(clock: FakeClock) -> None:
    c = control(clock)
    c.sent(30)
    for _ in range(25):
        c.succeeded()  # the server accepted 25 of them in this second
    c.congested(c.generation)
    assert c.rate == pytest.approx(0.7 * 25)


def test_a_burst_the_servers_bucket_stored_during_a_lull_is_not_the_limit(
    clock: FakeClock,
) -> None:
    # Three seconds at 15/s (held back: the server's bucket filled), then a second at 30/s:
    # the server let 28 through (its sustained rate plus what its bucket had stored) and
    # refused. The last second alone would estimate 28; the seconds before bound it.
    c = control(clock)
    for _ in range(30):
        clock.advance(0.1)
        c.sent(1.5)
        c.succeeded(1.5)
    for _ in range(10):
        clock.advance(0.1)
        c.sent(3)
        c.succeeded(2.8)
    c.congested(c.generation)
    # 4 s averaged 18.25 accepted a second; the cut's floor is beta times the 30 it sent.
    assert c.limit_estimate == pytest.approx(0.7 * 30)


def test_regrowth_reaches_90_percent_of_the_estimate_within_seconds(clock: FakeClock) -> None:
    c = control(clock)
    for _ in range(20):
        c.sent()
        c.succeeded()
    c.sent(5)
    c.congested(c.generation)  # 25 sent, 20 accepted: w_max = 20 (goodput), rate 14
    assert c.rate == pytest.approx(14.0)
    elapsed = 0.0
    while c.rate < 0.9 * 20:
        clock.advance(0.05)
        elapsed += 0.05
        c.sent()  # keep sending at about the rate, so growth is not held back by use
        c.succeeded()
        assert elapsed < 10, "regrowth stalled"
    k = (20 * 0.3 / 0.4) ** (1 / 3)
    assert elapsed <= k  # concave: 90% well before the curve's plateau at K (~2.5 s)
    # Then a plateau: five more seconds later it is still within 10% of the estimate.
    for _ in range(100):
        clock.advance(0.05)
        c.sent()
        c.succeeded()
    assert 0.9 * 20 <= c.rate <= 1.1 * 20


def test_a_collapse_recovers_within_seconds(clock: FakeClock) -> None:
    c = control(clock)
    c.sent(1)
    c.congested(c.generation)
    clock.advance(2)
    c.sent(1)
    c.congested(c.generation)  # now crawling at under one request a second
    assert c.rate is not None and c.rate < 1
    for _ in range(300):  # fifteen seconds of successes while sending
        clock.advance(0.05)
        c.sent(max(1, round(c.rate * 0.05)))
        c.succeeded()
    assert c.rate > 5


def test_ceiling_and_floor(clock: FakeClock) -> None:
    c = CubicRate(clock=clock, min_rate=0.5)
    c.ceiling = 10.0
    c.sent(100)
    c.congested(c.generation)
    assert c.rate is not None and c.rate <= 10.0
    for _ in range(2000):
        clock.advance(0.05)
        c.sent(2)
        c.succeeded()
    assert c.rate == pytest.approx(10.0)  # grown back, capped at the stated limit
    for _ in range(30):
        clock.advance(1.1)
        c.congested(c.generation)
    assert c.rate == pytest.approx(0.5)  # never below the floor


def test_growth_is_bounded_by_what_is_really_sent(clock: FakeClock) -> None:
    c = control(clock)
    c.sent(20)
    c.congested(c.generation)
    rates = []
    for _ in range(600):  # a minute of successes while sending only one a second
        clock.advance(0.1)
        c.succeeded()
        if round(clock.now * 10) % 10 == 0:
            c.sent()
        rates.append(c.rate)
    # Never above twice what was tested (20 a second, at the start), and no growth at all
    # once only one a second is sent.
    assert c.rate is not None and c.rate <= 2 * 20
    assert rates[-1] == rates[20]


def test_the_regrowth_after_the_openings_guess_is_bounded_by_answers(clock: FakeClock) -> None:
    # The opening's first cut guesses the limit from a young window and regrows by doubling
    # until the next refusal. On a loaded machine answers are read late: 30 sent a second and
    # only 20 answers read. The rate never outgrows what answers say (1.5x them), not what
    # was sent (2x: 60 a second into a 20-a-second server before a refusal is read).
    c = CubicRate(clock=clock)
    c.sent(10)
    clock.advance(0.2)
    assert c.congested(c.generation) and c.limit_estimate is not None  # the guess
    for _ in range(100):  # five seconds
        clock.advance(0.05)
        c.sent(1.5)
        c.succeeded(1)
    assert c.rate is not None and 25 <= c.rate <= 1.5 * 20 * 1.01, c.rate


# -- the RateLimiter: adaptive feedback, split budgets --------------------------------------


def limiter(clock: FakeClock, **kw: object) -> RateLimiter:
    kw.setdefault("safety_margin", 0.0)
    kw.setdefault("burst_seconds", 0.0)
    return RateLimiter(clock=clock, sleep=clock.sleep, **kw)  # type: ignore[arg-type]


async def test_refusals_without_headers_cut_once_and_do_not_pause(clock: FakeClock) -> None:
    lim = limiter(clock)
    permits = [await lim.acquire() for _ in range(20)]  # an unpaced opening burst
    for p in permits:
        p.release(None, RateLimitError(retry_after=1.0))  # retry-after: 1, no limit stated
    status = lim.status()
    assert status.cuts == 1 and status.rate_limited == 20
    assert status.paused_for == 0  # a 1 s retry-after delays the refused request, not all
    # The run's first second: the window reads low, so the cut takes the measured rate as a
    # guess (20 a second) and regrows by doubling until the next refusal measures the limit.
    assert status.requests_per_minute == pytest.approx(60 * 0.7 * 20)


async def test_a_long_or_stated_retry_after_pauses_everyone(clock: FakeClock) -> None:
    lim = limiter(clock)
    p = await lim.acquire()
    p.release(None, RateLimitError(retry_after=5.0))
    assert lim.status().paused_for == pytest.approx(5.0)
    lim2 = limiter(clock)
    p = await lim2.acquire()
    stated = RateLimitInfo(limit_requests=600, remaining_requests=0)
    p.release(None, RateLimitError(retry_after=0.3, rate_limit=stated))
    assert lim2.status().paused_for == pytest.approx(0.3)
    assert lim2.status().cuts == 0  # the server said its limit: sync, no probing
    assert lim2.requests_per_minute == 600


async def test_503_and_529_slow_the_sender_like_a_429(clock: FakeClock) -> None:
    for error in (ServerError("busy", status_code=503), ServerError("x", status_code=529)):
        lim = limiter(clock)
        p = await lim.acquire()
        p.release(None, error)
        assert lim.status().cuts == 1
    lim = limiter(clock)
    p = await lim.acquire()
    p.release(None, ServerError("bug", status_code=500))
    assert lim.status().cuts == 0  # a plain 500 is a fault, not load


async def test_input_and_output_token_budgets_pace_apart(clock: FakeClock) -> None:
    # 100 input tokens at 600/min: one every 10 s; 100 output at 1200/min: every 5 s.
    lim = limiter(clock, input_tokens_per_minute=600, output_tokens_per_minute=1200)
    start = clock.now
    times = []
    for _ in range(3):
        async with lim.admit(REQ):
            times.append(clock.now - start)
    assert times == pytest.approx([0, 10, 20])
    lim = limiter(clock, input_tokens_per_minute=6000, output_tokens_per_minute=600)
    start = clock.now
    times = []
    for _ in range(3):
        async with lim.admit(REQ):
            times.append(clock.now - start)
    assert times == pytest.approx([0, 10, 20])  # the output budget binds now


async def test_output_tokens_are_charged_from_max_tokens_then_settled(clock: FakeClock) -> None:
    lim = limiter(clock, output_tokens_per_minute=600)  # 100 output tokens = 10 s
    async with lim.admit(REQ) as permit:
        permit.record(CompletionResponse("ok", usage=Usage(100, 10)))  # used only 10 of 100
    start = clock.now
    async with lim.admit(REQ):
        pass
    assert clock.now - start == pytest.approx(1.0)  # 9 of the 10 s were refunded


async def test_a_request_over_a_split_budget_fails_at_once(clock: FakeClock) -> None:
    lim = limiter(clock, output_tokens_per_minute=50)
    with pytest.raises(TokenLimitError, match="output tokens"):
        async with lim.admit(REQ):
            pass


async def test_split_limits_are_learned_from_anthropic_headers(clock: FakeClock) -> None:
    lim = limiter(clock)
    info = RateLimitInfo(limit_input_tokens=6000, limit_output_tokens=1200)
    async with lim.admit(REQ) as permit:
        permit.record(CompletionResponse("ok", rate_limit=info))
    assert lim.input_tokens_per_minute == 6000
    assert lim.output_tokens_per_minute == 1200


async def test_a_cancelled_waiter_gives_back_its_permit(clock: FakeClock) -> None:
    lim = limiter(clock, requests_per_minute=60)
    gate = asyncio.Event()

    async def blocked(seconds: float) -> None:
        await gate.wait()

    async with lim.admit(REQ):
        pass
    lim._sleep = blocked
    waiter = asyncio.create_task(lim.admit(REQ).__aenter__())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert lim.status().in_flight == 0 and lim.status().waiting == 0
    lim._sleep = clock.sleep
    start = clock.now
    async with lim.admit(REQ):
        pass
    assert clock.now - start == pytest.approx(1.0)  # the slot the waiter gave back


# -- the adaptive concurrency gate ------------------------------------------------------------


async def test_the_gate_finds_the_knee_of_a_queueing_server(clock: FakeClock) -> None:
    # A server with 2 slots, 200 ms each: latency = 0.2 * max(1, in_flight / 2).
    gate = ConcurrencyLimiter(clock=clock)
    for _ in range(400):
        n = gate.limit
        slots = [gate.admit(REQ) for _ in range(n)]
        for s in slots:
            await s.__aenter__()
        clock.advance(0.2 * max(1.0, n / 2))
        for s in slots:
            s.record(CompletionResponse("ok"))
            await s.__aexit__(None, None, None)
    assert 2 <= gate.limit <= 8  # enough to keep both slots busy, without a long queue


async def test_timeouts_cut_the_concurrency(clock: FakeClock) -> None:
    gate = ConcurrencyLimiter(initial=64, clock=clock)
    slot = gate.admit(REQ)
    await slot.__aenter__()
    await slot.__aexit__(RequestTimeoutError, RequestTimeoutError("t"), None)
    assert gate.limit == int(64 * 0.7)


async def test_the_gate_serves_waiters_in_order_and_cancellation_is_clean(
    clock: FakeClock,
) -> None:
    gate = ConcurrencyLimiter(initial=1, min_limit=1, max_limit=4, clock=clock)
    first = gate.admit(REQ)
    await first.__aenter__()
    order: list[int] = []

    async def wait(k: int) -> None:
        async with gate.admit(REQ):
            order.append(k)

    tasks = [asyncio.create_task(wait(k)) for k in range(3)]
    await asyncio.sleep(0)
    tasks[1].cancel()
    await first.__aexit__(None, None, None)
    await asyncio.gather(*tasks, return_exceptions=True)
    assert order == [0, 2]
    assert gate.status().in_flight == 0 and gate.status().waiting == 0


# -- the outage breaker -------------------------------------------------------------------------


async def fail(breaker: OutageBreaker, error: BaseException, n: int = 1) -> None:
    requests = [CompletionRequest(prompt=str(i)) for i in range(n)]  # n different requests
    for request in requests:
        permit = breaker.admit(request)
        await permit.__aenter__()
        await permit.__aexit__(type(error), error, None)


async def test_the_breaker_opens_on_failures_across_requests_and_closes_on_a_probe(
    clock: FakeClock,
) -> None:
    breaker = OutageBreaker(clock=clock, sleep=clock.sleep)
    await fail(breaker, APIConnectionError("refused"), 4)
    assert not breaker.is_open
    await fail(breaker, APIConnectionError("refused"))
    assert breaker.is_open and breaker.excuses(APIConnectionError("refused"))
    start = clock.now
    probe = breaker.admit(REQ)
    await probe.__aenter__()  # waits for the first probe time
    assert probe.probe and clock.now - start == pytest.approx(0.5)
    await probe.__aexit__(APIConnectionError, APIConnectionError("still down"), None)
    probe = breaker.admit(REQ)
    await probe.__aenter__()
    assert clock.now - start == pytest.approx(0.5 + 1.0)  # the probe backs off
    probe.record(CompletionResponse("up"))
    await probe.__aexit__(None, None, None)
    assert not breaker.is_open
    assert breaker.outages[0].recovered and breaker.outages[0].duration == pytest.approx(1.5)


async def test_probes_stay_two_seconds_apart_however_long_the_outage(clock: FakeClock) -> None:
    # A server back after 16 s is seen within 2 s: the probes back off only to 2 s apart
    # (doubling to 15 s left a run idle for up to 15 s after a restart).
    breaker = OutageBreaker(clock=clock, sleep=clock.sleep)
    await fail(breaker, APIConnectionError("refused"), 5)
    sent: list[float] = []
    while True:
        probe = breaker.admit(REQ)
        await probe.__aenter__()
        sent.append(clock.now - 1000.0)
        if sent[-1] >= 16.0:  # the server is down for 16 s, then answers
            probe.record(CompletionResponse("up"))
            await probe.__aexit__(None, None, None)
            break
        down = APIConnectionError("still down")
        await probe.__aexit__(APIConnectionError, down, None)
    *_, back = sent
    gaps = [b - a for a, b in zip([0.0, *sent[:-1]], sent, strict=True)]
    assert gaps[:3] == pytest.approx([0.5, 1.0, 2.0]) and max(gaps) == pytest.approx(2.0)
    assert back - 16.0 <= 2.0
    assert not breaker.is_open


async def test_an_outage_is_measured_from_its_first_failure_to_the_probe_that_got_through(
    clock: FakeClock,
) -> None:
    breaker = OutageBreaker(clock=clock, sleep=clock.sleep)
    await fail(breaker, APIConnectionError("refused"))  # the server went away at t=0
    clock.advance(3.0)  # requests in flight fail over the next seconds
    await fail(breaker, APIConnectionError("refused"), 4)
    assert breaker.is_open
    await fail(breaker, APIConnectionError("still down"))  # probe at t=3.5
    probe = breaker.admit(REQ)
    await probe.__aenter__()  # probe at t=4.5, answered 5 s later (a slow first reply)
    clock.advance(5.0)
    probe.record(CompletionResponse("up"))
    await probe.__aexit__(None, None, None)
    [outage] = breaker.outages
    assert outage.started == pytest.approx(1000.0) and outage.recovered
    assert outage.duration == pytest.approx(4.5)  # not 1.5 (from the trip), nor 9.5


async def test_one_request_failing_alone_is_not_an_outage(clock: FakeClock) -> None:
    breaker = OutageBreaker(clock=clock, sleep=clock.sleep)
    for _ in range(10):
        permit = breaker.admit(REQ)  # the same request, again and again
        await permit.__aenter__()
        await permit.__aexit__(ServerError, ServerError("crash", status_code=500), None)
    assert not breaker.is_open


async def test_the_breaker_gives_up_after_max_outage(clock: FakeClock) -> None:
    breaker = OutageBreaker(max_outage=20, clock=clock, sleep=clock.sleep)
    await fail(breaker, ServerError("bad gateway", status_code=502), 5)
    with pytest.raises(ProviderOutageError, match="max_outage=20"):
        for _ in range(100):
            permit = breaker.admit(REQ)
            await permit.__aenter__()
            await permit.__aexit__(APIConnectionError, APIConnectionError("down"), None)
    assert clock.now - 1000.0 > 20
    assert not breaker.outages[-1].recovered
    with pytest.raises(ProviderOutageError):  # the rest fail at once
        await breaker.admit(REQ).__aenter__()


async def test_a_cut_rebooks_the_waiters_already_sleeping_at_the_old_rate() -> None:
    clock = SteppedClock()
    lim = RateLimiter(600, burst_seconds=0, safety_margin=0, clock=clock, sleep=clock.sleep)
    admitted: list[float] = []

    async def one() -> None:
        async with lim.admit(REQ) as permit:
            admitted.append(clock.now)
            permit.record(CompletionResponse("ok"))

    warm = await lim.acquire()  # a run a second old: its first cut is no opening's guess
    # Refused: on a given limit, a first bare 429 only holds; the next event, within the
    # strike window, says the limit is wrong and cuts.
    warm.release(None, RateLimitError())
    await clock.advance_to(1.0)
    first = await lim.acquire()  # t=1
    waiters = [asyncio.create_task(one()) for _ in range(10)]  # booked 0.1 s apart
    await clock.advance_to(1.0)
    first.release(None, RateLimitError())  # a bare 429: cut to far below 10/s
    rate = lim.requests_per_minute
    assert rate is not None and rate < 60
    await clock.advance_to(1000.0)
    await asyncio.gather(*waiters)
    # At the old rate all ten would have gone within a second (by t=2); rebooked, they follow
    # the new one (cut far below 1 a second, then regrowing).
    assert admitted == sorted(admitted)
    assert admitted[-1] > 4.0


async def test_a_waiter_cancelled_as_a_slot_frees_still_ends_cancelled(clock: FakeClock) -> None:
    # The waiter's future is cancelled, then a release pops it from the queue before the
    # waiter's task runs: its cleanup must not fail looking for it there.
    gate = ConcurrencyLimiter(initial=1, clock=clock)
    first = gate.admit(REQ)
    await first.__aenter__()

    async def wait() -> None:
        async with gate.admit(REQ):
            pass

    waiter = asyncio.create_task(wait())
    await asyncio.sleep(0)
    waiter.cancel()
    await first.__aexit__(None, None, None)  # no await inside: runs before the waiter wakes
    (outcome,) = await asyncio.gather(waiter, return_exceptions=True)
    assert isinstance(outcome, asyncio.CancelledError)
    assert gate.status().in_flight == 0 and gate.status().waiting == 0


async def test_a_request_refused_by_a_later_limiter_does_not_close_the_breaker(
    clock: FakeClock,
) -> None:
    # The probe slot goes to a request that the limiter then refuses as too large for the
    # token budget: it never reached the server, so it says nothing about the outage.
    breaker = OutageBreaker(clock=clock, sleep=clock.sleep)
    chain = AdmissionChain(breaker, RateLimiter(tokens_per_minute=1000, clock=clock))
    await fail(breaker, APIConnectionError("refused"), 5)
    assert breaker.is_open
    huge = CompletionRequest(prompt="x" * 40_000)
    with pytest.raises(TokenLimitError):
        async with chain.admit(huge):
            pass
    assert breaker.is_open and not breaker._probe_out


async def test_an_answer_after_giving_up_does_not_log_a_second_outage(clock: FakeClock) -> None:
    breaker = OutageBreaker(max_outage=20, clock=clock, sleep=clock.sleep)
    await fail(breaker, APIConnectionError("refused"), 5)
    clock.advance(1)
    probe = breaker.admit(REQ)
    await probe.__aenter__()
    clock.advance(30)  # the probe hangs past max_outage; the next waiter gives up
    with pytest.raises(ProviderOutageError):
        await breaker.admit(REQ).__aenter__()
    probe.record(CompletionResponse("late"))
    await probe.__aexit__(None, None, None)
    assert [o.recovered for o in breaker.outages] == [False]
    with pytest.raises(ProviderOutageError):
        await breaker.admit(REQ).__aenter__()


async def test_a_cancellation_at_any_link_of_a_chain_leaks_nothing(clock: FakeClock) -> None:
    breaker = OutageBreaker(clock=clock, sleep=clock.sleep)
    limiter = RateLimiter(requests_per_minute=60, burst_seconds=0, clock=clock, sleep=clock.sleep)
    gate = ConcurrencyLimiter(initial=1, clock=clock)
    chain = AdmissionChain(breaker, limiter, gate)
    holder = chain.admit(REQ)
    await holder.__aenter__()  # holds the gate's only slot
    at_gate = asyncio.create_task(chain.admit(REQ).__aenter__())
    for _ in range(5):
        await asyncio.sleep(0)
    assert gate.status().waiting == 1
    at_gate.cancel()
    await asyncio.gather(at_gate, return_exceptions=True)
    assert gate.status().waiting == 0 and gate.status().in_flight == 1
    assert limiter.status().in_flight == 1 and limiter.status().waiting == 0
    await holder.__aexit__(None, None, None)

    # The probe slot is taken, then its holder is cancelled at the limiter: another probe goes.
    await fail(breaker, APIConnectionError("refused"), 5)
    clock.advance(1)
    probe = asyncio.create_task(chain.admit(REQ).__aenter__())
    await asyncio.sleep(0)
    probe.cancel()
    await asyncio.gather(probe, return_exceptions=True)
    assert not breaker._probe_out
    assert limiter.status().in_flight == 0 and limiter.status().waiting == 0
    assert gate.status().in_flight == 0 and gate.status().waiting == 0
    again = chain.admit(REQ)
    await asyncio.wait_for(again.__aenter__(), 5)
    assert again.permits[0].probe  # type: ignore[attr-defined]
    await again.__aexit__(None, None, None)


async def test_a_link_failing_on_release_still_releases_the_links_before_it(
    clock: FakeClock,
) -> None:
    class Broken:
        def admit(self, request: CompletionRequest) -> Broken:
            return self

        async def __aenter__(self) -> Broken:
            return self

        async def __aexit__(self, *exc: object) -> None:
            raise RuntimeError("broken release")

        def record(self, response: CompletionResponse) -> None:
            pass

        paused_for_retry = False

    gate = ConcurrencyLimiter(initial=1, clock=clock)
    chain = AdmissionChain(gate, Broken())
    with pytest.raises(RuntimeError, match="broken release"):
        async with chain.admit(REQ):
            pass
    assert gate.status().in_flight == 0


async def test_a_refusal_stating_only_split_token_limits_resyncs_and_does_not_cut(
    clock: FakeClock,
) -> None:
    # Anthropic's 429 for an exhausted input-token budget states that budget: the headers
    # resync it, and the request rate is not what ran ahead, so it must not be cut.
    lim = limiter(clock)
    info = RateLimitInfo(limit_input_tokens=6000, remaining_input_tokens=0)
    permit = await lim.acquire(100)
    permit.release(None, RateLimitError(retry_after=1.0, rate_limit=info))
    status = lim.status()
    assert status.cuts == 0 and status.requests_per_minute is None
    assert status.paused_for == pytest.approx(1.0) and permit.paused_for_retry


async def test_an_attempt_booked_before_a_cut_and_already_due_is_part_of_its_event(
    clock: FakeClock,
) -> None:
    # Sleeping waiters are rebooked by a cut (see the rebooking test); an attempt admitted on
    # the old schedule before it, refused after the cooldown, is still the same event. (The
    # limit was given: the first event is answered by a hold, the next one by a cut.)
    lim = limiter(clock, requests_per_minute=60)
    for answered_by in ("hold", "cut"):
        first = await lim.acquire()
        old = await lim.acquire()  # admitted on the old schedule
        first.release(None, RateLimitError())
        events = (lim.holds, lim.status().cuts)
        assert events == ((1, 0) if answered_by == "hold" else (1, 1))
        clock.advance(2)
        old.release(None, RateLimitError())
        assert (lim.holds, lim.status().cuts) == events


async def test_an_attempt_marked_as_lost_to_an_outage_cuts_neither_rate_nor_concurrency(
    clock: FakeClock,
) -> None:
    from llmbatch.admission import mark_outage

    lim = limiter(clock)
    gate = ConcurrencyLimiter(initial=64, clock=clock)
    chain = AdmissionChain(lim, gate)
    gateway_down = ServerError("no upstream", status_code=503)
    for _ in range(3):
        permit = chain.admit(REQ)
        await permit.__aenter__()
        mark_outage(permit)
        await permit.__aexit__(ServerError, gateway_down, None)
        clock.advance(5)
    assert lim.status().cuts == 0 and lim.status().requests_per_minute is None
    assert gate.limit == 64


async def test_refused_connections_trip_the_breaker_even_with_one_request_in_flight(
    clock: FakeClock,
) -> None:
    # Low or "auto" concurrency: one request at a time. A refused connection is never that
    # request's fault, so its failures alone show the outage; a 5xx repeated by one request
    # may be the request's own (see test_one_request_failing_alone_is_not_an_outage).
    breaker = OutageBreaker(clock=clock, sleep=clock.sleep)
    for _ in range(5):
        permit = breaker.admit(REQ)
        await permit.__aenter__()
        await permit.__aexit__(APIConnectionError, APIConnectionError("refused"), None)
    assert breaker.is_open


async def test_a_probe_that_times_out_keeps_the_breaker_open(clock: FakeClock) -> None:
    breaker = OutageBreaker(clock=clock, sleep=clock.sleep)
    await fail(breaker, APIConnectionError("refused"), 5)
    probe = breaker.admit(REQ)
    await probe.__aenter__()
    assert probe.probe
    await probe.__aexit__(RequestTimeoutError, RequestTimeoutError("no answer"), None)
    assert breaker.is_open  # a hanging server gave no proof of life
    await fail(breaker, RequestTimeoutError("queue"), 1)  # nor does a timeout trip or close it
    assert breaker.is_open


async def test_a_learned_token_rate_is_in_the_tokens_the_answers_used(clock: FakeClock) -> None:
    # Prompts of one estimated token and no max_tokens, answers that used 25 (20 in, 5 out):
    # the token law must learn in the tokens each request is finally charged, or a cut
    # learns "20 tokens a second" while every request costs 25 of them (traced: a Gemini
    # run of 160 requests at 1,200/min took 110 s instead of 8, one request a second).
    lim = limiter(clock)
    tiny = CompletionRequest(prompt="q")
    used = CompletionResponse("ok", usage=Usage(20, 5))
    for _ in range(40):  # two seconds at 20 a second
        async with lim.admit(tiny) as permit:
            permit.record(used)
        clock.advance(0.05)
    refused = await lim.acquire()
    refused.release(None, RateLimitError())  # a bare 429: one cut of both laws
    assert lim.status().cuts == 1
    tokens = lim.tokens_per_minute
    requests = lim.requests_per_minute
    assert tokens is not None and requests is not None
    assert tokens == pytest.approx(25 * requests, rel=0.1)
    start = clock.now
    for _ in range(20):
        async with lim.admit(tiny) as permit:
            permit.record(used)
    # At the request rate the cut left (~14 a second), not one a second.
    assert clock.now - start < 20 / (requests / 60) * 1.5
