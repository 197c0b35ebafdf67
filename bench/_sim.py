"""The benchmarks' simulator: `llmbatch simulate` in its own process (`SimulatorProcess`).

with simulator("--latency-ms", "50", "--rpm", "1200") as url:
    ...
    sim_stats(url)["rate_limited"]
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from llmbatch.simulate import SimulatorProcess, fetch_stats, reset_stats

__all__ = ["SimulatorProcess", "sim_reset", "sim_stats", "simulator"]

sim_stats = fetch_stats
sim_reset = reset_stats


@contextlib.contextmanager
def simulator(*args: str) -> Iterator[str]:
    """Yield the base URL of a simulator started with `args`; stop it afterwards."""
    with SimulatorProcess(*args) as sim:
        yield sim.url
