"""`llmbatch.stats`: the percentiles of a long series, found by counting, equal sorting's."""

from __future__ import annotations

from array import array

from hypothesis import given, settings
from hypothesis import strategies as st

from llmbatch.stats import StatsCollector, _quantiles

durations = st.floats(min_value=0.0, max_value=1e6, allow_nan=False, allow_infinity=False)


@settings(max_examples=200, deadline=None)
@given(st.lists(durations, min_size=1, max_size=400), st.integers(min_value=1, max_value=50))
def test_percentiles_by_counting_equal_those_of_the_sorted_series(
    values: list[float], limit: int
) -> None:
    series = array("d", values)
    assert _quantiles(series, limit=limit) == _quantiles(series, limit=len(values))


def test_many_equal_values_are_split_down_to_the_value_itself() -> None:
    """A bucket that stays too large (a cached run: every duration 0) ends at the value."""
    series = array("d", [0.0] * 3000 + [0.25] * 500 + [7.5] * 40)
    assert _quantiles(series, limit=10) == (0.0, 0.0, 0.25, 7.5, 7.5)


def test_a_negative_value_falls_back_to_sorting() -> None:
    series = array("d", [-1.0, 2.0, 0.5, 3.0] * 10)
    assert _quantiles(series, limit=4) == _quantiles(series, limit=100)
    assert _quantiles(series, limit=4)[0] == -1.0


def test_add_line_counts_as_add_values() -> None:
    a, b = StatsCollector(), StatsCollector()
    rows = [
        ("x", 0.5, 1, None, 10, 3, False, 0.1, 0.4, 0.002, "m"),
        ("y", 1.5, 3, "rate_limit", 0, 0, False, None, 0.0, None, ""),
        ("z", 0.0, 0, None, 5, 1, True, None, 0.0, None, "m"),
    ]
    for rid, dur, att, err, pt, ct, cached, wait, prov, cost, model in rows:
        a.add_line(rid, dur, att, err, pt, ct, cached, wait, prov, cost, model)
        b.add_values(
            rid,
            duration=dur,
            attempts=att,
            error_type=err,
            prompt_tokens=pt,
            completion_tokens=ct,
            cached=cached,
            wait=wait,
            provider=None if wait is None else prov,
            cost=cost,
            model=model,
        )
    assert a.snapshot() == b.snapshot()
