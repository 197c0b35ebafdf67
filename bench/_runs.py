"""The benchmarks' contenders, each in a fresh process: run one, measure it, repeat interleaved.

    # worker side (the script re-run with `--worker ...`): time one contender, print figures
    report(measure_here(lambda: contender(url, n, conc)))
    # driver side: every contender `repeat` times, interleaved; the median of each figure
    rows = interleaved(__file__, names, repeat, url, str(n))

A contender runs on the loop a user would use (uvloop when installed) in a process of its own,
so its CPU time and peak RSS are its alone; the figures are `ok`, `elapsed` (wall seconds),
`cpu` (seconds) and `rss_mb`. Runs are interleaved because the machine is shared and noisy;
each figure is the median of its runs, except `ok`, the worst run's.
"""

from __future__ import annotations

import asyncio
import cProfile
import json
import os
import pstats
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path

__all__ = ["in_process", "interleaved", "measure_here", "report"]

Figures = dict[str, float]


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def measure_here(make: Callable[[], Awaitable[int]], *, profile: bool = False) -> Figures:
    """Run `make()` (a contender's coroutine, returning its successes) on a fresh loop and
    measure it; with `profile`, print its cProfile (top 30 by own time) to stderr.

    The profile counts CPU time, not wall time: on a shared machine, the time a process waits
    for a core would otherwise be charged to whichever frame it was in (the loop's `run`, a
    socket write)."""
    profiler = cProfile.Profile(time.process_time) if profile else None
    cpu0, t0 = time.process_time(), time.perf_counter()
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        if profiler is not None:
            profiler.enable()
        ok = runner.run(make())  # type: ignore[arg-type]
        if profiler is not None:
            profiler.disable()
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    if profiler is not None:
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(30)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"ok": ok, "elapsed": elapsed, "cpu": cpu, "rss_mb": rss_mb}


def report(figures: Figures) -> None:
    """The worker's answer to `in_process`: one JSON line on stdout."""
    print(json.dumps(figures))


def in_process(script: str, *args: str, env: Mapping[str, str] | None = None) -> Figures:
    """Run `script --worker *args` in a fresh Python and read the figures it reports; `env`
    adds variables to the child's environment."""
    out = subprocess.run(
        [sys.executable, script, "--worker", *args],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(script).parent,
        env={**os.environ, **env} if env else None,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def interleaved(
    script: str,
    names: Sequence[str],
    repeat: int,
    *args: str,
    envs: Mapping[str, Mapping[str, str]] | None = None,
) -> dict[str, Figures]:
    """`in_process(script, name, *args)` for every name, `repeat` rounds, interleaved; each
    name's medians. `envs` gives some names environment variables of their own (a baseline
    contender: the same code path run on another source tree through `PYTHONPATH`).

    Each round starts one name further along: on a shared machine a run's place in the
    round moved its CPU per request by a few us (measured over HTTP: the same tree +1.7 us
    when always last, -3.7 when always first), more than the changes compared."""
    runs: dict[str, list[Figures]] = {name: [] for name in names}
    for round_ in range(repeat):
        shift = round_ % len(names) if names else 0
        for name in [*names[shift:], *names[:shift]]:
            runs[name].append(in_process(script, name, *args, env=(envs or {}).get(name)))
    return {
        name: {
            key: min(r[key] for r in rs) if key == "ok" else statistics.median(r[key] for r in rs)
            for key in rs[0]
        }
        for name, rs in runs.items()
    }
