"""The engine's default admission (`GuardedLimiter`: outage breaker + rate limiter as one
permit) behaves exactly as the chain of the two, in virtual time."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from llmbatch import (
    AdmissionChain,
    APIConnectionError,
    CompletionRequest,
    CompletionResponse,
    OutageBreaker,
    RateLimiter,
    RateLimitError,
    ServerError,
    TokenLimitError,
    Usage,
)
from llmbatch.admission import mark_outage
from llmbatch.guarded import GuardedLimiter

from .conftest import FakeClock

DOWN = APIConnectionError("refused")
GATEWAY = ServerError("no upstream", status_code=503)
# (outcome, seconds the attempt takes): an outage that trips the breaker, probes, the server
# back, refusals (one with a Retry-After that pauses everyone), an attempt lost to an outage.
SCRIPT: list[tuple[object, float]] = [
    ("ok", 0.1),
    *[(DOWN, 0.0)] * 5,
    (DOWN, 0.0),  # the first probe
    ("ok", 0.2),  # the second probe: the server is back
    *[("ok", 0.05)] * 20,
    (RateLimitError("slow down"), 0.0),
    *[("ok", 0.05)] * 5,
    (RateLimitError("later", retry_after=3.0), 0.0),
    ("ok", 0.05),
    ("outage", 0.0),  # a gateway's 503 while the breaker waits out an outage: no cut
    *[("ok", 0.05)] * 5,
]


def admissions(kind: str, clock: FakeClock) -> tuple[Any, OutageBreaker, RateLimiter]:
    breaker = OutageBreaker(clock=clock, sleep=clock.sleep)
    limiter = RateLimiter(clock=clock, sleep=clock.sleep)
    if kind == "chain":
        return AdmissionChain(breaker, limiter), breaker, limiter
    return GuardedLimiter(breaker, limiter), breaker, limiter


async def run_script(kind: str) -> list[object]:
    clock = FakeClock()
    admission, breaker, limiter = admissions(kind, clock)
    seen: list[object] = []
    for i, (outcome, seconds) in enumerate(SCRIPT):
        request = CompletionRequest(prompt=f"question {i}" * 10, max_tokens=50)
        permit = admission.admit(request)
        await permit.__aenter__()
        admitted = clock.now
        clock.advance(seconds)
        if outcome == "ok":
            permit.record(CompletionResponse("fine", usage=Usage(30, 20)))
            await permit.__aexit__(None, None, None)
        else:
            error = GATEWAY if outcome == "outage" else outcome
            assert isinstance(error, BaseException)
            if outcome == "outage":
                mark_outage(permit)
            await permit.__aexit__(type(error), error, None)
        status = limiter.status()
        seen.append(
            (
                round(admitted, 6),
                permit.paused_for_retry,
                breaker.is_open,
                status.cuts,
                status.rate_limited,
                status.in_flight,
                status.paused_for,
                status.requests_per_minute,
                status.tokens_per_minute,
            )
        )
    seen.append(breaker.outages)
    return seen


async def test_the_guarded_limiter_admits_and_learns_exactly_as_the_chain() -> None:
    chain, guarded = await run_script("chain"), await run_script("guarded")
    assert guarded == chain
    # The script did what it says: an outage, a recovery, cuts and a pause.
    *steps, outages = guarded
    assert [o.recovered for o in outages] == [True]  # type: ignore[attr-defined]
    assert any(step[2] for step in steps) and steps[-1][3] >= 1  # type: ignore[index]
    assert any(step[1] for step in steps)  # type: ignore[index]


async def test_a_probe_cancelled_while_the_limiter_holds_it_goes_back_to_the_breaker(
    clock: FakeClock,
) -> None:
    breaker = OutageBreaker(clock=clock, sleep=clock.sleep)
    at_limiter = asyncio.Event()

    async def stuck(_seconds: float) -> None:  # the limiter's wait for its slot
        at_limiter.set()
        await asyncio.Event().wait()

    limiter = RateLimiter(60, clock=clock, sleep=stuck, burst_seconds=0.0)
    guarded = GuardedLimiter(breaker, limiter)
    for i in range(5):
        permit = breaker.admit(CompletionRequest(prompt=str(i)))
        await permit.__aenter__()
        await permit.__aexit__(APIConnectionError, DOWN, None)
    assert breaker.is_open
    await limiter.acquire()  # the limiter's slot for the next second is taken
    # The probe passes the breaker, then waits for the limiter's next slot (one a second),
    # and is cancelled there: the breaker must not wait for an answer it will never get.
    probe = guarded.admit(CompletionRequest(prompt="probe"))
    task = asyncio.ensure_future(probe.__aenter__())
    await at_limiter.wait()
    assert probe.probe
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    at_limiter.clear()
    again = guarded.admit(CompletionRequest(prompt="again"))
    task = asyncio.ensure_future(again.__aenter__())
    reached = asyncio.ensure_future(at_limiter.wait())
    await asyncio.wait({task, reached}, return_when=asyncio.FIRST_COMPLETED)
    assert again.probe and not task.done()  # a new probe went out (it waits at the limiter)
    task.cancel()


async def test_a_request_larger_than_the_token_budget_is_refused_and_holds_nothing(
    clock: FakeClock,
) -> None:
    breaker = OutageBreaker(clock=clock, sleep=clock.sleep)
    limiter = RateLimiter(tokens_per_minute=100, clock=clock, sleep=clock.sleep)
    guarded = GuardedLimiter(breaker, limiter)
    with pytest.raises(TokenLimitError):
        await guarded.admit(CompletionRequest(prompt="x" * 400, max_tokens=200)).__aenter__()
    assert limiter.status().in_flight == 0 and not breaker.is_open


def test_the_guarded_permit_sets_every_field_of_its_classes() -> None:
    # Its one `__init__` spells out the fields of `PermitBase` and `RatePermit`: a field added
    # to either must be set there too.
    clock = FakeClock()
    admission, _, _ = admissions("guarded", clock)
    permit = admission.admit(CompletionRequest(prompt="hi"))
    slots = [name for cls in type(permit).__mro__ for name in getattr(cls, "__slots__", ())]
    assert len(slots) > 10
    assert [name for name in slots if not hasattr(permit, name)] == []
