"""The deadline planner's arithmetic: realtime estimates, the switch moment, the split."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from llmbatch.deadline import DeadlinePolicy, RealtimeCapacity, Work, parse_deadline

NOW = 1_800_000_000.0


def test_the_binding_limit_sets_the_realtime_estimate() -> None:
    cap = RealtimeCapacity(rpm=600, tpm=60_000, concurrency=100, latency=1.0)
    work = Work(requests=600, input_tokens=90_000, output_tokens=30_000)
    # 600 requests at 600/min: 60 s; 120,000 tokens at 60,000/min: 120 s; 6 waves of 1 s.
    assert cap.limits(work) == {"rpm": 60.0, "tpm": 120.0, "concurrency": 6.0}
    assert cap.seconds(work) == 120.0
    assert cap.binding(work) == "tpm"


def test_split_limits_and_concurrency_count() -> None:
    cap = RealtimeCapacity(itpm=10_000, otpm=1_000, concurrency=4, latency=3.0)
    work = Work(requests=10, input_tokens=5_000, output_tokens=2_000)
    assert cap.limits(work) == {"itpm": 30.0, "otpm": 120.0, "concurrency": 9.0}
    assert cap.binding(work) == "otpm"
    # With no limits known, only concurrency x latency remains.
    assert RealtimeCapacity(concurrency=4, latency=3.0).seconds(work) == 9.0
    assert RealtimeCapacity().seconds(Work()) == 0.0
    # Nothing known: no bound at all (the plan then says the time is unknown).
    assert RealtimeCapacity().limits(work) == {}


def test_requests_within_inverts_the_estimate() -> None:
    cap = RealtimeCapacity(rpm=120, concurrency=1000, latency=0.5)
    work = Work(requests=1000, input_tokens=100_000, output_tokens=50_000)
    assert cap.requests_within(60.0, work) == 120
    assert cap.requests_within(0.0, work) == 0
    assert cap.requests_within(1e9, work) == 1000


def test_cost_policy_switches_when_time_left_reaches_the_estimate_plus_margin() -> None:
    cap = RealtimeCapacity(rpm=60, concurrency=1000, latency=1.0)
    open_work = Work(requests=100)  # 100 s realtime
    policy = DeadlinePolicy(NOW + 1000, prefer="cost", margin=0.5, min_margin=10, cancel_time=0)
    # Reserve: 100 * 1.5 + 10 = 160 s before the deadline.
    assert policy.switch_at(open_work, cap) == NOW + 840
    assert not policy.should_switch(NOW + 839, open_work, cap)
    assert policy.should_switch(NOW + 840, open_work, cap)
    # Less open work moves the switch later; nothing open never switches.
    assert not policy.should_switch(NOW + 840, Work(requests=50), cap)
    assert not policy.should_switch(NOW + 999, Work(), cap)


def test_cost_plan_puts_everything_in_batches_and_says_when_it_would_switch() -> None:
    cap = RealtimeCapacity(rpm=60, concurrency=1000, latency=1.0)
    plan = DeadlinePolicy(NOW + 1000, margin=0.5, min_margin=10, cancel_time=40).plan(
        NOW, Work(100), cap
    )
    assert plan.batch == Work(100) and plan.realtime == Work()
    assert plan.reachable and plan.shortfall == 0 and plan.needed == {}
    assert plan.switch_in == 800  # 1000 - (100 * 1.5 + 10) - 40 for the cancel


def test_unreachable_plan_says_by_how_much_and_which_limit_would_do() -> None:
    cap = RealtimeCapacity(rpm=60, tpm=1_000_000, concurrency=1000, latency=1.0)
    work = Work(requests=600, input_tokens=6_000, output_tokens=6_000)  # 600 s at 60 rpm
    plan = DeadlinePolicy(NOW + 310, margin=0.0, min_margin=10, cancel_time=0).plan(NOW, work, cap)
    assert not plan.reachable
    assert plan.shortfall == pytest.approx(610 - 310)
    # 300 usable seconds for 600 requests: 120 requests per minute; tpm was never binding.
    assert plan.needed == {"rpm": 120}


def test_speed_plan_sends_what_fits_realtime_and_batches_the_rest() -> None:
    cap = RealtimeCapacity(rpm=60, concurrency=1000, latency=1.0)
    work = Work(requests=1000, input_tokens=100_000, output_tokens=20_000)
    plan = DeadlinePolicy(NOW + 310, prefer="speed", margin=0.0, min_margin=10, cancel_time=0).plan(
        NOW, work, cap
    )
    assert plan.realtime.requests == 300
    assert plan.batch.requests == 700
    assert plan.realtime.input_tokens + plan.batch.input_tokens == 100_000
    assert plan.switch_in is None


def test_parse_deadline_durations() -> None:
    assert parse_deadline("6h", now=NOW) == NOW + 6 * 3600
    assert parse_deadline("1h30m", now=NOW) == NOW + 5400
    assert parse_deadline("90s", now=NOW) == NOW + 90
    assert parse_deadline("2d", now=NOW) == NOW + 172800
    assert parse_deadline(" 0.5h ", now=NOW) == NOW + 1800


def test_parse_deadline_dates() -> None:
    when = datetime.fromtimestamp(NOW) + timedelta(hours=3)  # naive: local time
    assert parse_deadline(when.strftime("%Y-%m-%dT%H:%M:%S"), now=NOW) == pytest.approx(
        NOW + 3 * 3600
    )
    aware = datetime.fromtimestamp(NOW, tz=UTC) + timedelta(hours=1)
    assert parse_deadline(aware.isoformat(), now=NOW) == pytest.approx(NOW + 3600)


def test_a_past_moment_is_kept_for_a_rerun_after_the_deadline() -> None:
    assert parse_deadline("2020-01-01T00:00:00+00:00", now=NOW) == 1577836800.0


@pytest.mark.parametrize("bad", ["", "soon", "6x", "0h", "h", "2020-13-01T00:00"])
def test_parse_deadline_refuses_what_is_not_a_future_moment(bad: str) -> None:
    with pytest.raises(ValueError, match=repr(bad)):
        parse_deadline(bad, now=NOW)
