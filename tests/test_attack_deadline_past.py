"""A `--finish-by` already past (or too near for any batch) goes straight to realtime.

Creating a batch then would only mean cancelling it at once, paying for what it finished
and again, realtime, for the same requests. Nothing here asserts a duration.
"""

from __future__ import annotations

from collections import Counter

import pytest

from .test_deadline_run import N, deadline_args, paths, routes, run


@pytest.mark.parametrize("finish_by", ["2020-01-01T00:00:00+00:00", "1s"])
def test_a_past_or_too_near_deadline_creates_no_batch(start_sim, tmp_path, finish_by) -> None:
    sim = start_sim("--latency-ms", "20", "--batch-seconds", "1")
    inp, out = paths(tmp_path)
    done = run(*deadline_args(sim, inp, out, finish_by))
    assert done.returncode == 0, done.stderr
    assert routes(out) == Counter({False: N})  # every line once, realtime
    stats = sim.stats()
    assert stats["batches_created"] == 0 and stats["batch_lines_answered"] == 0
    assert stats["received"] == N  # each request bought once
